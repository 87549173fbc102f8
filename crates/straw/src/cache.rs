//! The client's per-service cache of replies that commit nothing (greetings,
//! capability lists): kept on disk across restarts, and warmed by a short
//! connection of straw's own when the link comes up with a service's cache
//! still empty.
//! The warm-up's script is straw-proto's (`pop3::WarmUp` and the like).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use straw_proto::{Cache, Dialogue, imap, pop3, smtp};
use tokio::io::{AsyncReadExt, DuplexStream};
use tracing::{info, warn};

use crate::config::Protocol;
use crate::dialogue::{Stop, drive};
use crate::tunnel::SharedCache;

const MAGIC: &[u8] = b"straw-cache 1\n";
/// A cache file bigger than this is not ours (a few greetings fit in 4 KiB).
const MAX_FILE: u64 = 256 * 1024;
/// How often a changed cache is written back.
const SAVE_EVERY: Duration = Duration::from_secs(2);
/// A warm-up that takes longer than this on the link is abandoned.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(300);

/// The cache as a file: `MAGIC`, then per entry `key len\n` + value + `\n`.
pub fn encode(cache: &Cache) -> Vec<u8> {
    let mut keys: Vec<&String> = cache.keys().collect();
    keys.sort();
    let mut out = MAGIC.to_vec();
    for k in keys {
        let v = &cache[k];
        out.extend_from_slice(format!("{k} {}\n", v.len()).as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

pub fn decode(mut data: &[u8]) -> Result<Cache> {
    data = data
        .strip_prefix(MAGIC)
        .ok_or_else(|| anyhow!("not a straw cache file"))?;
    let mut cache = Cache::new();
    while !data.is_empty() {
        let nl = data
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("truncated entry header"))?;
        let head = std::str::from_utf8(&data[..nl]).map_err(|_| anyhow!("bad entry header"))?;
        let (key, len) = head
            .rsplit_once(' ')
            .ok_or_else(|| anyhow!("bad entry header {head:?}"))?;
        let len: usize = len
            .parse()
            .map_err(|_| anyhow!("bad entry length {len:?}"))?;
        let rest = &data[nl + 1..];
        // `<=`, not `< len + 1`: a length of usize::MAX must not wrap.
        if key.is_empty() || rest.len() <= len || rest[len] != b'\n' {
            bail!("truncated entry {key:?}");
        }
        cache.insert(key.to_owned(), rest[..len].to_vec());
        data = &rest[len + 1..];
    }
    Ok(cache)
}

/// The file of `service` in `dir` (service names are the config's; anything
/// unusual in a file name is hex-escaped).
pub fn file_of(dir: &Path, service: &str) -> PathBuf {
    let mut name = String::new();
    for b in service.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02x}"));
        }
    }
    dir.join(format!("{name}.cache"))
}

/// Reads a service's cache; a missing file is an empty cache, a damaged one
/// is dropped with a log line (it only costs the replies it held).
pub fn load(dir: &Path, service: &str) -> Cache {
    let path = file_of(dir, service);
    let read = || -> Result<Option<Cache>> {
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
            Ok(m) if m.len() > MAX_FILE => bail!("{} bytes, too big", m.len()),
            Ok(_) => {}
        }
        Ok(Some(decode(&std::fs::read(&path)?)?))
    };
    match read() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            warn!(
                "cache file {}: {e:#}; starting with an empty cache",
                path.display()
            );
            Cache::new()
        }
    }
}

