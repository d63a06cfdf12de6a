//! Users on SQLite (temp dir), MariaDB and PostgreSQL (the machine's servers, a database of
//! the test's own, dropped at the end). Server URLs (without database):
//! `STG_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`) and `STG_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432`).

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use stg_store::Users;
use stg_testkit::temp_dir;

async fn exercise(url: &str) {
    let dir = temp_dir("users");
    let users = Users::open(url, &dir).await.unwrap();
    assert!(users.list().await.unwrap().is_empty());
    assert_eq!(
        users.ha1("alice", "example.org", "MD5").await.unwrap(),
        None
    );

    let md5 = "0123456789abcdef0123456789abcdef".to_string();
    let sha = "ab".repeat(32);
    users
        .set(
            "alice",
            "example.org",
            &[("MD5", md5.clone()), ("SHA-256", sha.clone())],
        )
        .await
        .unwrap();
    users
        .set("40004*01", "sips.example.org", &[("MD5", md5.clone())])
        .await
        .unwrap();
    users
        .set("alice", "other.example", &[("MD5", "f".repeat(32))])
        .await
        .unwrap();
    assert_eq!(
        users
            .ha1("alice", "example.org", "MD5")
            .await
            .unwrap()
            .as_deref(),
        Some(md5.as_str())
    );
    assert_eq!(
        users
            .ha1("alice", "example.org", "SHA-256")
            .await
            .unwrap()
            .as_deref(),
        Some(sha.as_str())
    );
    // User parts and realms compare case-sensitively (MariaDB's default collation would not).
    assert_eq!(
        users.ha1("Alice", "example.org", "MD5").await.unwrap(),
        None
    );
    assert_eq!(
        users.ha1("alice", "EXAMPLE.org", "MD5").await.unwrap(),
        None
    );
    assert_eq!(
        users.list().await.unwrap(),
        [
            ("40004*01".to_string(), "sips.example.org".to_string()),
            ("alice".to_string(), "example.org".to_string()),
            ("alice".to_string(), "other.example".to_string()),
        ]
    );

    // set replaces the realm's HA1s as a whole.
    let md5b = "fedcba9876543210fedcba9876543210".to_string();
    users
        .set("alice", "example.org", &[("MD5", md5b.clone())])
        .await
        .unwrap();
    assert_eq!(
        users
            .ha1("alice", "example.org", "MD5")
            .await
            .unwrap()
            .as_deref(),
        Some(md5b.as_str())
    );
    assert_eq!(
        users.ha1("alice", "example.org", "SHA-256").await.unwrap(),
        None
    );

    // Portal passwords (migration 0002): one argon2 PHC string per (user, realm).
    let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g";
    let phc2 = "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXJzYWx0$b3RoZXJoYXNob3RoZXJoYXNo";
    assert_eq!(users.password_hash("alice", None).await.unwrap(), None);
    let both = [("MD5", md5.clone()), ("SHA-256", sha.clone())];
    users
        .set_with_password("carol", "example.org", &both, Some(phc))
        .await
        .unwrap();
    let hash = |user: &'static str, realm: Option<&'static str>| {
        let users = users.clone();
        async move { users.password_hash(user, realm).await }
    };
    assert_eq!(
        hash("carol", Some("example.org")).await.unwrap().as_deref(),
        Some(phc)
    );
    assert_eq!(hash("carol", None).await.unwrap().as_deref(), Some(phc));
    assert_eq!(hash("Carol", None).await.unwrap(), None);
    assert_eq!(hash("carol", Some("other.example")).await.unwrap(), None);
    assert_eq!(
        users.ha1("carol", "example.org", "MD5").await.unwrap(),
        Some(md5.clone())
    );
    // The same password in a second realm: still one answer without a realm.
    let one = [("MD5", md5.clone())];
    users
        .set_with_password("carol", "other.example", &one, Some(phc))
        .await
        .unwrap();
    assert_eq!(hash("carol", None).await.unwrap().as_deref(), Some(phc));
    // Different ones: only a realm tells which.
    users
        .set_with_password("carol", "other.example", &one, Some(phc2))
        .await
        .unwrap();
    assert!(matches!(
        hash("carol", None).await,
        Err(stg_store::StoreError::Corrupt(_))
    ));
    assert_eq!(
        hash("carol", Some("other.example"))
            .await
            .unwrap()
            .as_deref(),
        Some(phc2)
    );
    // `set` replaces the realm's rows as a whole, portal password included.
    users.set("carol", "other.example", &one).await.unwrap();
    assert_eq!(hash("carol", Some("other.example")).await.unwrap(), None);
    assert_eq!(hash("carol", None).await.unwrap().as_deref(), Some(phc));
    // A hash needs a row to live on.
    assert!(users
        .set_with_password("dave", "example.org", &[], Some(phc))
        .await
        .is_err());
    assert_eq!(users.remove("carol", None).await.unwrap(), 3);

    assert_eq!(users.remove("alice", Some("example.org")).await.unwrap(), 1);
    assert_eq!(users.remove("alice", Some("example.org")).await.unwrap(), 0);
    assert_eq!(users.remove("40004*01", None).await.unwrap(), 1);
    users.close().await;

    // Reopening runs the migrations again: nothing to do, data kept.
    let users = Users::open(url, &dir).await.unwrap();
    assert_eq!(
        users.list().await.unwrap(),
        [("alice".to_string(), "other.example".to_string())]
    );
    users.close().await;
}

