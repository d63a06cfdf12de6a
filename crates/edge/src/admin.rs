//! The SIP edge's routes on the admin endpoint ([`stg_net::admin`], which serves
//! `GET /metrics` and `GET /health`): the registrar's diagnostics for `stg reg` (the embedded
//! store is locked by the running node, so the CLI reads it through here) and the guard's
//! bans for `stg ban`:
//!
//! - `GET /registrar/aors?pattern=GLOB&limit=N`: `{"aors": [..], "truncated": bool}`, AORs
//!   (`user@host`) matching a Redis glob, sorted;
//! - `GET /registrar/aor/<aor>`: the AOR's raw hash, `{field: value}` (`{}` when absent);
//! - `DELETE /registrar/aor/<aor>[?field=F]`: `{"removed": bool}`;
//! - `GET /guard/bans[?jail=J]`: `{"bans": [{"scope": "192.0.2.7/32", "left": secs,
//!   "jail": "sip"}, ..]}` (`jail`: `manual`, `remote` from another node, `?` unknown);
//! - `GET /guard/status`: `{"jails": [{"jail", "failing", "failures", "banned", "bans"}],
//!   "banned": n}` (sources failing now, failures and bans since start, bans in force);
//! - `PUT /guard/bans/<ip or prefix>?for=SECS` (default 3600): ban;
//! - `DELETE /guard/bans/<ip or prefix>`: `{"removed": bool}`.
//!
//! Path and query are percent-decoded (`%XX` only; `+` is a plus). No authentication:
//! `admin.listen` must stay on a trusted address.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use stg_store::Bindings;
use tokio::net::TcpListener;

/// Default and largest `limit` of `/registrar/aors`.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;

/// Most AORs counted for the `stg_registrar_bindings` gauge at one scrape.
const GAUGE_SCAN_CAP: usize = 1_000_000;

/// The process-wide Prometheus recorder's handle (installed on first use).
pub(crate) fn install_recorder() -> Option<PrometheusHandle> {
    stg_net::metrics::handle()
}

/// What the edge's routes read.
#[derive(Clone)]
struct Edge {
    bindings: Option<Bindings>,
    shared: Arc<crate::conn::Shared>,
}

/// Serves the admin endpoint: metrics, health and the edge's routes, until the process ends.
pub(crate) async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    bindings: Option<Bindings>,
    shared: Arc<crate::conn::Shared>,
) {
    let scrape = bindings
        .clone()
        .filter(|b| b.kind() == "embedded")
        .map(|b| {
            let hook: stg_net::admin::ScrapeHook = Arc::new(move || {
                let b = b.clone();
                Box::pin(async move {
                    // A count is one pass over the embedded table; on Redis it would be a SCAN of
                    // the whole keyspace per scrape, so the gauge is left out there.
                    if let Ok(aors) = b.scan("*", GAUGE_SCAN_CAP).await {
                        metrics::gauge!("stg_registrar_bindings").set(aors.len() as f64);
                    }
                })
            });
            hook
        });
    let router = stg_net::admin::router(handle, scrape)
        .merge(routes(Edge { bindings, shared }))
        .fallback(stg_net::admin::not_found);
    stg_net::admin::serve(listener, router).await;
}

fn routes(edge: Edge) -> Router {
    Router::new()
        .route("/registrar/{*rest}", any(handle))
        .route("/guard/status", any(handle))
        .route("/guard/bans", any(handle))
        .route("/guard/bans/", any(handle))
        .route("/guard/bans/{*rest}", any(handle))
        .with_state(edge)
}

async fn handle(State(edge): State<Edge>, method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let reply = if path == "/guard/status" {
        if method == Method::GET {
            let bans = edge.shared.bans.list();
            Reply::json("200 OK", &edge.shared.bans.status.json(&bans))
        } else {
            Reply::text("405 Method Not Allowed", "GET only\n")
        }
    } else if let Some(rest) = path.strip_prefix("/guard/bans") {
        bans(method.as_str(), rest, query, &edge.shared)
    } else {
        let get = match method {
            Method::GET => Some(true),
            Method::DELETE => Some(false),
            _ => None,
        };
        match (get, path.strip_prefix("/registrar/")) {
            (None, _) => Reply::text("405 Method Not Allowed", "GET or DELETE only\n"),
            (Some(get), Some(rest)) => match &edge.bindings {
                Some(b) => registrar(get, rest, query, b).await,
                None => Reply::error(
                    "503 Service Unavailable",
                    "no registrar: [registrar] domains is empty",
                ),
            },
            (Some(_), None) => Reply::text("404 Not Found", "not found\n"),
        }
    };
    reply.into_response()
}

struct Reply {
    status: &'static str,
    ctype: &'static str,
    body: String,
}

impl Reply {
    fn text(status: &'static str, body: &str) -> Self {
        Self {
            status,
            ctype: "text/plain",
            body: body.to_owned(),
        }
    }

    fn json(status: &'static str, v: &serde_json::Value) -> Self {
        let mut body = v.to_string();
        body.push('\n');
        Self {
            status,
            ctype: "application/json",
            body,
        }
    }

    fn error(status: &'static str, msg: &str) -> Self {
        Self::json(status, &json!({ "error": msg }))
    }

    fn into_response(self) -> Response {
        let code = self
            .status
            .split(' ')
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (code, [(header::CONTENT_TYPE, self.ctype)], self.body).into_response();
        if code == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, PUT, DELETE"));
        }
        r
    }
}