fn save(path: &Path, cache: &Cache) -> Result<()> {
    let dir = path.parent().ok_or_else(|| anyhow!("no parent dir"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("cache.tmp");
    std::fs::write(&tmp, encode(cache))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Writes `cache` to its file whenever it changed, until the client exits.
pub async fn keep_saved(dir: PathBuf, service: String, cache: SharedCache) {
    let path = file_of(&dir, &service);
    let mut saved = cache.lock().expect("cache lock").clone();
    loop {
        tokio::time::sleep(SAVE_EVERY).await;
        let now = cache.lock().expect("cache lock").clone();
        if now == saved {
            continue;
        }
        match save(&path, &now) {
            Ok(()) => saved = now,
            Err(e) => {
                warn!(
                    "cache file {}: {e:#}; not kept across restarts",
                    path.display()
                );
                return;
            }
        }
    }
}

/// Does a connection of `protocol` learn something `cache` lacks?
pub fn needs_warm_up(protocol: Protocol, cache: &Cache) -> bool {
    let keys: &[&str] = match protocol {
        Protocol::Pop3 => &[pop3::GREETING_KEY],
        Protocol::Imap => &[imap::GREETING_KEY, imap::CAPABILITY_KEY],
        Protocol::Smtp => &[smtp::GREETING_KEY, smtp::EHLO_KEY],
        Protocol::Tcp | Protocol::Http => &[],
    };
    keys.iter().any(|k| !cache.contains_key(*k))
}

/// Plays the program's part of a warm-up connection on `io`, whose other end
/// is attached to a stream with the service's client accelerator: that
/// accelerator caches what it sees, exactly as for a mail program.
pub async fn warm_up(protocol: Protocol, service: String, io: DuplexStream) {
    match tokio::time::timeout(WARM_UP_TIMEOUT, dialogue(protocol, io)).await {
        Ok(Ok(())) => info!("service {service}: cache warmed"),
        Ok(Err(e)) => info!("service {service}: cache warm-up failed: {e:#}"),
        Err(_) => info!("service {service}: cache warm-up timed out"),
    }
}

async fn dialogue(protocol: Protocol, mut io: DuplexStream) -> Result<()> {
    let mut d: Box<dyn Dialogue + Send> = match protocol {
        Protocol::Pop3 => Box::new(pop3::WarmUp::new()),
        Protocol::Imap => Box::new(imap::WarmUp::new()),
        Protocol::Smtp => Box::new(smtp::WarmUp::new()),
        Protocol::Tcp | Protocol::Http => return Ok(()),
    };
    let first = d.step(&[])?;
    if drive(&mut *d, &mut io, first).await? == Stop::StartTls {
        bail!("a warm-up asked for TLS");
    }
    // Until the goodbye (or the close) arrives: the accelerator caches
    // nothing from it, but sees it through.
    let mut sink = [0u8; 1024];
    while io.read(&mut sink).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_file_round_trips_any_bytes() {
        let mut c = Cache::new();
        c.insert("smtp.greeting".into(), b"220 x ESMTP\r\n".to_vec());
        c.insert("imap.capability".into(), vec![0, 10, 13, 255, b' ', b'\n']);
        c.insert("pop3.greeting".into(), Vec::new());
        assert_eq!(decode(&encode(&c)).unwrap(), c);
        assert_eq!(decode(&encode(&Cache::new())).unwrap(), Cache::new());
    }

    #[test]
    fn damaged_cache_files_are_errors_not_panics() {
        let mut c = Cache::new();
        c.insert("k".into(), b"value\r\n".to_vec());
        let good = encode(&c);
        for cut in 0..good.len() {
            let _ = decode(&good[..cut]); // must not panic
            if cut > MAGIC.len() {
                assert!(decode(&good[..cut]).is_err(), "cut at {cut} accepted");
            }
        }
        assert!(decode(b"straw-cache 1\nk 99999999999999999999\n").is_err());
        assert!(decode(b"straw-cache 1\nk 3\nabcX").is_err());
        // The fuzzer's find: a length of usize::MAX (len + 1 wrapped to 0).
        assert!(decode(b"straw-cache 1\nk 18446744073709551615\n+OK\r\n\n").is_err());
        assert!(decode(b"something else").is_err());
    }

    #[test]
    fn load_survives_missing_and_damaged_files_and_save_round_trips() {
        let dir = std::env::temp_dir().join(format!("straw-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load(&dir, "imap").is_empty());
        let mut c = Cache::new();
        c.insert(imap::GREETING_KEY.into(), b"* OK ready".to_vec());
        save(&file_of(&dir, "imap"), &c).unwrap();
        assert_eq!(load(&dir, "imap"), c);
        std::fs::write(file_of(&dir, "imap"), b"straw-cache 1\nbroken").unwrap();
        assert!(load(&dir, "imap").is_empty());
        assert_eq!(
            file_of(&dir, "a/../b c"),
            dir.join("a%2f%2e%2e%2fb%20c.cache")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn warm_up_is_needed_until_every_key_is_cached() {
        let mut c = Cache::new();
        assert!(needs_warm_up(Protocol::Imap, &c));
        c.insert(imap::GREETING_KEY.into(), b"* OK".to_vec());
        assert!(needs_warm_up(Protocol::Imap, &c));
        c.insert(
            imap::CAPABILITY_KEY.into(),
            b"* CAPABILITY IMAP4rev1".to_vec(),
        );
        assert!(!needs_warm_up(Protocol::Imap, &c));
        assert!(needs_warm_up(Protocol::Smtp, &c));
        assert!(!needs_warm_up(Protocol::Tcp, &c));
    }
}
