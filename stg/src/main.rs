//! `stg`: the one binary of the edge node. CLI, configuration loading, logging, signals
//! and drain; no protocol logic (that lives in the crates it wires together).
#![forbid(unsafe_code)]

mod ban_cmd;
mod lint;
mod push_cmd;
mod reg_cmd;
mod user_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stg_config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

/// sysexits(3) codes, so init systems and scripts can tell failures apart.
mod exit {
    pub(crate) const USAGE: u8 = 64;
    pub(crate) const NOINPUT: u8 = 66;
    pub(crate) const UNAVAILABLE: u8 = 69;
    pub(crate) const SOFTWARE: u8 = 70;
    pub(crate) const OSERR: u8 = 71;
    pub(crate) const CONFIG: u8 = 78;
}

#[derive(Parser)]
#[command(
    name = "stg",
    version,
    about = "Internet edge node: SIP edge proxy, push, guard, web front"
)]
struct Cli {
    /// Configuration file (default: /etc/stg/stg.toml when it exists, else embedded defaults).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role of the node.
    Run,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// SIP tools.
    Sip {
        #[command(subcommand)]
        command: SipCommand,
    },
    /// Registrations in the binding store of the configuration (Redis directly; the
    /// embedded store through the running node's admin endpoint).
    Reg {
        #[command(subcommand)]
        command: reg_cmd::RegCommand,
    },
    /// Push notifications: `stg push test AOR` wakes every device of an AOR.
    Push {
        #[command(subcommand)]
        command: push_cmd::PushCommand,
    },
    /// SIP digest credentials of local-mode registrar domains (`[store] users_url`).
    User {
        #[command(subcommand)]
        command: user_cmd::UserCommand,
    },
    /// Bans and the guard's filters.
    Ban {
        #[command(subcommand)]
        command: ban_cmd::BanCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (file + environment) exactly as `stg run` would.
    Check,
    /// Print a complete, commented configuration with every default.
    Example,
}

#[derive(Subcommand)]
enum SipCommand {
    /// Parse one SIP message (a file, or `-` for stdin) and say what it is or why it is
    /// malformed. Exit 0 when well-formed, 1 when malformed.
    Lint {
        /// The message file, or `-`.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{}", stg_config::EXAMPLE);
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => match load_config(cli.config.as_deref()) {
            Ok((config, source)) => {
                println!("{source}: OK");
                for l in &config.sip.listen {
                    println!("  sip {} {} ({})", l.transport, l.address, l.side);
                }
                println!("  upstream {}", config.sip.upstream);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("stg: {e}");
                ExitCode::from(exit::CONFIG)
            }
        },
        Command::Sip {
            command: SipCommand::Lint { file },
        } => lint::run(&file),
        Command::Reg { command } => {
            with_config(cli.config.as_deref(), |c| reg_cmd::run(c, command))
        }
        Command::Push { command } => {
            with_config(cli.config.as_deref(), |c| push_cmd::run(c, command))
        }
        Command::User { command } => {
            with_config(cli.config.as_deref(), |c| user_cmd::run(c, command))
        }
        Command::Ban {
            command: command @ ban_cmd::BanCommand::TestFilter { .. },
        } => ban_cmd::run(command),
        Command::Ban { command } => {
            with_config(cli.config.as_deref(), |c| ban_cmd::run_node(c, command))
        }
        Command::Run => run(cli.config.as_deref()),
    }
}

/// Runs `f` on the configuration, or says why it cannot be read.
fn with_config(path: Option<&Path>, f: impl FnOnce(&Config) -> ExitCode) -> ExitCode {
    match load_config(path) {
        Ok((config, _)) => f(&config),
        Err(e) => {
            eprintln!("stg: {e}");
            ExitCode::from(exit::CONFIG)
        }
    }
}

/// Reads the configuration the way every subcommand does; returns it and where it came from.
fn load_config(path: Option<&Path>) -> Result<(Config, String), stg_config::ConfigError> {
    // Non-Unicode variables cannot be config overrides; skip them instead of panicking.
    let vars = || {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
    };
    match path {
        Some(p) => Ok((Config::load(p, vars())?, p.display().to_string())),
        None if Path::new(stg_config::DEFAULT_PATH).exists() => Ok((
            Config::load(Path::new(stg_config::DEFAULT_PATH), vars())?,
            stg_config::DEFAULT_PATH.to_string(),
        )),
        None => Ok((Config::from_env(vars())?, "embedded defaults".to_string())),
    }
}

fn init_logging(config: &Config) {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_new(&config.log.level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let json = match config.log.format {
        LogFormat::Human => false,
        LogFormat::Json => true,
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "stg: journald unavailable ({e}); logging JSON to stderr"
                );
                true
            }
        },
        _ => !std::io::stderr().is_terminal(),
    };
    // A closed stderr (a pipe whose reader left, journald restarting) must never take the
    // node down: by default the subscriber reports a failed write with eprintln!, which
    // panics when stderr itself is the thing that failed.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn run(path: Option<&Path>) -> ExitCode {
    let (config, source) = match load_config(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stg: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    init_logging(&config);
    // Before anything is bound: every connection is a descriptor, and systemd's default soft
    // limit (1024) would stop the node near a thousand devices.
    match stg_edge::raise_nofile_limit() {
        Ok(l) if l.soft > l.before => tracing::info!(
            from = l.before,
            to = l.soft,
            hard = l.hard,
            "open-file limit raised"
        ),
        Ok(l) => tracing::info!(soft = l.soft, hard = l.hard, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stg: cannot start the runtime: {e}");
            return ExitCode::from(exit::OSERR);
        }
    };
    runtime.block_on(async move {
        let web_config = config.clone();
        let node = match stg_edge::Node::bind(config).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("stg: {e}");
                return ExitCode::from(match e {
                    stg_edge::EdgeError::Bind { .. } => exit::OSERR,
                    _ => exit::CONFIG,
                });
            }
        };
        let web = match stg_web::WebFront::bind(&web_config).await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("stg: {e}");
                return ExitCode::from(match e {
                    stg_web::WebError::Bind { .. } => exit::OSERR,
                    _ => exit::CONFIG,
                });
            }
        };
        // One certificate store for SIP and the web front, reloaded as one on SIGHUP.
        let tls = match (node.tls(), &web) {
            (Some(t), _) => Some(t),
            (None, Some(_)) => match stg_edge::tls::TlsStore::load(&web_config) {
                Ok(t) => Some(std::sync::Arc::new(t)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start");
                    eprintln!("stg: tls: {e}");
                    return ExitCode::from(exit::CONFIG);
                }
            },
            (None, None) => None,
        };
        for l in node.listeners() {
            tracing::info!(transport = %l.transport, address = %l.local, side = ?l.side, "listening");
        }
        if let Some(w) = &web {
            let (https, http) = w.local_addrs();
            tracing::info!(https = ?https, http = ?http, "web front listening");
        }
        if let Some(a) = node.admin_addr() {
            tracing::info!(address = %a, "admin listening (GET /metrics, /health)");
        }
        tracing::info!(config = %source, "stg started");
        let drain = CancellationToken::new();
        spawn_signal_handlers(drain.clone(), tls.clone());
        let web_task = match (web, tls) {
            (Some(w), Some(tls)) => {
                // The authentication service (the Sercen role) answers what no rule, proxy
                // or static route takes, and is the session check of `token = true` routes.
                let portal = match stg_portal::Portal::open(&web_config, node.guard()).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the authentication service");
                        eprintln!("stg: portal: {e}");
                        return ExitCode::from(exit::CONFIG);
                    }
                };
                let w = w
                    .mount(portal.router())
                    .token_check(std::sync::Arc::new(PortalCheck(portal)));
                let (guard, drain) = (node.guard(), drain.clone());
                Some(tokio::spawn(async move { w.run(tls, guard, drain).await }))
            }
            _ => None,
        };
        // The node runs as a task on a worker, not as the `block_on` future: a worker that
        // polls the I/O driver then runs the core in place when a datagram arrives, instead
        // of waking the main thread (a cross-thread wake per message, measured at ~30 % of
        // the node's CPU).
        let code = match tokio::spawn(node.run(drain)).await {
            Ok(Ok(())) => {
                tracing::info!("stg stopped");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "stopped on error");
                ExitCode::from(exit::SOFTWARE)
            }
            Err(e) => {
                tracing::error!(error = %e, "node task failed");
                ExitCode::from(exit::SOFTWARE)
            }
        };
        if let Some(t) = web_task {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "web front stopped on error"),
                Err(e) => tracing::error!(error = %e, "web front task failed"),
            }
        }
        code
    })
}