#[tokio::test]
async fn users_on_sqlite_default_path() {
    let dir = temp_dir("sqlite");
    let users = Users::open("", &dir).await.unwrap();
    users
        .set("bob", "r", &[("MD5", "a".repeat(32))])
        .await
        .unwrap();
    users.close().await;
    assert!(dir.join("users.sqlite").is_file());
    let users = Users::open("", &dir).await.unwrap();
    assert_eq!(
        users.list().await.unwrap(),
        [("bob".to_string(), "r".to_string())]
    );
    users.close().await;
}

#[tokio::test]
async fn users_on_sqlite() {
    let dir = temp_dir("sqlite");
    exercise(&format!("sqlite://{}?mode=rwc", dir.join("u.db").display())).await;
}

#[tokio::test]
async fn users_bad_url_is_config_error() {
    let r = Users::open("oracle://x", &temp_dir("x")).await;
    assert!(matches!(r, Err(stg_store::StoreError::Config(_))));
}

/// A database of this test's own on a server: created, handed to `body`, dropped.
async fn with_database<F>(server: &str, admin_db: &str, body: impl FnOnce(String) -> F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    static N: AtomicU32 = AtomicU32::new(0);
    sqlx::any::install_default_drivers();
    let name = format!(
        "stg_test_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let admin: AnyPool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{server}/{admin_db}"))
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach the SQL server at {server} (is it running?): {e}")
        });
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let url = format!("{server}/{name}");
    let outcome = tokio::spawn(body(url));
    let result = outcome.await;
    let drop_sql = if server.starts_with("postgres") {
        format!("DROP DATABASE {name} WITH (FORCE)")
    } else {
        format!("DROP DATABASE {name}")
    };
    sqlx::query(&drop_sql).execute(&admin).await.unwrap();
    admin.close().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test]
async fn users_on_mariadb() {
    let server = std::env::var("STG_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    with_database(&server, "test", |url| async move {
        exercise(&url).await;
        // The mariadb:// spelling names the same server.
        let users = Users::open(&url.replacen("mysql://", "mariadb://", 1), &temp_dir("m"))
            .await
            .unwrap();
        assert_eq!(users.list().await.unwrap().len(), 1);
        users.close().await;
    })
    .await;
}

#[tokio::test]
async fn users_on_postgres() {
    let server = std::env::var("STG_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    with_database(&server, "test", |url| async move { exercise(&url).await }).await;
}
