//! update/get/remove/scan on both backends; Flexisip's layout in Redis; concurrency; outage;
//! restart and expiry of the embedded store.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stg_store::{escape_glob, Bindings, Change, Record, StoreError};
use stg_testkit::temp_dir;

use crate::redis_server::RedisServer;

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn record(p: &[(&str, &str)]) -> Record {
    Record {
        fields: pairs(p).into_iter().collect(),
    }
}

/// Applies `change` unconditionally; returns what `f` saw.
pub(crate) async fn write(b: &Bindings, aor: &str, change: Change) -> Record {
    b.update(aor, |r| Ok::<_, Infallible>((change.clone(), r.clone())))
        .await
        .unwrap()
        .unwrap()
}

async fn embedded() -> Bindings {
    Bindings::open("", &temp_dir("embedded")).await.unwrap()
}

/// The semantics both backends share.
async fn semantics(b: &Bindings) {
    let aor = "40004*01@sips.example.org";
    let exp = now() + 3600;
    let seen = write(
        b,
        aor,
        Change {
            set: pairs(&[("<urn:uuid:a>", "ca"), ("<urn:uuid:b>", "cb")]),
            expire_at: Some(exp),
            ..Change::default()
        },
    )
    .await;
    assert_eq!(seen, Record::default(), "a new AOR reads as empty");
    let both = record(&[("<urn:uuid:a>", "ca"), ("<urn:uuid:b>", "cb")]);
    assert_eq!(b.get(aor).await.unwrap(), both);

    // f's error is handed back and nothing is written; f's value too.
    let r = b
        .update(aor, |_| Err::<(Change, ()), _>("refused"))
        .await
        .unwrap();
    assert_eq!(r, Err("refused"));
    let r = b
        .update(aor, |r| {
            Ok::<_, Infallible>((Change::default(), r.fields.len()))
        })
        .await
        .unwrap();
    assert_eq!(r, Ok(2));
    assert_eq!(b.get(aor).await.unwrap(), both);

    // set + del in one change.
    write(
        b,
        aor,
        Change {
            set: pairs(&[("<urn:uuid:c>", "cc"), ("<urn:uuid:a>", "ca2")]),
            del: vec!["<urn:uuid:b>".into()],
            ..Change::default()
        },
    )
    .await;
    assert_eq!(
        b.get(aor).await.unwrap(),
        record(&[("<urn:uuid:a>", "ca2"), ("<urn:uuid:c>", "cc")])
    );

    // Contact: * then a new binding in the same change.
    write(
        b,
        aor,
        Change {
            delete_all: true,
            set: pairs(&[("<urn:uuid:d>", "cd")]),
            expire_at: Some(exp),
            ..Change::default()
        },
    )
    .await;
    assert_eq!(b.get(aor).await.unwrap(), record(&[("<urn:uuid:d>", "cd")]));

    // Removing the last field removes the AOR.
    write(
        b,
        aor,
        Change {
            del: vec!["<urn:uuid:d>".into()],
            ..Change::default()
        },
    )
    .await;
    assert_eq!(b.get(aor).await.unwrap(), Record::default());
    assert!(b.scan(&escape_glob(aor), 10).await.unwrap().is_empty());

    // remove(field) and remove(None).
    write(
        b,
        aor,
        Change {
            set: pairs(&[("f1", "1"), ("f2", "2")]),
            ..Change::default()
        },
    )
    .await;
    assert!(b.remove(aor, Some("f1")).await.unwrap());
    assert!(!b.remove(aor, Some("f1")).await.unwrap());
    assert_eq!(b.get(aor).await.unwrap(), record(&[("f2", "2")]));
    assert!(b.remove(aor, None).await.unwrap());
    assert!(!b.remove(aor, None).await.unwrap());
    assert_eq!(b.get(aor).await.unwrap(), Record::default());

    // An expiry in the past removes the AOR at once.
    write(
        b,
        aor,
        Change {
            set: pairs(&[("f", "v")]),
            expire_at: Some(now() - 10),
            ..Change::default()
        },
    )
    .await;
    assert_eq!(b.get(aor).await.unwrap(), Record::default());

    // scan: `*` in user parts, escaped patterns, limits.
    let aors = [
        "40004*01@h.example",
        "40004x01@h.example",
        "40004*02@h.example",
        "a?b@h.example",
        "conference-factory@other.example",
    ];
    for a in aors {
        write(
            b,
            a,
            Change {
                set: pairs(&[("k", a)]),
                expire_at: Some(exp),
                ..Change::default()
            },
        )
        .await;
    }
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let got = sorted(
        b.scan(&format!("{}@*", escape_glob("40004*01")), 100)
            .await
            .unwrap(),
    );
    assert_eq!(got, ["40004*01@h.example"]);
    let got = sorted(b.scan("40004*@h.example", 100).await.unwrap());
    assert_eq!(
        got,
        [
            "40004*01@h.example",
            "40004*02@h.example",
            "40004x01@h.example"
        ]
    );
    let got = sorted(
        b.scan(&format!("{}@*", escape_glob("a?b")), 100)
            .await
            .unwrap(),
    );
    assert_eq!(got, ["a?b@h.example"]);
    assert_eq!(b.scan("*", 100).await.unwrap().len(), aors.len());
    assert_eq!(b.scan("*@h.example", 2).await.unwrap().len(), 2);
    assert!(b.scan("nobody@*", 100).await.unwrap().is_empty());
}

