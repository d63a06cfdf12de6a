//! The log tail's state machine (`stg_guard::tail::Tail`) driven by arbitrary operations on a
//! file in memory: appends, renames (a new inode at the path), truncations, restarts from
//! the saved position, time steps. No panic, no line over the cap, and every read the tail
//! asks for lies within the file.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use stg_guard::tail::{FileId, Stat, Step, Tail, MAX_LINE};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut ino = 1u64;
    let mut path: Option<(u64, Vec<u8>)> = Some((ino, Vec::new()));
    let mut open: Option<(u64, Vec<u8>)> = None;
    let mut tail = Tail::new(None, data.first().is_some_and(|b| b & 1 == 1));
    let stat = |f: &Option<(u64, Vec<u8>)>| {
        f.as_ref().map(|(i, c)| Stat {
            id: FileId { dev: 1, ino: *i },
            len: c.len() as u64,
        })
    };
    let check = |l: &[u8]| assert!(l.len() <= MAX_LINE);
    for op in data.chunks(3) {
        let (kind, arg) = (op[0] % 6, op.get(1).copied().unwrap_or(0));
        match kind {
            0 | 1 => {
                // Append `arg` bytes, some of them newlines.
                if let Some((i, c)) = &mut path {
                    for k in 0..usize::from(arg) * 40 {
                        c.push(if k % (usize::from(op.get(2).copied().unwrap_or(7)) + 1) == 0 { b'\n' } else { b'x' });
                    }
                    if let Some((oi, o)) = &mut open {
                        if oi == i {
                            *o = c.clone();
                        }
                    }
                }
            }
            2 => {
                ino += 1;
                path = Some((ino, Vec::new()));
            }
            3 => {
                if let Some((i, c)) = &mut path {
                    c.truncate(usize::from(arg));
                    if let Some((oi, o)) = &mut open {
                        if oi == i {
                            *o = c.clone();
                        }
                    }
                }
            }
            4 => {
                tail = Tail::new(tail.position(), arg & 1 == 1);
                open = None;
            }
            _ => now += Duration::from_millis(u64::from(arg) * 10),
        }
        for _ in 0..10_000 {
            match tail.poll(now, stat(&path), stat(&open), check) {
                Step::Wait => break,
                Step::Open => match &path {
                    Some(p) => {
                        open = Some(p.clone());
                        tail.opened(stat(&open).unwrap());
                    }
                    None => {
                        tail.open_failed();
                        break;
                    }
                },
                Step::Head { max } => {
                    let c = &open.as_ref().unwrap().1;
                    tail.head(&c[..c.len().min(max)]);
                }
                Step::Read { offset, max } => {
                    let c = &open.as_ref().unwrap().1;
                    let o = usize::try_from(offset).unwrap();
                    assert!(o < c.len() && max > 0, "read past the end");
                    tail.read(&c[o..(o + max).min(c.len())], check);
                }
            }
        }
    }
});
