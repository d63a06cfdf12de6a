//! Credentials in SQL, table `stg_users`: one SIP digest HA1 per (user, realm, algorithm),
//! and the portal's argon2id password hash (a PHC string) per (user, realm), repeated on each
//! of the user's rows in that realm (migration 0002). One table for SIP and the portal: `stg
//! user add|passwd` writes both from one password.
//!
//! One sqlx `AnyPool` serves SQLite, MariaDB/MySQL and PostgreSQL; the SQL differs only in
//! placeholders (`?` or `$n`) and in the schema's collation, so each dialect has its own
//! migration directory (`migrations/<dialect>/`), compiled into the binary.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Row};

use crate::{record_op, StoreError};

/// How long a query waits for a pooled connection (or a new one) before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// SIP digest credentials and portal password hashes. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct Users {
    pool: AnyPool,
    dialect: Dialect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    MySql,
    Postgres,
    Sqlite,
}

impl Users {
    /// Opens the database named by `url` and runs the migrations (idempotent):
    /// - `""`: SQLite at `<data_dir>/users.sqlite` (created, with its directory);
    /// - `sqlite://path` (add `?mode=rwc` to create it);
    /// - `mysql://…` or `mariadb://…`;
    /// - `postgres://…` or `postgresql://…`.
    pub async fn open(url: &str, data_dir: &Path) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, dialect) = if url.is_empty() {
            std::fs::create_dir_all(data_dir).map_err(|e| {
                StoreError::Config(format!("cannot create {}: {e}", data_dir.display()))
            })?;
            let path = data_dir.join("users.sqlite");
            (
                format!("sqlite://{}?mode=rwc", path.display()),
                Dialect::Sqlite,
            )
        } else if let Some(rest) = url.strip_prefix("mariadb://") {
            (format!("mysql://{rest}"), Dialect::MySql)
        } else if url.starts_with("mysql://") {
            (url.to_string(), Dialect::MySql)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (url.to_string(), Dialect::Postgres)
        } else if url.starts_with("sqlite:") {
            (url.to_string(), Dialect::Sqlite)
        } else {
            return Err(StoreError::Config(format!(
                "unknown users database URL scheme in {:?} (expected sqlite://, mysql://, \
                 mariadb:// or postgres://)",
                redact(url)
            )));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(&url)
            .await
            .map_err(|e| match map_err(e) {
                StoreError::Unavailable(m) => {
                    StoreError::Unavailable(format!("{}: {m}", redact(&url)))
                }
                other => other,
            })?;
        let migrator = Migrator::new(Embedded(dialect))
            .await
            .map_err(|e| StoreError::Config(format!("migrations: {e}")))?;
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Config(format!("migrations on {}: {e}", redact(&url))))?;
        Ok(Self { pool, dialect })
    }

    /// HA1 (lower-case hex) for (user, realm, algorithm), `algorithm` being "MD5" or
    /// "SHA-256" (RFC 7616 §3.4.2).
    pub async fn ha1(
        &self,
        user: &str,
        realm: &str,
        algorithm: &str,
    ) -> Result<Option<String>, StoreError> {
        let started = Instant::now();
        let sql = self
            .sql("SELECT ha1 FROM stg_users WHERE username = ? AND realm = ? AND algorithm = ?");
        let r = sqlx::query(&sql)
            .bind(user)
            .bind(realm)
            .bind(algorithm)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
            .and_then(|row| row.map(|r| column(&r, 0)).transpose());
        record_op("sql", "ha1", started, r.as_ref().err());
        r
    }

    /// Adds or replaces a user's HA1s for a realm (the caller computes them): afterwards the
    /// user has exactly the algorithms in `ha1s` for that realm, and no portal password
    /// ([`set_with_password`](Self::set_with_password) keeps one).
    pub async fn set(
        &self,
        user: &str,
        realm: &str,
        ha1s: &[(&str, String)],
    ) -> Result<(), StoreError> {
        self.set_with_password(user, realm, ha1s, None).await
    }

    /// As [`set`](Self::set), and the portal password hash (an argon2id PHC string) of the
    /// user in that realm, in the same transaction. `ha1s` must not be empty when a hash is
    /// given: the hash lives on the HA1 rows.
    pub async fn set_with_password(
        &self,
        user: &str,
        realm: &str,
        ha1s: &[(&str, String)],
        password_hash: Option<&str>,
    ) -> Result<(), StoreError> {
        if password_hash.is_some() && ha1s.is_empty() {
            return Err(StoreError::Config(
                "a portal password needs at least one HA1 row to live on".into(),
            ));
        }
        let started = Instant::now();
        let r = self.set_inner(user, realm, ha1s, password_hash).await;
        record_op("sql", "set", started, r.as_ref().err());
        r
    }

    async fn set_inner(
        &self,
        user: &str,
        realm: &str,
        ha1s: &[(&str, String)],
        password_hash: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let del = self.sql("DELETE FROM stg_users WHERE username = ? AND realm = ?");
        sqlx::query(&del)
            .bind(user)
            .bind(realm)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let ins = self.sql(
            "INSERT INTO stg_users (username, realm, algorithm, ha1, password_hash) \
             VALUES (?, ?, ?, ?, ?)",
        );
        for (algorithm, ha1) in ha1s {
            sqlx::query(&ins)
                .bind(user)
                .bind(realm)
                .bind(*algorithm)
                .bind(ha1.as_str())
                .bind(password_hash)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    /// The portal password hash (argon2id PHC string) of `user` in `realm`; with no realm,
    /// in whichever realm the user has one, and an error if several realms hold different
    /// ones (the operator sets `portal.realm`). `None`: no such user, or no portal password.
    pub async fn password_hash(
        &self,
        user: &str,
        realm: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let started = Instant::now();
        let r = self.password_hash_inner(user, realm).await;
        record_op("sql", "password_hash", started, r.as_ref().err());
        r
    }

    async fn password_hash_inner(
        &self,
        user: &str,
        realm: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let rows = match realm {
            Some(realm) => {
                let sql = self.sql(
                    "SELECT DISTINCT password_hash FROM stg_users \
                     WHERE username = ? AND realm = ? AND password_hash IS NOT NULL LIMIT 2",
                );
                sqlx::query(&sql)
                    .bind(user)
                    .bind(realm)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                let sql = self.sql(
                    "SELECT DISTINCT password_hash FROM stg_users \
                     WHERE username = ? AND password_hash IS NOT NULL LIMIT 2",
                );
                sqlx::query(&sql).bind(user).fetch_all(&self.pool).await
            }
        }
        .map_err(map_err)?;
        match rows.as_slice() {
            [] => Ok(None),
            [row] => column(row, 0).map(Some),
            _ => Err(StoreError::Corrupt(format!(
                "user {user:?} has different portal passwords{} (set portal.realm, or run \
                 `stg user passwd` for each realm)",
                match realm {
                    Some(r) => format!(" in realm {r:?}"),
                    None => " in several realms".to_owned(),
                }
            ))),
        }
    }

    /// Removes a user's credentials for one realm, or for every realm with `None`: the
    /// number of credential rows removed (one per algorithm), 0 if the user was unknown.
    pub async fn remove(&self, user: &str, realm: Option<&str>) -> Result<u64, StoreError> {
        let started = Instant::now();
        let r = match realm {
            Some(realm) => {
                let sql = self.sql("DELETE FROM stg_users WHERE username = ? AND realm = ?");
                sqlx::query(&sql)
                    .bind(user)
                    .bind(realm)
                    .execute(&self.pool)
                    .await
            }
            None => {
                let sql = self.sql("DELETE FROM stg_users WHERE username = ?");
                sqlx::query(&sql).bind(user).execute(&self.pool).await
            }
        }
        .map(|done| done.rows_affected())
        .map_err(map_err);
        record_op("sql", "remove", started, r.as_ref().err());
        r
    }

    /// Every (user, realm) with at least one credential, sorted.
    pub async fn list(&self) -> Result<Vec<(String, String)>, StoreError> {
        let started = Instant::now();
        let r =
            sqlx::query("SELECT DISTINCT username, realm FROM stg_users ORDER BY username, realm")
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| Ok((column(r, 0)?, column(r, 1)?)))
                        .collect()
                });
        record_op("sql", "list", started, r.as_ref().err());
        r
    }

    /// Closes the pool (waits for connections in use to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// `sql` with `?` placeholders rewritten to `$1, $2…` for PostgreSQL. Our statements
    /// contain no `?` in literals.
    fn sql(&self, sql: &str) -> String {
        if self.dialect != Dialect::Postgres {
            return sql.to_string();
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("dialect", &self.dialect)
            .finish()
    }
}

