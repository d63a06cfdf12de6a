//! The web front against the real binary: the seed's post-installation rows it owns
//! (READING.md §4), the reverse proxy against real upstreams (a small HTTP server here and
//! Python's `websockets` echo), HTTP/2 by ALPN, static files. Client addresses are
//! simulated with PROXY v2 headers sent from the configured balancer (127.0.0.2).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use stg_net::proxy_protocol::{self as pp, Addresses, Command as PpCommand, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::harness::{free_port, temp_dir, Peer, StgNode};

const BALANCER: &str = "127.0.0.2";
const HOST: &str = "stg.example.com";

/// A node with the web front on (https and http), the seed's rules and `extra` config.
struct Web {
    node: StgNode,
    https: SocketAddr,
    http: SocketAddr,
}

impl Web {
    fn start(name: &str, extra: &str) -> Self {
        let (https, http, sip) = (free_port(), free_port(), free_port());
        let node = StgNode::start(
            name,
            &format!(
                "[[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{sip}\"\n\n\
                 [web]\nlisten = \"127.0.0.1:{https}\"\nlisten_http = \"127.0.0.1:{http}\"\n\
                 hosts = [\"{HOST}\"]\nload_balancers = [\"{BALANCER}\"]\n\
                 internal_networks = [\"10.0.0.0/8\"]\n{extra}\n"
            ),
        );
        Self {
            node,
            https: format!("127.0.0.1:{https}").parse().unwrap(),
            http: format!("127.0.0.1:{http}").parse().unwrap(),
        }
    }

    /// The node's self-signed certificate, which names 127.0.0.1 (the web listener).
    fn tls(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let pem = std::fs::read(self.node.dir.join("data/tls/cert.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let c: CertificateDer<'static> = c.unwrap();
            roots.add(c).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A TLS connection, through the balancer with a PROXY header naming `client` when
    /// given, else directly from 127.0.0.1.
    async fn connect(
        &self,
        client: Option<&str>,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = match client {
            Some(c) => {
                let s = TcpSocket::new_v4()?;
                s.bind(format!("{BALANCER}:0").parse().unwrap())?;
                let mut tcp = s.connect(self.https).await?;
                tcp.write_all(&proxy_header(c, self.https)).await?;
                tcp
            }
            None => TcpStream::connect(self.https).await?,
        };
        let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
        tokio_rustls::TlsConnector::from(self.tls(alpn))
            .connect(name, tcp)
            .await
    }

    /// One HTTP/1.1 request on a new connection.
    async fn get(&self, client: Option<&str>, host: &str, path: &str) -> Result<Reply, String> {
        let tls = self
            .connect(client, &[b"http/1.1"])
            .await
            .map_err(|e| e.to_string())?;
        let mut h1 = H1::handshake(tls).await;
        h1.send(req("GET", host, path, Bytes::new())).await
    }
}

fn proxy_header(client: &str, dst: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(dst) = dst else {
        unreachable!()
    };
    pp::encode(&Header {
        command: PpCommand::Proxy,
        transport: pp::TransportProtocol::Stream,
        addresses: Addresses::V4 {
            src: format!("{client}:40000").parse().unwrap(),
            dst,
        },
        tlv_range: 0..0,
    })
}

fn req(method: &str, host: &str, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("user-agent", "it-web/1")
        .body(Full::new(body))
        .unwrap()
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// An HTTP/1.1 client connection (keep-alive).
struct H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl H1 {
    async fn handshake<IO>(io: IO) -> Self
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self(sender)
    }

    async fn send(&mut self, r: Request<Full<Bytes>>) -> Result<Reply, String> {
        self.0.ready().await.map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.0.send_request(r))
            .await
            .map_err(|_| "timeout".to_owned())?
            .map_err(|e| e.to_string())?;
        collect(resp).await
    }
}

async fn collect(resp: Response<hyper::body::Incoming>) -> Result<Reply, String> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A small upstream application: answers every request with what it received (method,
/// path, the forwarding headers, the body's length) as `key: value` lines.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |r: Request<hyper::body::Incoming>| async move {
                        let (parts, body) = r.into_parts();
                        let len = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        let h = |n: &str| {
                            parts
                                .headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        };
                        let text = format!(
                        "method: {}\npath: {}\nhost: {}\nxff: {}\nproto: {}\nxhost: {}\nlen: {len}\n",
                        parts.method,
                        parts.uri,
                        h("host"),
                        h("x-forwarded-for"),
                        h("x-forwarded-proto"),
                        h("x-forwarded-host"),
                    );
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("server", "Apache-Coyote/1.1")
                                .body(Full::new(Bytes::from(text)))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), service)
                    .await;
            });
        }
    });
    addr
}

