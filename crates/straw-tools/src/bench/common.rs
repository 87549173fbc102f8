//! Helpers shared by the benches that run a real `straw server` child
//! process: keys in a temp dir, free ports, the server's RSS from /proc.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use straw::link::keys::{self, Keypair};
use tokio::net::TcpStream;

/// A loopback address nothing listens on (yet).
pub fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A fresh keypair written as `dir/who.key` (mode 0600) and `dir/who.key.pub`.
pub fn write_keys(dir: &Path, who: &str) -> Result<Keypair> {
    let kp = keys::generate();
    let key = dir.join(format!("{who}.key"));
    std::fs::write(&key, keys::encode_key(&kp.private))?;
    #[cfg(unix)]
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::write(
        dir.join(format!("{who}.key.pub")),
        keys::encode_key(&kp.public),
    )?;
    Ok(kp)
}

/// Resident set size of `pid` from /proc: (current, peak) in bytes.
pub fn rss(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let l = s
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))?;
        let kb: u64 = l
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("bad {name} line"))?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Waits (up to 5 s) until something accepts on `addr`.
pub async fn wait_for_port(addr: SocketAddr) -> Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing listens on {addr}")
}

/// Raises this process's open-files limit (Unix) and fails unless `need`
/// files fit, naming `what` needs them.
pub fn fd_room(need: u64, what: &str) -> Result<()> {
    #[cfg(unix)]
    {
        let ours = straw::gate::raise_fd_limit()?;
        if ours < need {
            anyhow::bail!("this process may open only {ours} files, fewer than {what} need");
        }
    }
    #[cfg(not(unix))]
    let _ = (need, what);
    Ok(())
}