/// `/guard/bans[/<scope>]`.
fn bans(method: &str, rest: &str, query: &str, shared: &crate::conn::Shared) -> Reply {
    if rest.is_empty() || rest == "/" {
        if method != "GET" {
            return Reply::text("405 Method Not Allowed", "GET only\n");
        }
        let want = parse_query(query)
            .unwrap_or_default()
            .into_iter()
            .find(|(k, _)| k == "jail")
            .map(|(_, v)| v);
        let list: Vec<serde_json::Value> = shared
            .bans
            .list()
            .into_iter()
            .map(|(n, left)| {
                let jail = shared.bans.status.jail_of(n).unwrap_or_else(|| "?".to_owned());
                (n, left, jail)
            })
            .filter(|(_, _, jail)| want.as_ref().is_none_or(|w| w == jail))
            .map(|(n, left, jail)| {
                json!({ "scope": n.to_string(), "left": left.as_secs(), "jail": jail })
            })
            .collect();
        return Reply::json("200 OK", &json!({ "bans": list }));
    }
    let Some(scope) = rest
        .strip_prefix('/')
        .and_then(percent_decode)
        .and_then(|s| parse_scope(&s))
    else {
        return Reply::error("400 Bad Request", "an IP address or prefix");
    };
    match method {
        "PUT" => {
            let secs = match parse_query(query)
                .unwrap_or_default()
                .iter()
                .find(|(k, _)| k == "for")
                .map(|(_, v)| v.parse::<u64>())
            {
                None => 3600,
                Some(Ok(s)) if (1..=365 * 86_400).contains(&s) => s,
                Some(_) => return Reply::error("400 Bad Request", "for: 1 to 31536000 seconds"),
            };
            if shared.bans.add(shared, scope, Duration::from_secs(secs)) {
                Reply::json(
                    "200 OK",
                    &json!({ "banned": scope.to_string(), "for": secs }),
                )
            } else {
                Reply::error("503 Service Unavailable", "too many bans")
            }
        }
        "DELETE" => Reply::json("200 OK", &json!({ "removed": shared.bans.remove(scope) })),
        _ => Reply::text("405 Method Not Allowed", "PUT or DELETE\n"),
    }
}

/// `192.0.2.7`, `2001:db8::1`, or a prefix `198.51.100.0/24`.
fn parse_scope(s: &str) -> Option<stg_guard::IpNet> {
    if let Ok(n) = s.parse::<stg_guard::IpNet>() {
        return Some(n.trunc());
    }
    let ip = s.parse::<std::net::IpAddr>().ok()?.to_canonical();
    stg_guard::IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).ok()
}

async fn registrar(get: bool, path: &str, query: &str, b: &Bindings) -> Reply {
    let Some(q) = parse_query(query) else {
        return Reply::error("400 Bad Request", "bad percent-encoding in the query");
    };
    let param = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let unavailable = |e: stg_store::StoreError| {
        Reply::error(
            if e.is_transient() {
                "503 Service Unavailable"
            } else {
                "500 Internal Server Error"
            },
            &e.to_string(),
        )
    };
    if path == "aors" {
        if !get {
            return Reply::text("405 Method Not Allowed", "GET only\n");
        }
        let pattern = param("pattern").filter(|p| !p.is_empty()).unwrap_or("*");
        let limit = match param("limit").map(str::parse::<usize>) {
            None => DEFAULT_LIMIT,
            Some(Ok(n)) if n > 0 => n.min(MAX_LIMIT),
            Some(_) => return Reply::error("400 Bad Request", "limit: a positive integer"),
        };
        return match b.scan(pattern, limit).await {
            Ok(mut aors) => {
                aors.sort();
                let truncated = aors.len() >= limit;
                Reply::json("200 OK", &json!({ "aors": aors, "truncated": truncated }))
            }
            Err(e) => unavailable(e),
        };
    }
    let Some(aor) = path.strip_prefix("aor/") else {
        return Reply::text("404 Not Found", "not found\n");
    };
    let Some(aor) = percent_decode(aor).filter(|a| !a.is_empty()) else {
        return Reply::error("400 Bad Request", "bad AOR in the path");
    };
    if get {
        match b.get(&aor).await {
            Ok(r) => Reply::json("200 OK", &json!(r.fields)),
            Err(e) => unavailable(e),
        }
    } else {
        match b.remove(&aor, param("field")).await {
            Ok(removed) => {
                tracing::info!(aor = %aor, field = param("field"), removed, "binding removed by the admin endpoint");
                Reply::json("200 OK", &json!({ "removed": removed }))
            }
            Err(e) => unavailable(e),
        }
    }
}

/// `a=b&c=d`, each part percent-decoded; `None` if a part does not decode.
fn parse_query(q: &str) -> Option<Vec<(String, String)>> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// `%XX` → byte; `None` on a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = |j: usize| b.get(j).and_then(|c| char::from(*c).to_digit(16));
            let (hi, lo) = (h(i + 1)?, h(i + 2)?);
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_and_queries() {
        assert_eq!(
            percent_decode("40004%2A01%40sips.mdtel.es").as_deref(),
            Some("40004*01@sips.mdtel.es")
        );
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
        assert_eq!(
            parse_query("pattern=40004%5C%2A01%40%2A&limit=5&&x").unwrap(),
            [
                ("pattern".to_owned(), "40004\\*01@*".to_owned()),
                ("limit".to_owned(), "5".to_owned()),
                ("x".to_owned(), String::new()),
            ]
        );
        assert_eq!(parse_query("a=%"), None);
    }
}
