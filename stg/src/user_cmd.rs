//! `stg user add|passwd|rm|list`: credentials of local-mode registrar domains and of the
//! portal, in the SQL database of `[store] users_url` (SQLite in `node.data_dir` by default).
//! Each user gets one HA1 per algorithm (MD5 and SHA-256) for its realm, and an argon2id hash
//! of the same password for portal logins (cost from `[portal]`); the password itself is
//! never stored nor printed.

use std::io::BufRead;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use stg_auth::Algorithm;
use stg_config::Config;
use stg_store::Users;

use crate::exit;

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user (fails if it exists in the realm).
    Add(SetArgs),
    /// Change a user's password (fails if it does not exist in the realm).
    Passwd(SetArgs),
    /// Remove a user: from one realm with --realm, else from every realm.
    Rm {
        user: String,
        #[arg(long)]
        realm: Option<String>,
    },
    /// List users and their realms.
    List {
        /// JSON output: `[{"user": .., "realm": ..}]`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub(crate) struct SetArgs {
    user: String,
    /// Digest realm. Default: `registrar.realm`, else the first registrar domain that is
    /// not `*`.
    #[arg(long)]
    realm: Option<String>,
    #[command(flatten)]
    password: PasswordArgs,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct PasswordArgs {
    /// Read the password from the first line of stdin (preferred).
    #[arg(long)]
    password_stdin: bool,
    /// The password (visible to other local users in the process list: prefer
    /// --password-stdin).
    #[arg(long)]
    password: Option<String>,
}

pub(crate) fn run(config: &Config, command: UserCommand) -> ExitCode {
    let runtime = match crate::reg_cmd::command_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(run_inner(config, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("stg: {msg}");
            ExitCode::from(code)
        }
    }
}

type Fail = (u8, String);

async fn run_inner(config: &Config, command: UserCommand) -> Result<(), Fail> {
    // Arguments first: a bad one must not create the database.
    let prepared = match &command {
        UserCommand::Add(a) | UserCommand::Passwd(a) => {
            check("user", &a.user)?;
            let realm = realm_of(config, a.realm.as_deref())?;
            let password = password(&a.password)?;
            // One hash, tens of milliseconds: blocking this command's runtime is harmless.
            let phc = portal_hash(config, &password)?;
            Some((realm, password, phc))
        }
        UserCommand::Rm { user, realm } => {
            check("user", user)?;
            if let Some(r) = realm {
                check("realm", r)?;
            }
            None
        }
        UserCommand::List { .. } => None,
    };
    let users = Users::open(&config.store.users_url, &config.node.data_dir)
        .await
        .map_err(|e| (exit::UNAVAILABLE, e.to_string()))?;
    let r = exec(&users, command, prepared).await;
    users.close().await;
    r
}

async fn exec(
    users: &Users,
    command: UserCommand,
    prepared: Option<(String, String, String)>,
) -> Result<(), Fail> {
    let db = |e: stg_store::StoreError| (exit::UNAVAILABLE, e.to_string());
    match (command, prepared) {
        (UserCommand::Add(a), Some((realm, pw, phc))) => {
            if exists(users, &a.user, &realm).await? {
                return Err((
                    1,
                    format!(
                        "user {} already exists in realm {realm} (use `stg user passwd`)",
                        a.user
                    ),
                ));
            }
            store(users, &a.user, &realm, &pw, &phc).await?;
            println!("added {} in realm {realm} (MD5, SHA-256, portal)", a.user);
            Ok(())
        }
        (UserCommand::Passwd(a), Some((realm, pw, phc))) => {
            if !exists(users, &a.user, &realm).await? {
                return Err((
                    1,
                    format!("no user {} in realm {realm} (use `stg user add`)", a.user),
                ));
            }
            store(users, &a.user, &realm, &pw, &phc).await?;
            println!("changed the password of {} in realm {realm}", a.user);
            Ok(())
        }
        (UserCommand::Rm { user, realm }, _) => {
            let n = users.remove(&user, realm.as_deref()).await.map_err(db)?;
            if n == 0 {
                return Err((
                    1,
                    match realm {
                        Some(r) => format!("no user {user} in realm {r}"),
                        None => format!("no user {user}"),
                    },
                ));
            }
            match realm {
                Some(r) => println!("removed {user} from realm {r}"),
                None => println!("removed {user} from every realm"),
            }
            Ok(())
        }
        (UserCommand::List { json }, _) => {
            let list = users.list().await.map_err(db)?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(u, r)| serde_json::json!({ "user": u, "realm": r }))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for (u, r) in &list {
                    println!("{u}\t{r}");
                }
            }
            Ok(())
        }
        _ => Err((exit::SOFTWARE, "internal: arguments not prepared".into())),
    }
}

