//! `straw linksim`: the emulator as a standalone TCP relay.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tracing::info;

use super::{
    DEFAULT_MSS, DEFAULT_OVERHEAD, Faults, Link, LinkParams, ServeOptions, bind_listener,
    serve_with,
};

/// Relay TCP connections through an emulated slow, high-latency link.
///
/// Prints `linksim up bytes=N segments=N link_secs=F down ...` on stdout on
/// SIGUSR1 and when stopped (SIGINT/SIGTERM).
#[derive(clap::Args, Debug, Clone)]
pub struct LinksimArgs {
    /// Address to accept connections on (host:port).
    #[arg(long)]
    pub listen: String,
    /// Address to relay each connection to (host:port).
    #[arg(long)]
    pub to: String,
    /// Link rate in bits per second, each direction.
    #[arg(long)]
    pub rate: u64,
    /// One-way delay in milliseconds.
    #[arg(long)]
    pub delay: u64,
    /// Largest segment payload in bytes.
    #[arg(long, default_value_t = DEFAULT_MSS)]
    pub mss: usize,
    /// Header bytes charged per segment.
    #[arg(long, default_value_t = DEFAULT_OVERHEAD)]
    pub overhead: usize,
    /// Cut each connection once N bytes (both directions) have passed.
    #[arg(long, value_name = "N")]
    pub cut_after_bytes: Option<u64>,
    /// Cut all live connections every SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub cut_every: Option<f64>,
    /// After a cut, refuse new connections for D seconds.
    #[arg(long, value_name = "D")]
    pub refuse_secs: Option<f64>,
    /// Don't charge the TCP handshake's round trips to new connections.
    #[arg(long)]
    pub no_handshake: bool,
}

impl LinksimArgs {
    /// The link parameters these arguments describe.
    pub fn params(&self) -> anyhow::Result<LinkParams> {
        let params = LinkParams {
            rate_bps: self.rate,
            delay: Duration::from_millis(self.delay),
            mss: self.mss,
            overhead: self.overhead,
            faults: Faults {
                cut_after_bytes: self.cut_after_bytes,
                cut_every: self.cut_every.map(|s| secs("--cut-every", s)).transpose()?,
                refuse_for: self
                    .refuse_secs
                    .map(|s| secs("--refuse-secs", s))
                    .transpose()?,
            },
        };
        params.validate().map_err(|e| anyhow!("linksim: {e}"))?;
        Ok(params)
    }
}

fn secs(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow!("{flag}: {s} is not a valid number of seconds"))
}

async fn resolve(flag: &str, addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("{flag} {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{flag} {addr}: no address"))
}

fn print_stats(link: &Link) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", link.stats().snapshot())?;
    out.flush()?;
    Ok(())
}

/// Runs `straw linksim` until SIGINT/SIGTERM, printing the stats line on
/// SIGUSR1 and at the end.
pub async fn run_cli(args: LinksimArgs) -> anyhow::Result<()> {
    let params = args.params()?;
    let listen = resolve("--listen", &args.listen).await?;
    let to = resolve("--to", &args.to).await?;
    let listener = bind_listener(listen).with_context(|| format!("listening on {listen}"))?;
    let local = listener.local_addr()?;
    info!(
        listen = %local, %to, rate = params.rate_bps, delay_ms = args.delay,
        mss = params.mss, overhead = params.overhead, faults = ?params.faults,
        "linksim: ready"
    );
    let link = Link::new(params);
    let mut signals = Signals::new()?;
    let opts = ServeOptions {
        emulate_handshake: !args.no_handshake,
    };
    let serving = serve_with(listener, to, link.clone(), opts);
    tokio::pin!(serving);
    let result = loop {
        tokio::select! {
            r = &mut serving => break r.context("linksim: accept loop failed"),
            s = signals.recv() => match s {
                Signal::Stats => print_stats(&link)?,
                Signal::Stop => break Ok(()),
            },
        }
    };
    print_stats(&link)?;
    if result.is_ok() {
        info!("linksim: stopped");
    }
    result
}

enum Signal {
    #[cfg_attr(not(unix), allow(dead_code))]
    Stats,
    Stop,
}

/// SIGUSR1 prints the statistics; SIGTERM and SIGINT stop.
#[cfg(unix)]
struct Signals([tokio::signal::unix::Signal; 3]);

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals([
            signal(SignalKind::user_defined1())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ]))
    }

    async fn recv(&mut self) -> Signal {
        let [usr1, term, int] = &mut self.0;
        tokio::select! {
            _ = usr1.recv() => Signal::Stats,
            _ = term.recv() => Signal::Stop,
            _ = int.recv() => Signal::Stop,
        }
    }
}

/// Windows has no SIGUSR1: Ctrl-C stops (statistics are printed at the end).
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn recv(&mut self) -> Signal {
        match tokio::signal::ctrl_c().await {
            Ok(()) => Signal::Stop,
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: LinksimArgs,
    }

    #[test]
    fn cli_args_parse_into_params() {
        let cmd = Cmd::try_parse_from([
            "x",
            "--listen",
            "127.0.0.1:1",
            "--to",
            "127.0.0.1:2",
            "--rate",
            "2400",
            "--delay",
            "500",
            "--cut-after-bytes",
            "100",
            "--cut-every",
            "1.5",
            "--refuse-secs",
            "2",
        ])
        .unwrap();
        let p = cmd.args.params().unwrap();
        assert_eq!(p.rate_bps, 2400);
        assert_eq!(p.delay, Duration::from_millis(500));
        assert_eq!((p.mss, p.overhead), (536, 40));
        assert_eq!(p.faults.cut_after_bytes, Some(100));
        assert_eq!(p.faults.cut_every, Some(Duration::from_millis(1500)));
        assert_eq!(p.faults.refuse_for, Some(Duration::from_secs(2)));
    }

    #[test]
    fn cli_rejects_bad_values() {
        let parse = |extra: &[&str]| {
            let mut v = vec!["x", "--listen", "a:1", "--to", "b:2", "--delay", "1"];
            v.extend_from_slice(extra);
            Cmd::try_parse_from(v).map(|c| c.args.params())
        };
        assert!(parse(&["--rate", "0"]).unwrap().is_err());
        assert!(parse(&["--rate", "1", "--mss", "0"]).unwrap().is_err());
        assert!(parse(&["--rate", "1", "--cut-every=-1"]).unwrap().is_err());
        assert!(
            parse(&["--rate", "1", "--cut-every", "0"])
                .unwrap()
                .is_err()
        );
        assert!(parse(&["--rate", "-5"]).is_err());
    }
}