/// Kept messages: per device, in order, capped, expired ones skipped, forgotten one by one.
async fn kept_messages(b: &Bindings) {
    let (phone, tablet) = ("erin@example.com:<urn:uuid:1>", "erin@example.com:tablet");
    let later = now() + 3600;
    for i in 1..=3 {
        let m = format!("MESSAGE {i}");
        assert!(b.keep_message(phone, later, m.as_bytes(), 3).await.unwrap());
    }
    assert!(
        !b.keep_message(phone, later, b"MESSAGE 4", 3).await.unwrap(),
        "the device's cap"
    );
    assert!(b.keep_message(tablet, later, b"other", 3).await.unwrap());
    let kept = b.kept_messages(phone, now()).await.unwrap();
    let bodies: Vec<&[u8]> = kept.iter().map(|k| &k.request[..]).collect();
    assert_eq!(bodies, [&b"MESSAGE 1"[..], b"MESSAGE 2", b"MESSAGE 3"]);
    assert!(kept.iter().all(|k| k.expires_at == later));
    assert!(b.forget_message(phone, &kept[1]).await.unwrap());
    assert!(!b.forget_message(phone, &kept[1]).await.unwrap(), "once");
    let left: Vec<Vec<u8>> = b
        .kept_messages(phone, now())
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.request)
        .collect();
    assert_eq!(left, [b"MESSAGE 1".to_vec(), b"MESSAGE 3".to_vec()]);
    // After their expiry they are gone, and they no longer count against the cap.
    assert!(b.kept_messages(phone, later + 1).await.unwrap().is_empty());
    assert_eq!(b.kept_messages(tablet, now()).await.unwrap().len(), 1);
    let soon = now() + 1;
    let dev = "erin@example.com:short";
    for _ in 0..2 {
        assert!(b.keep_message(dev, soon, b"x", 2).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Reading drops the expired ones (Redis keeps them in the list until then).
    assert!(b.kept_messages(dev, now()).await.unwrap().is_empty());
    assert!(b.keep_message(dev, later, b"y", 2).await.unwrap());
}

#[tokio::test]
async fn embedded_semantics() {
    let b = embedded().await;
    assert_eq!(b.kind(), "embedded");
    semantics(&b).await;
    kept_messages(&b).await;
}

#[tokio::test]
async fn redis_semantics() {
    let server = RedisServer::start();
    let b = Bindings::open(&server.url(), &temp_dir("unused"))
        .await
        .unwrap();
    assert_eq!(b.kind(), "redis");
    semantics(&b).await;
    kept_messages(&b).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg("stg:msg:erin@example.com:tablet")
        .query(&mut server.conn())
        .unwrap();
    assert!(
        ttl > 3000,
        "the list expires with its newest message: {ttl}"
    );
}

#[tokio::test]
async fn bad_urls_are_config_errors() {
    for url in ["mongodb://x", "redis+sentinel://h:1", "redis://:bad:port:x"] {
        let r = Bindings::open(url, &temp_dir("bad")).await;
        assert!(matches!(r, Err(StoreError::Config(_))), "{url}: {r:?}");
    }
    // The embedded store's open error names the file.
    let dir = temp_dir("notadir");
    std::fs::write(dir.join("bindings.redb"), b"not a redb file at all").unwrap();
    match Bindings::open("embedded", &dir).await {
        Err(StoreError::Config(m)) => assert!(m.contains("bindings.redb"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// What a Flexisip node (or `redis-cli`) sees: one hash per AOR under `fs:<aor>`, the
/// latest expiry on the key, and a PUBLISH on `<aor>` carrying the instance.
#[tokio::test]
async fn redis_layout_is_flexisips() {
    let server = RedisServer::start();
    let b = Bindings::open(&server.url(), &temp_dir("unused"))
        .await
        .unwrap();
    let aor = "40004*01@sips.example.org";
    let instance = "\"<urn:uuid:0a1b>\"";
    let contact = "\"JAC\" <sip:40004*01@198.51.100.7:33030;transport=tls;expires=36000>;+sip.instance=\"<urn:uuid:0a1b>\"";
    let exp = now() + 36000;

    // A subscriber, as another node would be.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut sub = server.conn();
    let channel = aor.to_string();
    let subscriber = std::thread::spawn(move || {
        let mut ps = sub.as_pubsub();
        ps.subscribe(&channel).unwrap();
        ps.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tx.send(()).unwrap();
        let msg = ps.get_message().unwrap();
        (
            msg.get_channel_name().to_string(),
            msg.get_payload::<String>().unwrap(),
        )
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();

    write(
        &b,
        aor,
        Change {
            set: vec![
                ("<urn:uuid:0a1b>".into(), contact.into()),
                ("<urn:uuid:ffff>".into(), "old".into()),
            ],
            expire_at: Some(exp),
            publish: Some((aor.into(), instance.into())),
            ..Change::default()
        },
    )
    .await;
    let (ch, payload) = subscriber.join().unwrap();
    assert_eq!((ch.as_str(), payload.as_str()), (aor, instance));

    let mut c = server.conn();
    let key = format!("fs:{aor}");
    let ty: String = redis::cmd("TYPE").arg(&key).query(&mut c).unwrap();
    assert_eq!(ty, "hash");
    let all: std::collections::BTreeMap<String, String> =
        redis::cmd("HGETALL").arg(&key).query(&mut c).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all["<urn:uuid:0a1b>"], contact);
    assert_eq!(all["<urn:uuid:ffff>"], "old");
    let at: u64 = redis::cmd("EXPIRETIME").arg(&key).query(&mut c).unwrap();
    assert_eq!(at, exp);
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
    assert!((35990..=36000).contains(&ttl), "{ttl}");

    // Removing one contact is an HDEL: the other and the expiry stay.
    write(
        &b,
        aor,
        Change {
            del: vec!["<urn:uuid:ffff>".into()],
            ..Change::default()
        },
    )
    .await;
    let all: std::collections::BTreeMap<String, String> =
        redis::cmd("HGETALL").arg(&key).query(&mut c).unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["<urn:uuid:0a1b>"]);
    let at: u64 = redis::cmd("EXPIRETIME").arg(&key).query(&mut c).unwrap();
    assert_eq!(at, exp);

    // A hash written the way Flexisip writes it reads back as is.
    let _: () = redis::cmd("HMSET")
        .arg("fs:flexi@example.org")
        .arg("<urn:uuid:1>")
        .arg("v1")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        b.get("flexi@example.org").await.unwrap(),
        record(&[("<urn:uuid:1>", "v1")])
    );

    // A key that is not a hash is reported, not misread.
    let _: () = redis::cmd("SET")
        .arg("fs:str@example.org")
        .arg("x")
        .query(&mut c)
        .unwrap();
    assert!(matches!(
        b.get("str@example.org").await,
        Err(StoreError::Corrupt(_))
    ));
}

/// Two writers of one AOR at the same moment, each adding its own fields: none lost.
async fn no_field_lost(a: Bindings, b: Bindings, n: usize) -> (Record, u32) {
    let aor = "race*01@example.org";
    let calls = Arc::new(AtomicU32::new(0));
    let run = |store: Bindings, tag: &'static str| {
        let calls = Arc::clone(&calls);
        tokio::spawn(async move {
            for i in 0..n {
                let field = format!("{tag}-{i}");
                store
                    .update(aor, |r| {
                        calls.fetch_add(1, Ordering::Relaxed);
                        assert!(!r.fields.contains_key(&field));
                        Ok::<_, Infallible>((
                            Change {
                                set: vec![(field.clone(), i.to_string())],
                                expire_at: Some(now() + 3600),
                                ..Change::default()
                            },
                            (),
                        ))
                    })
                    .await
                    .unwrap()
                    .unwrap();
            }
        })
    };
    let (x, y) = tokio::join!(run(a, "one"), run(b.clone(), "two"));
    x.unwrap();
    y.unwrap();
    (b.get(aor).await.unwrap(), calls.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_nodes_lose_nothing() {
    let server = RedisServer::start();
    let a = Bindings::open(&server.url(), &temp_dir("unused"))
        .await
        .unwrap();
    let b = Bindings::open(&server.url(), &temp_dir("unused"))
        .await
        .unwrap();
    let (r, calls) = no_field_lost(a, b, 1000).await;
    assert_eq!(r.fields.len(), 2000);
    eprintln!(
        "redis: 2000 updates, {calls} calls of f ({} retries)",
        calls - 2000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_two_tasks_lose_nothing() {
    let b = embedded().await;
    let (r, _) = no_field_lost(b.clone(), b, 1000).await;
    assert_eq!(r.fields.len(), 2000);
}

/// Redis dies: calls fail fast with Unavailable; it comes back on the same port: the same
/// `Bindings` works again.
/// Log lines written while it is alive (on this thread: the tests run current-thread).
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

#[tokio::test]
async fn redis_outage_fails_fast_and_recovers() {
    let logs = Logs::default();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .finish(),
    );
    let mut server = RedisServer::start();
    let (port, dir) = (server.port, server.dir.clone());
    let b = Bindings::open(&server.url(), &temp_dir("unused"))
        .await
        .unwrap();
    let ch = Change {
        set: pairs(&[("f", "v")]),
        ..Change::default()
    };
    write(&b, "a@h", ch.clone()).await;
    server.kill();
    for i in 0..5 {
        let t = Instant::now();
        let r = b.get("a@h").await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        let r = b
            .update("a@h", |_| Ok::<_, Infallible>((ch.clone(), ())))
            .await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        assert!(r.unwrap_err().is_transient());
        assert!(
            t.elapsed() < Duration::from_millis(1500 * 2),
            "call {i}: {:?}",
            t.elapsed()
        );
    }
    drop(server);
    let server = RedisServer::start_on(port, &dir, &[]);
    // The data died with the server (no persistence); the very next calls work.
    assert_eq!(b.get("a@h").await.unwrap(), Record::default());
    write(&b, "a@h", ch).await;
    assert_eq!(b.get("a@h").await.unwrap(), record(&[("f", "v")]));
    // Ten failed calls, one outage: logged once when it started, once when it ended.
    assert_eq!(logs.count("store unavailable"), 1);
    assert_eq!(logs.count("store recovered"), 1);
    drop(server);
}

/// Each call against a dead Redis is quick, one by one.
#[tokio::test]
async fn redis_down_each_call_under_1_5_s() {
    let mut server = RedisServer::start();
    let b = Bindings::open(&server.url(), &temp_dir("unused"))
        .await
        .unwrap();
    write(
        &b,
        "a@h",
        Change {
            set: pairs(&[("f", "v")]),
            ..Change::default()
        },
    )
    .await;
    server.kill();
    for _ in 0..3 {
        for op in 0..4 {
            let t = Instant::now();
            let err = match op {
                0 => b.get("a@h").await.err(),
                1 => b.scan("*", 10).await.err(),
                2 => b.remove("a@h", None).await.err(),
                _ => b
                    .update("a@h", |_| {
                        Ok::<_, Infallible>((
                            Change {
                                delete_all: true,
                                ..Change::default()
                            },
                            (),
                        ))
                    })
                    .await
                    .err(),
            };
            assert!(
                matches!(err, Some(StoreError::Unavailable(_))),
                "op {op}: {err:?}"
            );
            assert!(
                t.elapsed() < Duration::from_millis(1500),
                "op {op}: {:?}",
                t.elapsed()
            );
        }
    }
}

/// The embedded store keeps registrations across a restart, and honours expiry.
#[tokio::test]
async fn embedded_survives_restart_and_expires() {
    let dir = temp_dir("restart");
    let b = Bindings::open("embedded", &dir).await.unwrap();
    let soon = now() + 2;
    write(
        &b,
        "keep@h",
        Change {
            set: pairs(&[("f", "v")]),
            expire_at: Some(now() + 3600),
            ..Change::default()
        },
    )
    .await;
    write(
        &b,
        "noexp@h",
        Change {
            set: pairs(&[("f", "v")]),
            ..Change::default()
        },
    )
    .await;
    write(
        &b,
        "soon@h",
        Change {
            set: pairs(&[("f", "v")]),
            expire_at: Some(soon),
            ..Change::default()
        },
    )
    .await;
    assert_eq!(b.get("soon@h").await.unwrap(), record(&[("f", "v")]));
    drop(b);

    let b = Bindings::open("embedded", &dir).await.unwrap();
    assert_eq!(b.get("keep@h").await.unwrap(), record(&[("f", "v")]));
    assert_eq!(b.get("noexp@h").await.unwrap(), record(&[("f", "v")]));
    while now() <= soon {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.get("soon@h").await.unwrap(), Record::default());
    let mut all = b.scan("*", 10).await.unwrap();
    all.sort();
    assert_eq!(all, ["keep@h", "noexp@h"]);
    // An update of the expired AOR starts from empty.
    let seen = write(
        &b,
        "soon@h",
        Change {
            set: pairs(&[("g", "w")]),
            ..Change::default()
        },
    )
    .await;
    assert_eq!(seen, Record::default());
    assert_eq!(b.get("soon@h").await.unwrap(), record(&[("g", "w")]));
}
