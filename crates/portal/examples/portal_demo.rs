//! The portal on plain HTTP, for trying it in a browser and for
//! `stg/tests/it/peers/portal_browser.js` until the web front mounts it:
//!
//! ```sh
//! cargo run -p stg-portal --example portal_demo -- 127.0.0.1:8088 /tmp/portal-demo
//! node stg/tests/it/peers/portal_browser.js http://localhost:8088/sercen \
//!     alice s3cret-pw 'welcome alice' /tmp/portal-demo
//! ```
//!
//! User `alice`, password `s3cret-pw` (SQLite in the directory given); the portal under
//! `/sercen`, a page protected by the session at `/app/` (the landing page). No guard.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Extension;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use stg_auth::{PasswordParams, Session};
use stg_portal::{Portal, Settings};
use stg_store::Users;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().unwrap_or("127.0.0.1:8088".into()).parse()?;
    let dir = std::path::PathBuf::from(args.next().unwrap_or("/tmp/portal-demo".into()));
    let users = Users::open("", &dir).await?;
    let params = PasswordParams::default();
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let phc = stg_auth::hash_password("s3cret-pw", &salt, params)?;
    let ha1 = stg_auth::ha1(stg_auth::Algorithm::Md5, "alice", "demo", "s3cret-pw");
    users
        .set_with_password("alice", "demo", &[("MD5", ha1)], Some(&phc))
        .await?;
    let settings = Settings {
        realm: Some("demo".into()),
        landing_page: "/app/".into(),
        token_lifetime: std::time::Duration::from_secs(3600),
        cookie_name: "stg_session".into(),
        params,
        max_hashing: 1,
        max_waiting: 64,
        clock: stg_portal::system_clock(),
    };
    let secret = stg_portal::load_or_create_key(&dir.join("portal.key"))?;
    let portal = Portal::new(settings, users, Arc::new(stg_guard::NoGuard), &secret).await?;
    let app = Router::new()
        .route("/app/", get(landing))
        .layer(axum::middleware::from_fn_with_state(
            portal.clone(),
            stg_portal::require_session,
        ))
        .nest("/sercen", portal.router());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "portal_demo on http://{}/sercen/login",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

async fn landing(Extension(s): Extension<Session>) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>App</title></head>\
         <body style=\"font-family: sans-serif; font-size: 2rem; margin: 3rem\">\
         <h1>Welcome {}</h1><p>You are logged in.</p></body></html>",
        s.user
    ))
}
