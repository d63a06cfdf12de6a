//! The registrar on hostile input: a Flexisip record value (what another node or an
//! operator's `redis-cli` may have written) and a REGISTER (what a device sends) applied to
//! a record. Nothing may panic; what is written must read back.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use stg_registrar::{apply, live_bindings, parse_register, Binding, Origin, Settings};
use stg_sip_msg::Message;

fuzz_target!(|data: &[u8]| {
    stg_registrar::fuzz_decode(data);
    let Ok(m) = Message::parse(bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    let s = Settings::default();
    let Ok(reg) = parse_register(&m, &s) else {
        return;
    };
    let path = ["<sip:tok@10.0.0.1:5060;transport=tcp;lr;ob>".to_owned()];
    let origin = Origin {
        conn_id: "0123abcd",
        path: &path,
        now: 1_700_000_000,
    };
    let mut n = 0u64;
    let mut rng = || {
        n += 1;
        n
    };
    let Ok(applied) = apply(&BTreeMap::new(), &reg, &origin, None, &s, &mut rng) else {
        return;
    };
    let record: BTreeMap<String, String> = applied.set.iter().cloned().collect();
    for (k, v) in &record {
        let b = Binding::decode(k, v).expect("a value the registrar wrote decodes");
        assert_eq!(&b.encode(), v, "and re-encodes identically");
    }
    let (_, bad) = live_bindings(&record, 1_700_000_000);
    assert_eq!(bad, 0);
});