fn spawn_signal_handlers(
    drain: CancellationToken,
    tls: Option<std::sync::Arc<stg_edge::tls::TlsStore>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::spawn(async move {
        let mut stops = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    match &tls {
                        Some(store) => match store.reload() {
                            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed, keeping the current certificate"),
                        },
                        None => tracing::info!("SIGHUP: no TLS or web listener, nothing to reload"),
                    }
                    continue;
                }
            }
            stops += 1;
            if stops == 1 {
                tracing::info!("stop requested: draining (signal again to exit at once)");
                drain.cancel();
            } else {
                tracing::warn!("second stop signal: exiting now");
                std::process::exit(i32::from(exit::SOFTWARE));
            }
        }
    });
}

/// The web front's session check, by the authentication service. Only a token we never
/// issued is an attack (the front logs `TRUCO_KO … token invalido` and counts it); an expired
/// or logged-out one is simply no session.
struct PortalCheck(stg_portal::Portal);

impl stg_web::TokenCheck for PortalCheck {
    fn check<'a>(
        &'a self,
        head: &'a http::request::Parts,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = stg_web::TokenVerdict> + Send + 'a>>
    {
        Box::pin(async move {
            match self.0.session(&head.headers) {
                Ok(s) => stg_web::TokenVerdict::Valid { user: s.user },
                Err(stg_portal::Rejection::Invalid(e)) if e.is_forged() => {
                    stg_web::TokenVerdict::Invalid {
                        reason: e.to_string(),
                    }
                }
                Err(_) => stg_web::TokenVerdict::Missing,
            }
        })
    }
}
