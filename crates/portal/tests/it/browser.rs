//! The login page in headless Chromium: `stg/tests/it/peers/portal_browser.js` (playwright-core
//! driving Debian's chromium, screenshots read back with tesseract) against the portal served
//! on 127.0.0.1 over plain HTTP (the web front adds TLS), mounted as the front mounts it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Extension;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use stg_auth::{PasswordParams, Session};
use stg_portal::{Portal, Settings};
use stg_store::Users;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_page_works_in_headless_chromium() {
    let dir = stg_testkit::temp_dir("portal-browser");
    let users = Users::open("", &dir).await.unwrap();
    let params = PasswordParams {
        m_kib: 256,
        t: 1,
        p: 1,
    };
    let phc = stg_auth::hash_password("s3cret-pw", &[5; 16], params).unwrap();
    users
        .set_with_password("alice", "r", &[("MD5", "0".repeat(32))], Some(&phc))
        .await
        .unwrap();
    let settings = Settings {
        realm: Some("r".into()),
        landing_page: "/app/".into(),
        token_lifetime: Duration::from_secs(3600),
        cookie_name: "stg_session".into(),
        params,
        max_hashing: 1,
        max_waiting: 8,
        clock: stg_portal::system_clock(),
    };
    let portal = Portal::new(settings, users, Arc::new(stg_guard::NoGuard), &[3; 32])
        .await
        .unwrap();
    let app = Router::new()
        .route("/app/", get(landing))
        .layer(axum::middleware::from_fn_with_state(
            portal.clone(),
            stg_portal::require_session,
        ))
        .nest("/sercen", portal.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../stg/tests/it/peers/portal_browser.js");
    // `localhost`: Chromium keeps Secure cookies from http://localhost (a secure context).
    let base = format!("http://localhost:{port}/sercen");
    let out_dir = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("180")
            .arg("node")
            .arg(script)
            .args([&base, "alice", "s3cret-pw", "welcome alice"])
            .arg(&out_dir)
            .output()
    })
    .await
    .unwrap()
    .expect("cannot run `timeout node` (Debian coreutils, nodejs)");
    server.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "portal_browser.js failed ({}); run scripts/install-test-deps (chromium, tesseract-ocr, \
         playwright-core)\n{stdout}\n{stderr}",
        out.status
    );
    for step in [
        "ok login page",
        "ok wrong password",
        "ok logged in",
        "ok logged out",
    ] {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }
    for shot in [
        "1-login.png",
        "2-wrong.png",
        "3-landing.png",
        "4-logged-out.png",
    ] {
        assert!(dir.join(shot).is_file(), "{shot}");
    }
}

async fn landing(Extension(s): Extension<Session>) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>App</title></head>\
         <body style=\"font-family: sans-serif; font-size: 2rem; margin: 3rem\">\
         <h1>Welcome {}</h1><p>You are logged in.</p></body></html>",
        s.user
    ))
}
