//! The client's local control socket: `straw status` asks, the client
//! answers with a [`Snapshot`] as one line of JSON.
//!
//! A Unix socket in the client's state dir (the dir 0700, the socket 0600),
//! never a network listener: only the user who runs the client may ask.
//! One request line (`status`, `hold list`, `hold release ID`), one answer
//! line, then the connection is closed. A peer gets [`REQUEST_MAX`] bytes and [`PEER_TIME`] to ask and
//! be answered; at most [`CONNECTIONS_MAX`] are served at once, the rest are
//! closed unanswered. Windows has no such socket here yet: the client runs
//! without it and `straw status` says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::status::{Board, Snapshot};

/// Longest request line.
pub const REQUEST_MAX: usize = 256;
/// How long a peer may take to send its request and read the answer.
pub const PEER_TIME: Duration = Duration::from_secs(5);
/// Control connections served at once.
pub const CONNECTIONS_MAX: usize = 4;
/// Longest answer `straw status` reads (a snapshot lists at most
/// [`crate::status::STREAMS_MAX`] connections and 20 transfers).
pub const ANSWER_MAX: u64 = 4 * 1024 * 1024;

/// What one request line asks; the answer for anything else is an error
/// object (`{"error": ...}`).
#[cfg(unix)]
fn answer(board: &Board, request: &[u8]) -> Vec<u8> {
    let req = String::from_utf8_lossy(request);
    let mut out = match req.trim() {
        "status" | "" => serde_json::to_vec(&board.snapshot(crate::tunnel::now()))
            .unwrap_or_else(|e| error_json(&format!("cannot encode the snapshot: {e}"))),
        "hold list" => match board.holds() {
            Some(h) => {
                serde_json::to_vec(&serde_json::json!({ "held": h.list() })).unwrap_or_default()
            }
            None => error_json(HOLD_OFF),
        },
        r if r.starts_with("hold release ") => {
            let id = r["hold release ".len()..].trim();
            match board.holds().map(|h| h.release(id)) {
                Some(Ok(e)) => {
                    serde_json::to_vec(&serde_json::json!({ "released": e })).unwrap_or_default()
                }
                Some(Err(why)) => error_json(&why),
                None => error_json(HOLD_OFF),
            }
        }
        other => {
            let shown: String = other.chars().take(40).collect();
            error_json(&format!(
                "unknown request {shown:?}; ask \"status\", \"hold list\" or \"hold release ID\""
            ))
        }
    };
    out.push(b'\n');
    out
}

/// The answer to `hold ...` when holding is off.
#[cfg(unix)]
const HOLD_OFF: &str =
    "this client holds nothing ashore ([pop3] hold_over_bytes is not set in its config)";

#[cfg(unix)]
fn error_json(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": msg })).unwrap_or_default()
}

