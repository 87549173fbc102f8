use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[cfg(all(target_os = "linux", not(feature = "system-alloc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start (the `MALLOC_CONF` environment
/// variable still overrides them). A background thread purges freed pages:
/// a server whose tunnels finished a burst gives the memory back within
/// seconds rather than keeping it, as glibc's malloc does.
#[cfg(all(target_os = "linux", not(feature = "system-alloc")))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:2000,muzzy_decay_ms:0\0";

/// straw: a split proxy for mail and web over very slow, expensive links.
///
/// Run `straw server` on a well-connected host and `straw client` next to the
/// mail program; they share one encrypted, compressed, multiplexed TCP connection.
#[derive(Parser)]
// The package is `straw-cli`; the command, its --version and its man pages
// are `straw`.
#[command(name = "straw", version, about, long_about = None)]
struct Cli {
    /// Log lines as text (one line per event) or as JSON objects.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: straw::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Init {
    /// On the boat: write client.toml and a key pair; print the line for the server.
    ///
    /// Writes client.toml (POP3 127.0.0.1:1110, IMAP 1143, SMTP 1025, HTTP
    /// proxy 3128), client.key (0600), client.key.pub and the server's
    /// server.key.pub into DIR, then prints the one line the server's
    /// operator adds to the server's authorized_keys
    /// (`name=NAME PUBLIC-KEY`).
    Client(straw::setup::InitClientArgs),
    /// On the server: write server.toml and a key pair; print the boat's command.
    ///
    /// Writes server.toml (the services given by --pop3, --imap, --smtp, and
    /// the web proxy; the others as commented-out examples), server.key
    /// (0600), server.key.pub and an empty authorized_keys into DIR, then
    /// prints the server's public key and the `straw init client` command a
    /// boat runs.
    Server(straw::setup::InitServerArgs),
}

/// Which running client `straw hold` asks.
#[derive(clap::Args)]
struct ClientSocket {
    /// The client's config, to find its `[control] socket`.
    #[arg(long, conflicts_with = "socket")]
    config: Option<PathBuf>,
    /// The control socket (default: the client's state dir).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print the client's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum HoldCommand {
    /// Show the messages held ashore and released (id, state, size, subject, sender).
    List {
        #[command(flatten)]
        client: ClientSocket,
    },
    /// Fetch a held message: it comes as one more new message the next time
    /// the mail program checks for mail, under its own UIDL.
    ///
    /// The stub already delivered stays; deleting it never deletes the
    /// original on the server.
    Release {
        /// The id from the stub or from `straw hold list`.
        id: String,
        #[command(flatten)]
        client: ClientSocket,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Write a first config and a new key pair (`straw init client` or
    /// `straw init server`).
    ///
    /// Nothing existing is overwritten without --force. What was written is
    /// reported on stderr; the one line meant for the other side goes to
    /// stdout.
    #[command(subcommand)]
    Init(Init),
    /// Check a client or server config: load it, read its keys, dial what it names.
    ///
    /// A server config's upstreams are each dialled, with the TLS handshake
    /// or STARTTLS its `tls` asks for; a client config's server is dialled.
    /// Config errors read FILE:LINE:COLUMN. One line per check, `ok` or
    /// `FAILED: why`; exit status 1 if anything failed.
    Check {
        /// The config file (client or server: told apart by its keys).
        #[arg(long)]
        config: PathBuf,
        /// Give up on each connection or TLS handshake after this long.
        #[arg(long, value_name = "SECS", default_value_t = 5.0)]
        timeout: f64,
    },
    /// Write a new private key to PATH and its public key to PATH.pub.
    Keygen {
        /// Where to write the private key.
        path: PathBuf,
    },
    /// Run the well-connected side: accept tunnels and dial the real servers.
    Server {
        /// TOML config file (see examples/server.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the mail program's side: listen locally and dial the server.
    Client {
        /// TOML config file (see examples/client.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Show what crosses the link and what it costs (asks the running client).
    ///
    /// One screen: the link (state, measured rate and RTT, bytes this call),
    /// the money (this call and since the client started, billed per started
    /// minute; and an estimate without straw), every open connection with
    /// what the program is doing, its progress and ETA, and the last
    /// finished transfers. Exit status 1 if no client answers.
    Status {
        /// The client's config, to find its `[control] socket`.
        #[arg(long, conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The control socket (default: the client's state dir).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Redraw every SECS seconds (default 1) until interrupted.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        /// Print the snapshot as JSON (one line; one per redraw with --watch).
        #[arg(long)]
        json: bool,
    },
    /// List or release POP3 messages held ashore (asks the running client).
    ///
    /// With `[pop3] hold_over_bytes` set in the client's config, a message
    /// larger than that is not carried over the link: the mail program gets
    /// a small stub naming its id. `straw hold release ID` lets the whole
    /// message come as one more new message at the next mail check.
    /// Exit status 1 if no client answers or the id is unknown.
    #[command(subcommand)]
    Hold(HoldCommand),
    /// Emulate a slow, high-latency link as a TCP relay.
    Linksim(straw_tools::linksim::LinksimArgs),
    /// Measure compression on a corpus (see docs/codec.md).
    Bench(straw_tools::bench::BenchArgs),
    /// Write the man pages into DIR (packaging).
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Print the completion script for SHELL (packaging).
    #[command(hide = true)]
    Completions { shell: straw::cli_docs::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    straw::logging::init(cli.log_format);
    let result = match cli.command {
        Command::Init(Init::Client(args)) => straw::setup::init_client_cli(&args),
        Command::Init(Init::Server(args)) => straw::setup::init_server_cli(&args),
        Command::Check { config, timeout } => check_timeout(timeout)
            .and_then(|t| runtime()?.block_on(straw::check::check_cli(&config, t))),
        Command::Keygen { path } => straw::link::keys::keygen_cli(&path),
        Command::Server { config } => straw::config::ServerConfig::load(&config)
            .and_then(|c| runtime()?.block_on(straw::server::run(c))),
        Command::Client { config } => straw::config::ClientConfig::load(&config)
            .and_then(|c| runtime()?.block_on(straw::client::run(c))),
        Command::Status {
            config,
            socket,
            watch,
            json,
        } => straw::control::status_cli(config.as_deref(), socket.as_deref(), watch, json),
        Command::Hold(h) => {
            let (req, c) = match h {
                HoldCommand::List { client } => (straw::control::HoldRequest::List, client),
                HoldCommand::Release { id, client } => {
                    (straw::control::HoldRequest::Release(id), client)
                }
            };
            straw::control::hold_cli(c.config.as_deref(), c.socket.as_deref(), &req, c.json)
        }
        Command::Bench(args) => match args.what {
            straw_tools::bench::BenchCommand::Codec(a) => straw_tools::bench::run_codec_cli(&a),
            straw_tools::bench::BenchCommand::TrainDict(a) => straw_tools::bench::run_train_cli(&a),
            straw_tools::bench::BenchCommand::Flood(a) => straw_tools::bench::flood::run_cli(&a),
            straw_tools::bench::BenchCommand::Load(a) => straw_tools::bench::load::run_cli(&a),
            straw_tools::bench::BenchCommand::Throughput(a) => {
                straw_tools::bench::throughput::run_cli(&a)
            }
            straw_tools::bench::BenchCommand::IdleFlood(a) => {
                straw_tools::bench::idle_flood::run_cli(&a)
            }
        },
        Command::Man { dir } => straw::cli_docs::write_man_pages(Cli::command(), &dir).map(drop),
        Command::Completions { shell } => {
            straw::cli_docs::write_completions(Cli::command(), shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Linksim(args) => {
            runtime().and_then(|rt| rt.block_on(straw_tools::linksim::run_cli(args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("straw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_timeout(secs: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--timeout {secs}: expected a positive number of seconds"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_called_straw() {
        let cmd = Cli::command();
        assert_eq!(cmd.get_name(), "straw");
        assert!(cmd.render_version().starts_with("straw "));
        cmd.debug_assert();
    }
}
