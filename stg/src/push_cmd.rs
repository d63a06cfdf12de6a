//! `stg push test AOR`: sends a test push (`type: test`, an APNs background push) to every
//! device of an AOR that has push parameters, with the node's `[push]` configuration, and
//! prints each provider's answer. The diagnostic for "the phone does not ring when asleep":
//! it tells apart a wrong key or certificate, a dead token and an unreachable provider.
//! Bindings are read as `stg reg show` reads them.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use stg_config::Config;
use stg_push::{Outcome, PushKind, PushRequest, Pusher};

use crate::exit;
use crate::reg_cmd::{command_runtime, normalize_aor, Fail, Store};

#[derive(Subcommand)]
pub(crate) enum PushCommand {
    /// Push every device of AOR (`user@host`) once and print each provider's answer. Exit 0
    /// when every push was accepted, 1 when one was not or the AOR has no device to push.
    Test {
        /// `user@host` (a `sip:` prefix is ignored).
        aor: String,
    },
}

pub(crate) fn run(config: &Config, command: PushCommand) -> ExitCode {
    let runtime = match command_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(run_inner(config, command)) {
        Ok(code) => code,
        Err(Fail(code, msg)) => {
            eprintln!("stg: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn run_inner(config: &Config, command: PushCommand) -> Result<ExitCode, Fail> {
    let PushCommand::Test { aor } = command;
    let aor = normalize_aor(&aor).to_owned();
    let pusher = Pusher::new(&config.push).map_err(|e| Fail(exit::CONFIG, format!("push: {e}")))?;
    let store = Store::open(config).await?;
    let fields = store.get(&aor).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (live, _) = stg_registrar::live_bindings(&fields, now);
    let mut tried = 0;
    let mut ok = true;
    for b in live {
        let Some(push) = b.push() else {
            println!("{}: no push parameters", b.key);
            continue;
        };
        tried += 1;
        let req = PushRequest::new(
            PushKind::Test,
            push,
            &format!("stg-push-test-{now}"),
            &format!("sip:{aor}"),
            "stg push test",
        );
        let r = pusher.send(&req).await;
        let answer = match &r.outcome {
            Outcome::Sent { id } => format!("sent (id {id})"),
            Outcome::RemoveBinding { reason } => {
                ok = false;
                format!("token rejected: {reason} (a call would remove this binding)")
            }
            Outcome::Failed { status, reason } => {
                ok = false;
                match status {
                    Some(s) => format!("failed: HTTP {s}: {reason}"),
                    None => format!("failed: {reason}"),
                }
            }
            Outcome::Refused => {
                ok = false;
                "refused: too many pushes in flight".to_owned()
            }
            _ => {
                ok = false;
                format!("{:?}", r.outcome)
            }
        };
        println!(
            "{}: {} {} in {} ms ({} attempt(s))",
            b.key,
            r.provider,
            answer,
            r.latency.as_millis(),
            r.attempts
        );
    }
    if tried == 0 {
        eprintln!("stg: {aor} has no device with push parameters");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