fn column(row: &AnyRow, i: usize) -> Result<String, StoreError> {
    row.try_get::<String, _>(i)
        .map_err(|e| StoreError::Corrupt(format!("stg_users column {i}: {e}")))
}

fn map_err(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match e {
        E::Configuration(e) => StoreError::Config(e.to_string()),
        e @ (E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. }) => StoreError::Corrupt(e.to_string()),
        e => StoreError::Unavailable(e.to_string()),
    }
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The migrations of one dialect, compiled in from `migrations/<dialect>/`.
#[derive(Debug)]
struct Embedded(Dialect);

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> futures_core_box::BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>>
    {
        let files: &[(i64, &str, &str)] = match self.0 {
            Dialect::MySql => &[
                (
                    1,
                    "users",
                    include_str!("../migrations/mysql/0001_users.sql"),
                ),
                (
                    2,
                    "password_hash",
                    include_str!("../migrations/mysql/0002_password_hash.sql"),
                ),
            ],
            Dialect::Postgres => &[
                (
                    1,
                    "users",
                    include_str!("../migrations/postgres/0001_users.sql"),
                ),
                (
                    2,
                    "password_hash",
                    include_str!("../migrations/postgres/0002_password_hash.sql"),
                ),
            ],
            Dialect::Sqlite => &[
                (
                    1,
                    "users",
                    include_str!("../migrations/sqlite/0001_users.sql"),
                ),
                (
                    2,
                    "password_hash",
                    include_str!("../migrations/sqlite/0002_password_hash.sql"),
                ),
            ],
        };
        let migrations = files
            .iter()
            .map(|(version, desc, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*desc),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// sqlx's `BoxFuture` (from futures-core), spelled without depending on futures-core.
mod futures_core_box {
    pub(super) type BoxFuture<'a, T> =
        std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("mysql://root:pw@h/db"), "mysql://root:***@h/db");
        assert_eq!(redact("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(redact("sqlite:///x"), "sqlite:///x");
    }
}