/// Waits for `addr` to accept connections.
fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The seed's rows: internal URL (outside 403, inside allowed), short URL 404, bare URL
/// redirected, landing page direct 403, swapped host unanswered, http to https, HSTS and the
/// security headers; the access log names the real client; HTTP/2 by ALPN.
#[test]
fn seed_rows_of_the_web_front() {
    let rt = rt();
    let upstream = rt.block_on(echo_upstream());
    let web = Web::start(
        "web-seed",
        &format!(
            "[[web.rules]]\nprefix = \"/sercen/getautenticacionapache\"\naction = \"internal\"\n\
             [[web.rules]]\npath = \"/vivait/index.html\"\naction = \"deny\"\n\
             [[web.rules]]\npath = \"/vivait\"\naction = \"redirect\"\nto = \"/vivait/app/\"\n\
             [[web.proxy]]\nprefix = \"/sercen/getautenticacionapache\"\nupstream = \"http://{upstream}\"\nname = \"sercen\"\n"
        ),
    );
    rt.block_on(async {
        let internal = "/sercen/getautenticacionapache?token=x";
        let r = web.get(Some("203.0.113.7"), HOST, internal).await.unwrap();
        assert_eq!(r.status, 403, "internal URL from outside: {r:?}");
        for sneaky in [
            "/sercen/%67etautenticacionapache",
            "/sercen;jsessionid=1/getautenticacionapache",
        ] {
            let r = web.get(Some("203.0.113.7"), HOST, sneaky).await.unwrap();
            assert_eq!(r.status, 403, "{sneaky}: {r:?}");
        }
        let r = web
            .get(
                Some("203.0.113.7"),
                HOST,
                "/x/../sercen/getautenticacionapache",
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "dot segments: {r:?}");
        let r = web.get(Some("10.1.2.3"), HOST, internal).await.unwrap();
        assert_eq!(r.status, 200, "internal URL from inside: {r:?}");
        assert!(r.body.contains("xff: 10.1.2.3\n"), "{}", r.body);
        assert!(
            r.body.contains("proto: https\n") && r.body.contains(&format!("xhost: {HOST}\n")),
            "{}",
            r.body
        );
        assert_eq!(
            r.header("server"),
            "",
            "the application's Server header is removed"
        );

        let r = web
            .get(Some("203.0.113.7"), HOST, "/sercen/")
            .await
            .unwrap();
        assert_eq!(r.status, 404, "short URL: {r:?}");
        let r = web.get(Some("203.0.113.7"), HOST, "/vivait").await.unwrap();
        assert_eq!(
            (r.status, r.header("location")),
            (302, "/vivait/app/"),
            "bare URL"
        );
        let r = web
            .get(Some("203.0.113.7"), HOST, "/vivait/index.html")
            .await
            .unwrap();
        assert_eq!(r.status, 403, "landing page direct: {r:?}");
        assert!(
            r.header("strict-transport-security")
                .starts_with("max-age=31536000"),
            "{r:?}"
        );
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        assert_eq!(r.header("x-frame-options"), "SAMEORIGIN");
        assert!(!r.header("referrer-policy").is_empty());
        assert!(r
            .header("content-security-policy")
            .contains("frame-ancestors"));

        // Swapped host: no answer at all.
        let e = web
            .get(Some("203.0.113.7"), "192.0.2.1", "/vivait")
            .await
            .unwrap_err();
        assert!(!e.is_empty());

        // http: only a redirect to https, without HSTS (RFC 6797 §7.2).
        let tcp = TcpStream::connect(web.http).await.unwrap();
        let mut h1 = H1::handshake(tcp).await;
        let r = h1
            .send(req("GET", HOST, "/vivait?a=1", Bytes::new()))
            .await
            .unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(
            r.header("location"),
            format!("https://{HOST}:{}/vivait?a=1", web.https.port())
        );
        assert_eq!(r.header("strict-transport-security"), "");

        // HTTP/2, chosen by ALPN.
        let tls = web
            .connect(Some("203.0.113.8"), &[b"h2", b"http/1.1"])
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut h2, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let r2 = Request::builder()
            .uri(format!("https://{HOST}/vivait"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = h2.send_request(r2).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 302);
        assert!(resp.headers().contains_key("strict-transport-security"));
    });
    let log = web.node.log();
    assert!(
        log.contains("203.0.113.7 - - [") && log.contains("\"GET /sercen/ HTTP/1.1\" 404"),
        "combined access line with the real client:\n{log}"
    );
    assert!(web.node.counter("stg_web_probes_total") >= 3.0);
    assert!(web.node.counter("stg_web_connections_refused_total") == 0.0);
}

/// A short URL 101 times from one source bans it (the guard's `probe` jail): the
/// connection is closed and a new one is refused before TLS, while others are served.
#[test]
fn one_hundred_and_one_probes_ban_the_source() {
    let rt = rt();
    let web = Web::start("web-probe", "header_timeout = \"1s\"");
    rt.block_on(async {
        // Slowloris: TLS done, then silence; and a head never finished. Both are closed.
        let mut silent = web.connect(None, &[b"http/1.1"]).await.unwrap();
        let mut half = web.connect(None, &[b"http/1.1"]).await.unwrap();
        half.write_all(b"GET /vivait HTTP/1.1\r\nHost: stg")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        for s in [&mut silent, &mut half] {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            let closed = match n {
                Ok(Ok(0) | Err(_)) => true,
                Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                Err(_) => false,
            };
            assert!(
                closed,
                "a slow client is not closed within the header timeout"
            );
        }
        let tls = web
            .connect(Some("203.0.113.50"), &[b"http/1.1"])
            .await
            .unwrap();
        let mut h1 = H1::handshake(tls).await;
        for i in 0..100 {
            let r = h1
                .send(req("GET", HOST, &format!("/sercen/{i}"), Bytes::new()))
                .await
                .unwrap();
            assert_eq!(r.status, 404);
        }
        // Still welcome after 100.
        let again = web
            .get(Some("203.0.113.50"), HOST, "/sercen/")
            .await
            .unwrap();
        assert_eq!(again.status, 404, "the 101st");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = web.get(Some("203.0.113.50"), HOST, "/sercen/").await;
            if r.is_err() {
                break;
            }
            assert!(Instant::now() < deadline, "not banned after 101 probes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The kept-alive connection gets no more answers either.
        assert!(h1
            .send(req("GET", HOST, "/vivait", Bytes::new()))
            .await
            .is_err());
        let other = web
            .get(Some("203.0.113.51"), HOST, "/sercen/")
            .await
            .unwrap();
        assert_eq!(other.status, 404, "another source is still served");
    });
    let log = web.node.log();
    assert!(log.contains("TRUCO_KO [203.0.113.50] stg probe"), "{log}");
    assert!(
        web.node
            .counter("stg_web_connections_refused_total{reason=\"banned\"}")
            >= 1.0
    );
}

/// The reverse proxy against real upstreams: bodies, the forwarding headers a client cannot
/// forge, a WebSocket echo (Python `websockets`), the body limit, and an application down
/// (502, and `stg_web_upstream_up` 0).
#[test]
fn reverse_proxy_to_real_upstreams() {
    let rt = rt();
    let upstream = rt.block_on(echo_upstream());
    let ws_port = free_port();
    let dir = temp_dir("web-ws-echo");
    let script = "import asyncio, sys, websockets\n\
        async def echo(ws, *args):\n    async for m in ws:\n        await ws.send(m)\n\
        async def main():\n    async with websockets.serve(echo, '127.0.0.1', int(sys.argv[1])):\n        await asyncio.Future()\n\
        asyncio.run(main())\n";
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(script).arg(ws_port.to_string());
    let _echo = Peer::spawn(
        "python3 websockets",
        "python3-websockets",
        cmd,
        &dir.join("ws.log"),
    );
    let ws_addr: SocketAddr = format!("127.0.0.1:{ws_port}").parse().unwrap();
    wait_listening(ws_addr);
    let down = free_port();
    let web = Web::start(
        "web-proxy",
        &format!(
            "max_body_bytes = 2000000\n\
             [[web.proxy]]\nprefix = \"/fonbo/\"\nupstream = \"http://{upstream}/app\"\nstrip_prefix = true\nname = \"fonbo\"\n\
             [[web.proxy]]\nprefix = \"/ws/\"\nupstream = \"http://{ws_addr}\"\nname = \"ws\"\n\
             [[web.proxy]]\nprefix = \"/down/\"\nupstream = \"http://127.0.0.1:{down}\"\nname = \"down\"\n"
        ),
    );
    rt.block_on(async {
        let tls = web
            .connect(Some("198.51.100.9"), &[b"http/1.1"])
            .await
            .unwrap();
        let mut h1 = H1::handshake(tls).await;
        let mut r = req(
            "POST",
            HOST,
            "/fonbo/save?x=1",
            Bytes::from(vec![b'a'; 1_000_000]),
        );
        r.headers_mut()
            .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        let r = h1.send(r).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.body.contains("method: POST\npath: /app/save?x=1\n"),
            "{}",
            r.body
        );
        assert!(
            r.body.contains("xff: 198.51.100.9\n"),
            "the client's own X-Forwarded-For is replaced: {}",
            r.body
        );
        assert!(r.body.contains(&format!("host: {HOST}\n")), "{}", r.body);
        assert!(r.body.contains("len: 1000000\n"), "{}", r.body);
        // A declared body over the limit is refused before it is sent (raw: a client that
        // writes the body first may see the close before the answer).
        let mut tls = web
            .connect(Some("198.51.100.9"), &[b"http/1.1"])
            .await
            .unwrap();
        let head =
            format!("POST /fonbo/save HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3000000\r\n\r\n");
        tls.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

        let r = web
            .get(Some("198.51.100.9"), HOST, "/down/x")
            .await
            .unwrap();
        assert_eq!(r.status, 502);
        assert!(r.body.contains("not answering"), "{}", r.body);

        // WebSocket through the front.
        let tls = web
            .connect(Some("198.51.100.9"), &[b"http/1.1"])
            .await
            .unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://{HOST}/ws/echo"), tls)
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        for text in ["hello", "world"] {
            ws.send(tokio_tungstenite::tungstenite::Message::text(text))
                .await
                .unwrap();
            let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(back.into_text().unwrap().as_str(), text);
        }
        let _ = ws.close(None).await;
    });
    let m = web.node.metrics();
    assert!(
        m.contains("stg_web_upstream_up{upstream=\"down\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("stg_web_upstream_up{upstream=\"fonbo\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("stg_web_upstream_requests_total{upstream=\"down\",status=\"502\"} 1"),
        "{m}"
    );
}

/// Static files (the Web Call application): index.html for a directory, a missing file 404
/// (a probe); SIGHUP reloads the certificate and SIGTERM stops the node.
#[test]
fn static_files_reload_and_stop() {
    let rt = rt();
    let dir = temp_dir("web-static-files");
    std::fs::create_dir_all(dir.join("webcall")).unwrap();
    std::fs::write(dir.join("webcall/index.html"), "<h1>Web Call</h1>").unwrap();
    std::fs::write(dir.join("webcall/app.js"), "console.log(1)").unwrap();
    let mut web = Web::start(
        "web-static",
        &format!(
            "[[web.static]]\nprefix = \"/webcall/\"\ndir = \"{}\"\n",
            dir.join("webcall").display()
        ),
    );
    rt.block_on(async {
        let r = web.get(None, HOST, "/webcall/").await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "<h1>Web Call</h1>"));
        let r = web.get(None, HOST, "/webcall/app.js").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").contains("javascript"), "{r:?}");
        let r = web.get(None, HOST, "/webcall/nothing.js").await.unwrap();
        assert_eq!(r.status, 404);
    });
    assert_eq!(web.node.counter("stg_web_probes_total"), 1.0);
    web.node.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !web.node.log().contains("TLS certificate reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", web.node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    web.node.signal("TERM");
    let status = web
        .node
        .wait_exit(Duration::from_secs(20))
        .expect("stopped");
    assert!(status.success(), "{status}");
}

/// The seed's portal rows through a running node: a wrong password once (the message,
/// `TRUCO_KO`, the guard's `Found` line), more than ten (the source banned and refused); a
/// right one gets a session that the token check accepts, and logging out ends it.
#[test]
fn portal_logins_through_the_front() {
    let rt = rt();
    let web = Web::start(
        "web-portal",
        "[registrar]\ndomains = [{ name = \"example.test\", mode = \"local\" }]\n\
         [portal]\nlanding_page = \"/app/\"\nargon2_memory_kib = 1024\nargon2_iterations = 1\n",
    );
    add_alice(&web.node);
    let form = |user: &str, pw: &str| -> Request<Full<Bytes>> {
        let mut r = req(
            "POST",
            HOST,
            "/login",
            Bytes::from(format!("user={user}&password={pw}")),
        );
        r.headers_mut().insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        r
    };
    rt.block_on(async {
        let attacker = "203.0.113.9";
        let tls = web.connect(Some(attacker), &[b"http/1.1"]).await.unwrap();
        let mut h1 = H1::handshake(tls).await;
        let r = h1.send(form("alice", "wrong")).await.unwrap();
        assert_eq!(r.status, 401, "{r:?}");
        assert!(r.body.contains("user or password incorrect"), "{}", r.body);
        let log = crate::harness::wait_log(
            &web.node,
            "[portal] Found 203.0.113.9",
            Duration::from_secs(5),
        );
        assert!(
            log.contains("TRUCO_KO 203.0.113.9 portal wrong_password alice"),
            "{log}"
        );
        // Ten more: the eleventh bans, and the source is no longer answered.
        for _ in 0..10 {
            if h1.send(form("alice", "wrong")).await.is_err() {
                break;
            }
        }
        crate::harness::wait_log(
            &web.node,
            "[portal] Ban 203.0.113.9/32",
            Duration::from_secs(5),
        );
        let refused = match web.connect(Some(attacker), &[b"http/1.1"]).await {
            Err(_) => true,
            Ok(tls) => {
                let mut h1 = H1::handshake(tls).await;
                h1.send(form("alice", "s3cret-pw")).await.is_err()
            }
        };
        assert!(refused, "a banned source is not answered");
        // Someone else logs in: a session cookie, which /auth/check accepts until logout.
        let tls = web
            .connect(Some("203.0.113.10"), &[b"http/1.1"])
            .await
            .unwrap();
        let mut h1 = H1::handshake(tls).await;
        let r = h1.send(form("alice", "s3cret-pw")).await.unwrap();
        assert_eq!(r.status, 303, "{r:?}");
        assert_eq!(r.header("location"), "/app/");
        let cookie = r.header("set-cookie").split(';').next().unwrap().to_owned();
        assert!(cookie.starts_with("stg_session="), "{cookie}");
        let with_cookie = |method: &str, path: &str| {
            let mut r = req(method, HOST, path, Bytes::new());
            r.headers_mut().insert("cookie", cookie.parse().unwrap());
            r
        };
        let r = h1.send(with_cookie("GET", "/auth/check")).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("alice"), "{}", r.body);
        h1.send(with_cookie("POST", "/logout")).await.unwrap();
        let r = h1.send(with_cookie("GET", "/auth/check")).await.unwrap();
        assert_eq!(r.status, 401, "logged out: {r:?}");
    });
}

/// The login page of a running node in headless Chromium (`peers/portal_browser.js`:
/// playwright-core driving Debian's chromium, each screenshot read back with tesseract):
/// a wrong password shows the message, the right one lands on the app behind the front
/// (a `token = true` proxy route), logging out ends the session.
#[test]
fn the_login_page_of_stg_run_works_in_headless_chromium() {
    let (https, sip, app_port) = (free_port(), free_port(), free_port());
    let site = temp_dir("web-browser-app");
    std::fs::create_dir_all(site.join("app")).unwrap();
    std::fs::write(
        site.join("app/index.html"),
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>App</title></head>\
         <body style=\"font-family: sans-serif; font-size: 2rem; margin: 3rem\">\
         <h1>Welcome alice</h1><p>You are logged in.</p></body></html>",
    )
    .unwrap();
    let mut py = Command::new("python3");
    py.args([
        "-m",
        "http.server",
        &app_port.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .arg("--directory")
    .arg(&site);
    let _app = Peer::spawn("python3", "python3", py, &site.join("http.log"));
    wait_listening(format!("127.0.0.1:{app_port}").parse().unwrap());
    let node = StgNode::start(
        "web-browser",
        &format!(
            "[[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{sip}\"\n\n\
             [registrar]\ndomains = [{{ name = \"example.test\", mode = \"local\" }}]\n\
             [portal]\nlanding_page = \"/app/\"\nargon2_memory_kib = 1024\nargon2_iterations = 1\n\
             [web]\nlisten = \"127.0.0.1:{https}\"\n\
             [[web.proxy]]\nprefix = \"/app/\"\nupstream = \"http://127.0.0.1:{app_port}\"\ntoken = true\n"
        ),
    );
    add_alice(&node);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers/portal_browser.js");
    let out_dir = node.dir.join("shots");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = Command::new("timeout")
        .arg("180")
        .arg("node")
        .arg(&script)
        .args([
            &format!("https://127.0.0.1:{https}"),
            "alice",
            "s3cret-pw",
            "welcome alice",
        ])
        .arg(&out_dir)
        .output()
        .expect("cannot run `timeout node` (Debian coreutils, nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "portal_browser.js failed ({}): run scripts/install-test-deps\n{stdout}\n{}\n--- stg:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    for step in ["ok wrong password", "ok logged in", "ok logged out"] {
        assert!(stdout.contains(step), "{step}:\n{stdout}");
    }
}

/// `stg user add alice` (realm example.test, password `s3cret-pw`) on the running node's
/// database: SIP digest and portal password alike.
fn add_alice(node: &StgNode) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stg"))
        .args(["--config", node.dir.join("stg.toml").to_str().unwrap()])
        .args(["user", "add", "alice", "--realm", "example.test"])
        .arg("--password-stdin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"s3cret-pw\n").unwrap();
    }
    assert!(child.wait().unwrap().success(), "stg user add");
}
