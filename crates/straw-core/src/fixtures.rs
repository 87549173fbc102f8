//! Test inputs from outside the crate: the mail corpus and a system text.
//!
//! A test that needs one of them fails loudly, naming what to do, when it is
//! missing: it never passes because there was nothing to check.

use std::path::{Path, PathBuf};

/// The sets `scripts/corpus` fetches; a corpus folder without all of them is
/// an interrupted fetch.
const CORPUS_SETS: [&str; 5] = ["easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"];

/// The SpamAssassin corpus's data folder, where `scripts/corpus` puts it:
/// `$STRAW_CORPUS` if set, else `$STRAW_STATE/corpus/package/data`, else
/// `.state/corpus/package/data` at the repository root (the scripts' default
/// `STRAW_STATE`). Panics, saying to run `scripts/corpus`, if it is absent.
pub(crate) fn corpus_dir() -> PathBuf {
    let dir = match (
        std::env::var_os("STRAW_CORPUS"),
        std::env::var_os("STRAW_STATE"),
    ) {
        (Some(corpus), _) => PathBuf::from(corpus),
        (None, Some(state)) => Path::new(&state).join("corpus/package/data"),
        (None, None) => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.state/corpus/package/data")
        }
    };
    let missing: Vec<_> = CORPUS_SETS
        .iter()
        .filter(|set| !dir.join(set).is_dir())
        .collect();
    assert!(
        missing.is_empty(),
        "mail corpus missing at {} (sets {missing:?}): run scripts/corpus \
         (or set STRAW_CORPUS to its data folder)",
        dir.display()
    );
    dir
}

/// The `*.txt` messages of a corpus set, in name order (never empty).
pub(crate) fn corpus_messages(set: &str) -> Vec<PathBuf> {
    let dir = corpus_dir().join(set);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.txt in {}", dir.display());
    files
}

/// Where Debian's `base-files` package keeps the GPL version 3.
const GPL3_PATH: &str = "/usr/share/common-licenses/GPL-3";

/// The text of the GPL version 3: 35 KB of English prose that every Debian
/// system has. Panics if it is missing.
pub(crate) fn gpl3() -> Vec<u8> {
    std::fs::read(GPL3_PATH).unwrap_or_else(|e| {
        panic!("{GPL3_PATH}: {e} (Debian package base-files ships it; these tests need it)")
    })
}

/// Bytes `xz -9e` makes of `data`: the yardstick of the codec's size bars.
/// Panics if `xz` (Debian package xz-utils) is not there to run.
pub(crate) fn xz_9e_size(data: &[u8]) -> u64 {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut xz = Command::new("xz")
        .args(["-9e", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("xz: {e} (Debian package xz-utils; these tests need it)"));
    // xz writes while it reads: feed it from a thread so neither pipe fills up.
    let mut stdin = xz.stdin.take().expect("piped");
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = xz.wait_with_output().expect("xz output");
    feeder.join().expect("feeder").expect("xz stdin");
    assert!(out.status.success(), "xz -9e failed: {}", out.status);
    out.stdout.len() as u64
}

/// `len` incompressible bytes from a xorshift64 generator started at `seed`.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