/// The socket file, removed when dropped (the client's exit).
#[derive(Debug)]
pub struct Listening {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` for `straw status`. A socket left by a client that
/// died is replaced; one that answers means another client runs: error.
#[cfg(unix)]
pub fn serve(path: &Path, board: Arc<Board>) -> Result<Listening> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{}: another straw client answers there (one client per state dir, or set [control] socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    // The dir may be shared (a configured path): the socket itself is ours.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))?;
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            // Over the limit: closed at once, nothing queued.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let board = board.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(PEER_TIME, serve_one(sock, &board)).await;
                drop(slot);
            });
        }
    });
    Ok(Listening {
        path: path.to_owned(),
        task,
    })
}

#[cfg(not(unix))]
pub fn serve(_path: &Path, _board: Arc<Board>) -> Result<Listening> {
    bail!("{NOT_HERE}")
}

/// What Windows users are told.
pub const NOT_HERE: &str =
    "the control socket (straw status) is not available on this platform yet";

#[cfg(unix)]
async fn serve_one(mut sock: tokio::net::UnixStream, board: &Board) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
        if let Some(end) = req.iter().position(|&b| b == b'\n') {
            req.truncate(end);
            break;
        }
        if req.len() > REQUEST_MAX {
            sock.write_all(&answer_error("request line too long"))
                .await?;
            return Ok(());
        }
    }
    sock.write_all(&answer(board, &req)).await?;
    sock.shutdown().await
}

#[cfg(unix)]
fn answer_error(msg: &str) -> Vec<u8> {
    let mut v = error_json(msg);
    v.push(b'\n');
    v
}

/// Asks the client listening on `path` for its snapshot (`straw status`).
/// Errors say in one line what is wrong (no client, not straw, ...).
#[cfg(unix)]
pub fn ask(path: &Path) -> Result<Snapshot> {
    let v = ask_json(path, "status")?;
    serde_json::from_value(v).context("not a status snapshot this straw understands")
}

#[cfg(not(unix))]
pub fn ask(_path: &Path) -> Result<Snapshot> {
    bail!("{NOT_HERE}")
}

/// A snapshot, or the error object the client sent instead.
pub fn parse_answer(line: &[u8]) -> Result<Snapshot> {
    serde_json::from_value(answer_value(line)?)
        .context("not a status snapshot this straw understands")
}

/// One answer line's JSON, or the error object the client sent instead.
fn answer_value(line: &[u8]) -> Result<serde_json::Value> {
    if line.is_empty() {
        bail!("empty answer (the client closed the connection)");
    }
    let v: serde_json::Value = serde_json::from_slice(line).context("not JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("the client says: {e}");
    }
    Ok(v)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::tunnel::TunnelStats;
    use std::os::unix::fs::PermissionsExt;

    fn board() -> Arc<Board> {
        Arc::new(Board::new(
            "sat:7000".into(),
            1.5,
            300.0,
            Arc::new(TunnelStats::default()),
            std::time::Instant::now(),
        ))
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("straw-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn answers_status_replaces_a_stale_socket_and_cleans_up() {
        let d = dir("serve");
        let path = d.join("state").join("control.sock");
        // A stale socket file from a client that died.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let l = serve(&path, board()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let p = path.clone();
        let snap = tokio::task::spawn_blocking(move || ask(&p)).await.unwrap();
        assert_eq!(snap.unwrap().server, "sat:7000");
        // A second client on the same socket is refused.
        assert!(serve(&path, board()).is_err());
        drop(l);
        assert!(!path.exists(), "removed on exit");
        let p = path.clone();
        let e = tokio::task::spawn_blocking(move || ask(&p)).await.unwrap();
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("no straw client is running"),
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn hold_requests_list_and_release_and_say_when_holding_is_off() {
        let b = board();
        let off = String::from_utf8(answer(&b, b"hold list")).unwrap();
        assert!(off.contains("hold_over_bytes is not set"), "{off}");
        let d = dir("hold");
        let f = crate::holds::HoldFile::open(&d.join("holds.json")).unwrap();
        let s = f.for_service("pop3");
        s.stub_delivered("bob", "u1", &Default::default());
        let id = s.id("bob", "u1");
        b.set_holds(f);
        let list: serde_json::Value = serde_json::from_slice(&answer(&b, b"hold list")).unwrap();
        assert_eq!(list["held"][0]["id"], id.as_str());
        assert_eq!(list["held"][0]["state"], "held");
        let snap = b.snapshot(crate::tunnel::now());
        assert_eq!(snap.held.len(), 1);
        assert!(crate::status::render(&snap).contains(&format!("{id}  held")));
        let rel: serde_json::Value =
            serde_json::from_slice(&answer(&b, format!("hold release {id}").as_bytes())).unwrap();
        assert_eq!(rel["released"]["state"], "released");
        assert_eq!(s.released("bob"), vec!["u1".to_owned()]);
        let bad = String::from_utf8(answer(&b, b"hold release zzz")).unwrap();
        assert!(bad.contains("no held message"), "{bad}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn bad_requests_get_an_error_and_long_ones_are_cut() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let d = dir("bad");
        let path = d.join("c.sock");
        let _l = serve(&path, board()).unwrap();
        for req in [b"stats\n".to_vec(), vec![b'x'; 10_000]] {
            let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
            let _ = s.write_all(&req).await;
            let mut got = Vec::new();
            // The rest of a long request is unread: the close may come as
            // a reset after the answer.
            let _ = s.read_to_end(&mut got).await;
            let e = parse_answer(&got).unwrap_err().to_string();
            assert!(e.contains("the client says"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// Where `straw status` looks: `--socket`, else the `[control] socket` of
/// `--config`, else the default in the user's state dir.
pub fn socket_path(config: Option<&Path>, socket: Option<&Path>) -> Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s.to_owned());
    }
    let control = match config {
        Some(c) => crate::config::ClientConfig::load(c)?.control,
        None => crate::config::ClientControl::default(),
    };
    control
        .socket()
        .context("no HOME or XDG_STATE_HOME to find the control socket in; give --socket")
}

/// `straw status`: one screen (or JSON), once or every `watch` seconds.
pub fn status_cli(
    config: Option<&Path>,
    socket: Option<&Path>,
    watch: Option<f64>,
    json: bool,
) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let path = socket_path(config, socket)?;
    let every = match watch {
        None => None,
        Some(s) => Some(
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_secs(86_400))
                .with_context(|| format!("--watch {s}: expected 0.1 to 86400 seconds"))?,
        ),
    };
    let tty = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let text = match ask(&path) {
            Ok(s) if json => serde_json::to_string(&s)? + "\n",
            Ok(s) => crate::status::render(&s),
            // No client at all: say so and fail. Once watching, a client
            // that restarts is worth waiting for.
            Err(e) if first || every.is_none() => return Err(e),
            Err(e) => format!("{e:#}\n"),
        };
        first = false;
        let mut out = std::io::stdout().lock();
        if tty && every.is_some() && !json {
            // Home and clear: redraw in place.
            out.write_all(b"\x1b[H\x1b[2J")?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        drop(out);
        match every {
            Some(d) => std::thread::sleep(d),
            None => return Ok(()),
        }
    }
}

/// What `straw hold` asks the running client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldRequest {
    List,
    Release(String),
}

/// `straw hold list` / `straw hold release ID`.
pub fn hold_cli(
    config: Option<&Path>,
    socket: Option<&Path>,
    req: &HoldRequest,
    json: bool,
) -> Result<()> {
    let path = socket_path(config, socket)?;
    let line = match req {
        HoldRequest::List => "hold list".to_owned(),
        HoldRequest::Release(id) => format!("hold release {id}"),
    };
    let v = ask_json(&path, &line)?;
    if json {
        println!("{v}");
        return Ok(());
    }
    match req {
        HoldRequest::List => {
            let held: Vec<crate::holds::HeldEntry> =
                serde_json::from_value(v.get("held").cloned().unwrap_or_default())
                    .context("not a hold list this straw understands")?;
            if held.is_empty() {
                println!("no messages held ashore");
            }
            for h in held {
                let state = match h.state {
                    crate::holds::HoldState::Held => "held",
                    crate::holds::HoldState::Released => {
                        "released (comes with the next mail check)"
                    }
                    crate::holds::HoldState::Fetched => "fetched",
                };
                println!(
                    "{}  {}  {} bytes  {}\n          from {}  ({}, {})",
                    h.id, state, h.size, h.subject, h.from, h.service, h.date
                );
            }
        }
        HoldRequest::Release(_) => {
            let e: crate::holds::HeldEntry =
                serde_json::from_value(v.get("released").cloned().unwrap_or_default())
                    .context("not an answer this straw understands")?;
            println!(
                "released {} ({:?}, {} bytes): it comes as one more message the next time your mail program checks for mail",
                e.id, e.subject, e.size
            );
        }
    }
    Ok(())
}

/// Sends one request line; the answer's JSON, or the client's error.
#[cfg(unix)]
fn ask_json(path: &Path, request: &str) -> Result<serde_json::Value> {
    use std::io::{BufRead, Read, Write};
    let mut sock = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no socket there".to_owned(),
            std::io::ErrorKind::ConnectionRefused => "a stale socket, nobody listening".to_owned(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("no straw client is running at {} ({why})", path.display())
    })?;
    sock.set_read_timeout(Some(PEER_TIME))?;
    sock.set_write_timeout(Some(PEER_TIME))?;
    sock.write_all(format!("{request}\n").as_bytes())?;
    let mut line = Vec::new();
    std::io::BufReader::new((&sock).take(ANSWER_MAX))
        .read_until(b'\n', &mut line)
        .with_context(|| format!("reading the answer from {}", path.display()))?;
    answer_value(&line).with_context(|| format!("the answer from {}", path.display()))
}

#[cfg(not(unix))]
fn ask_json(_path: &Path, _request: &str) -> Result<serde_json::Value> {
    bail!("{NOT_HERE}")
}
