//! Redis Sentinel: a master, a replica and one sentinel of the test's own; a forced
//! failover; updates go on against the new master without reopening the store.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stg_store::{Bindings, Change, Record};
use stg_testkit::{free_port, temp_dir, Process};

use crate::bindings::{now, write};
use crate::redis_server::RedisServer;

fn sync_conn(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("port {port}: {e}"))
}

/// Polls `check` every 100 ms until it is true, failing after `limit` with `what`.
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn master_port(sentinel: u16) -> Option<u16> {
    let mut c = sync_conn(sentinel);
    let (_, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg("stgmaster")
        .query(&mut c)
        .ok()?;
    Some(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed() {
    let started = Instant::now();
    let dir = temp_dir("sentinel");
    let master = RedisServer::start_on(free_port(), &dir, &[]);
    let replica_port = free_port();
    let master_port_s = master.port.to_string();
    let replica = RedisServer::start_on(
        replica_port,
        &dir,
        &["--replicaof", "127.0.0.1", &master_port_s],
    );
    wait_for("replication link", Duration::from_secs(15), || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.conn())
            .unwrap_or_default();
        info.contains("master_link_status:up")
    });

    let sport = free_port();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sport}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor stgmaster 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds stgmaster 1000\n\
             sentinel failover-timeout stgmaster 10000\n\
             sentinel parallel-syncs stgmaster 1\n",
            dir.display(),
            master.port
        ),
    )
    .unwrap();
    let mut cmd = Command::new("redis-server");
    cmd.arg(&conf).arg("--sentinel");
    let _sentinel = Process::spawn(
        "redis-sentinel",
        "redis-server",
        cmd,
        &dir.join("sentinel.log"),
    );
    wait_for(
        "the sentinel to see the replica",
        Duration::from_secs(20),
        || {
            let Ok(mut c) = redis::Client::open(format!("redis://127.0.0.1:{sport}"))
                .unwrap()
                .get_connection_with_timeout(Duration::from_millis(300))
            else {
                return false;
            };
            let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg("stgmaster")
                .query(&mut c)
                .unwrap_or_default();
            !replicas.is_empty()
        },
    );

    let b = Bindings::open(
        &format!("redis+sentinel://127.0.0.1:{sport}/stgmaster"),
        &temp_dir("unused"),
    )
    .await
    .unwrap();
    assert_eq!(b.kind(), "redis+sentinel");
    let exp = now() + 3600;
    let set = |f: &str| Change {
        set: vec![(f.to_string(), "v".to_string())],
        expire_at: Some(exp),
        ..Change::default()
    };
    write(&b, "ha@example.org", set("before")).await;
    wait_for(
        "the write to reach the replica",
        Duration::from_secs(10),
        || {
            let n: i64 = redis::cmd("HLEN")
                .arg("fs:ha@example.org")
                .query(&mut replica.conn())
                .unwrap_or(0);
            n == 1
        },
    );

    // A writer that keeps going through the failover: its calls either succeed or fail with
    // a transient error, quickly.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (b, stop) = (b.clone(), Arc::clone(&stop));
        async move {
            let (mut ok, mut failed, mut i) = (0u32, 0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                let r = b
                    .update("bg@example.org", |_| {
                        Ok::<_, std::convert::Infallible>((
                            Change {
                                set: vec![(format!("f{i}"), "v".into())],
                                ..Change::default()
                            },
                            (),
                        ))
                    })
                    .await;
                assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
                match r {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert!(e.is_transient(), "{e}");
                        failed += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: String = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("stgmaster")
        .query(&mut sync_conn(sport))
        .unwrap();
    wait_for(
        "the sentinel to name the replica as master",
        Duration::from_secs(30),
        || master_port(sport) == Some(replica_port),
    );

    // The store asks the sentinels at most every second: until then, writes may still reach
    // the old master (and be lost when it is demoted), the window the store documents.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Updates go on: the first ones may fail while the old master is demoted.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    loop {
        match b
            .update("ha@example.org", |_| {
                Ok::<_, std::convert::Infallible>((set("after"), ()))
            })
            .await
        {
            Ok(_) => break,
            Err(e) => {
                failures += 1;
                assert!(e.is_transient(), "{e}");
                assert!(
                    Instant::now() < deadline,
                    "no successful update after failover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for i in 0..20 {
        write(&b, "ha@example.org", set(&format!("more-{i}"))).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, bg_failed) = writer.await.unwrap();
    assert!(ok > 0);
    let got = b.get("ha@example.org").await.unwrap();
    assert_eq!(got.fields.len(), 22, "{got:?}");
    // It is the new master that holds them.
    let n: i64 = redis::cmd("HLEN")
        .arg("fs:ha@example.org")
        .query(&mut replica.conn())
        .unwrap();
    assert_eq!(n, 22);
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut replica.conn()).unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec()))
    );
    assert_ne!(got, Record::default());
    eprintln!(
        "failover followed: {failures} failed updates after the switch; background writer \
         {ok} ok, {bg_failed} failed; {:?} in all",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    drop(master);
}