async fn exists(users: &Users, user: &str, realm: &str) -> Result<bool, Fail> {
    Ok(users
        .list()
        .await
        .map_err(|e| (exit::UNAVAILABLE, e.to_string()))?
        .iter()
        .any(|(u, r)| u == user && r == realm))
}

/// Stores the user's HA1 for every algorithm (MD5 and SHA-256) and the portal hash.
async fn store(
    users: &Users,
    user: &str,
    realm: &str,
    password: &str,
    phc: &str,
) -> Result<(), Fail> {
    let ha1s: Vec<(&str, String)> = [Algorithm::Md5, Algorithm::Sha256]
        .into_iter()
        .map(|a| (a.name(), stg_auth::ha1(a, user, realm, password)))
        .collect();
    users
        .set_with_password(user, realm, &ha1s, Some(phc))
        .await
        .map_err(|e| (exit::UNAVAILABLE, e.to_string()))
}

/// The realm given, else `registrar.realm`, else the first registrar domain that is not `*`.
fn realm_of(config: &Config, given: Option<&str>) -> Result<String, Fail> {
    let realm = given
        .map(str::to_owned)
        .or_else(|| Some(config.registrar.realm.clone()).filter(|r| !r.is_empty()))
        .or_else(|| {
            config
                .registrar
                .domains
                .iter()
                .find(|d| d.name != "*")
                .map(|d| d.name.clone())
        })
        .ok_or_else(|| {
            (
                exit::USAGE,
                "no realm: give --realm (the registrar has no named domain nor \
                 registrar.realm; with domain \"*\" the realm is each REGISTER's domain)"
                    .to_owned(),
            )
        })?;
    check("realm", &realm)?;
    Ok(realm)
}

/// Non-empty, no control characters, no `"` (user and realm are quoted in digest headers).
fn check(what: &str, v: &str) -> Result<(), Fail> {
    if v.is_empty() || v.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return Err((
            exit::USAGE,
            format!("{what} must be non-empty, without control characters, `\"` or `\\`"),
        ));
    }
    Ok(())
}

/// The argon2id hash of `password` for portal logins, at the cost `[portal]` sets.
fn portal_hash(config: &Config, password: &str) -> Result<String, Fail> {
    let p = &config.portal;
    let params = stg_auth::PasswordParams {
        m_kib: p.argon2_memory_kib,
        t: p.argon2_iterations,
        p: p.argon2_parallelism,
    };
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|e| (exit::SOFTWARE, format!("no randomness for the salt: {e}")))?;
    stg_auth::hash_password(password, &salt, params).map_err(|e| (exit::USAGE, e.to_string()))
}

fn password(p: &PasswordArgs) -> Result<String, Fail> {
    let pw = match &p.password {
        Some(pw) => pw.clone(),
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| (exit::NOINPUT, format!("cannot read the password: {e}")))?;
            let end = line.trim_end_matches(['\n', '\r']).len();
            line.truncate(end);
            line
        }
    };
    if pw.is_empty() {
        return Err((exit::USAGE, "empty password".into()));
    }
    Ok(pw)
}
