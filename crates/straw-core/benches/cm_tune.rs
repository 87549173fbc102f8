//! CM tuning benchmark: a measurement loop for experiments, not a test (it
//! asserts nothing; `cargo test` never runs it).
//!
//! ```sh
//! CM_TUNE=dir1:dir2 cargo bench -p straw-core --features tune --bench cm_tune
//! ```
//!
//! Codes every `*.txt` of each folder in name order, per message, in bulk
//! units of `CM_UNIT` bytes (3000), with the server→client bulk context and
//! the shipped priming, and prints the coded bytes per folder and in total.
//! `CM_TLOG` / `CM_MLOG` change the context sizes, `CM_PRIME=file` the priming
//! text, `CM_STATIC=file` the static match text; with the `tune` feature,
//! `CM_K<i>` overrides the model's constants (`knob` in `codec/cm`).
//! docs/codec.md records what the loop measured.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use straw_core::codec::{
    CmParams, CodecParams, Direction, Lane, PRIMING_MAIL_V1, RecordEncoder, priming_text,
    register_priming_text, register_priming_with_static, shared_static_bytes,
};

fn env<T: FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn messages(dir: &str) -> Vec<PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("folder entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    names.sort();
    names
}

/// FNV-1a of the coded bytes: tells whether a refactor changed the model's
/// output at all, not just its size.
fn fnv(data: &[u8]) -> u32 {
    data.iter().fold(0x811C_9DC5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn main() {
    let Ok(dirs) = std::env::var("CM_TUNE") else {
        eprintln!(
            "cm_tune: set CM_TUNE=dir1:dir2 (folders of *.txt messages), \
             see the top of crates/straw-core/benches/cm_tune.rs"
        );
        std::process::exit(2);
    };
    let unit: usize = env("CM_UNIT").unwrap_or(3000);
    let mut p = CmParams::slow_link(Direction::ServerToClient, Lane::Bulk);
    if let Some(v) = env("CM_TLOG") {
        p.table_log = v;
    }
    if let Some(v) = env("CM_MLOG") {
        p.match_log = v;
    }
    if let Ok(f) = std::env::var("CM_PRIME") {
        p.priming = Some(register_priming_text(read(&f)));
    }
    if let Ok(f) = std::env::var("CM_STATIC") {
        let prime = priming_text(p.priming.unwrap_or(PRIMING_MAIL_V1)).expect("priming text");
        let t0 = Instant::now();
        p.priming = Some(register_priming_with_static(prime, read(&f)));
        println!(
            "static index {:?} shared {}",
            t0.elapsed(),
            shared_static_bytes()
        );
    }
    println!("params {p:?} memory {}", p.memory_bytes());
    let t0 = Instant::now();
    p.warm_up().expect("cm parameters");
    println!(
        "prime {:?} (shared static text {} B)",
        t0.elapsed(),
        shared_static_bytes()
    );
    let bulk = CodecParams {
        cm: Some(p),
        ..CodecParams::default()
    };
    let mut total = 0;
    for dir in dirs.split(':') {
        let names = messages(dir);
        // A fresh context per folder, from the primed model.
        let mut enc = RecordEncoder::with_bulk(&CodecParams::default(), &bulk);
        let (mut raw, mut out) = (0, Vec::new());
        let t = Instant::now();
        for n in &names {
            let data = std::fs::read(n).unwrap_or_else(|e| panic!("{}: {e}", n.display()));
            raw += data.len();
            for c in data.chunks(unit) {
                enc.encode_bulk_unit(c, &mut out).expect("cm unit");
            }
        }
        println!(
            "{dir}: {} files raw {raw} coded {} ({:.3} MB/s, fnv {:08x})",
            names.len(),
            out.len(),
            raw as f64 / 1e6 / t.elapsed().as_secs_f64(),
            fnv(&out)
        );
        total += out.len();
    }
    println!("TOTAL {total}");
}
