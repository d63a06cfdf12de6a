//! The syslog intake's parser and TCP framer (`stg_guard::syslog`) on arbitrary bytes: the
//! first byte splits the rest into reads for the framer; every frame, and the whole input as
//! one datagram, goes through `parse`. No panic, no frame over the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stg_guard::syslog::{parse, Framer, MAX_MESSAGE};

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut framer = Framer::default();
    for part in rest.chunks(chunk) {
        framer.push(part);
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_MESSAGE + 1);
                    let _ = parse(&frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
