//! `nvmf-tgt`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nvmf-tgt",
    version,
    about = "A declarative NVMe-over-Fabrics target"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve what the declaration says until SIGTERM or SIGINT.
    Run {
        #[arg(short, long, default_value = "/etc/nvmf/target.toml")]
        config: PathBuf,
    },
    /// Ask a running target for its state.
    Status {
        #[arg(short, long, default_value = "/etc/nvmf/target.toml")]
        config: PathBuf,
        /// The control socket (default: the one the config names).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run { config } => {
            let loaded = match nvmf_tgt::config::load(&config) {
                Ok(loaded) => loaded,
                Err(err) => {
                    eprintln!("{}: {err:#}", config.display());
                    return ExitCode::from(1);
                }
            };
            match nvmf_tgt::target::serve(&loaded, &config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("nvmf-tgt: {err:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Status {
            config,
            socket,
            json,
        } => {
            let socket = socket.unwrap_or_else(|| {
                nvmf_tgt::target::control_socket_of(nvmf_tgt::config::load(&config).ok().as_ref())
            });
            nvmf_tgt::target::print_status(&socket, json)
        }
    }
}
