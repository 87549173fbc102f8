use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// straw: a split proxy for mail and web over very slow, expensive links.
///
/// Run `straw server` on a well-connected host and `straw client` next to the
/// mail program; they share one encrypted, compressed, multiplexed TCP connection.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Emulate a slow, high-latency link as a TCP relay.
    Linksim(straw_tools::linksim::LinksimArgs),
    /// Measure compression on a corpus (see docs/codec.md).
    Bench(straw_tools::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Keygen { path } => straw::link::keys::keygen_cli(&path),
        Command::Server { config } => straw::config::ServerConfig::load(&config)
            .and_then(|c| runtime()?.block_on(straw::server::run(c))),
        Command::Client { config } => straw::config::ClientConfig::load(&config)
            .and_then(|c| runtime()?.block_on(straw::client::run(c))),
        Command::Bench(args) => match args.what {
            straw_tools::bench::BenchCommand::Codec(a) => straw_tools::bench::run_codec_cli(&a),
            straw_tools::bench::BenchCommand::TrainDict(a) => straw_tools::bench::run_train_cli(&a),
            straw_tools::bench::BenchCommand::Throughput(a) => {
                straw_tools::bench::throughput::run_cli(&a)
            }
        },
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
