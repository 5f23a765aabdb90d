//! `nvmf-tgt`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use nvmf_tgt::config::{self, Environment, LoadError, Purpose};

const DEFAULT_CONFIG: &str = "/etc/nvmf/target.toml";

#[derive(Parser)]
#[command(
    name = "nvmf-tgt",
    version = nvmf_tgt::VERSION,
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
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Do not watch the file; reload only on SIGHUP or `nvmf-tgt reload`.
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a declaration and report every problem with its location.
    ///
    /// Exit status: 0 valid, 1 invalid, 2 the file cannot be read.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Print the JSON Schema of the declaration (schema/target.schema.json).
    Schema,
    /// Ask the running target to reload its declaration, and print the outcome.
    ///
    /// Exit status: 0 applied or nothing to do, 1 refused or invalid, 2 target unreachable.
    Reload(TargetArgs),
    /// Show what reloading FILE would change in the running target, without applying it.
    ///
    /// Exit status: 0 no changes, 1 changes, 2 error (unreachable, invalid, needs restart).
    Plan(TargetArgs),
    /// Ask a running target for its state.
    Status(TargetArgs),
    /// Print a declaration made from SPDK's save_config JSON or nvmetcli's saved JSON, with
    /// a comment for each thing it could not carry over.
    ///
    /// Exit status: 0 printed (valid; warnings on stderr), 1 the result is not valid (its
    /// diagnostics on stderr), 2 the file cannot be read or is not such a configuration.
    Import {
        /// What wrote FILE.
        #[arg(long, value_enum)]
        from: ImportFrom,
        /// The saved configuration (`-` for stdin).
        file: PathBuf,
    },
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets { dir: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum ImportFrom {
    /// SPDK's `scripts/rpc.py save_config` (or `nvmf_tgt --json` input).
    Spdk,
    /// `nvmetcli save` (`/etc/nvmet/config.json`).
    Nvmetcli,
}

/// How the commands that talk to a running target find it.
#[derive(clap::Args)]
struct TargetArgs {
    /// The declaration (for `plan`: the one to compare with what serves).
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The control socket (default: the one the declaration names).
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

impl TargetArgs {
    /// `--socket`, or the one the declaration names, read even from an invalid file (saying
    /// so on stderr when it had to guess).
    fn socket(&self) -> PathBuf {
        if let Some(socket) = &self.socket {
            return socket.clone();
        }
        let (socket, note) = config::control_socket_leniently(&self.config);
        if let Some(note) = note {
            eprintln!("nvmf-tgt: {note}");
        }
        socket
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

fn main() -> ExitCode {
    nvmf_tgt::daemon::logging::init("info");
    match Cli::parse().command {
        Command::Run { config, no_watch } => run(&config, !no_watch),
        Command::Check {
            config,
            format,
            strict,
        } => check(&config, format, strict),
        Command::Schema => {
            match serde_json::to_string_pretty(&config::json_schema()) {
                Ok(text) => println!("{text}"),
                Err(err) => {
                    eprintln!("nvmf-tgt: {err}");
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Command::Reload(args) => nvmf_tgt::daemon::print_reload(&args.socket(), args.json),
        Command::Plan(args) => {
            nvmf_tgt::daemon::print_plan(&args.socket(), &args.config, args.json)
        }
        Command::Import { from, file } => import(from, &file),
        Command::GenerateAssets { dir } => {
            match nvmf_tgt::daemon::assets::write(<Cli as clap::CommandFactory>::command(), &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("nvmf-tgt: cannot write into {}: {err}", dir.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Status(args) => nvmf_tgt::daemon::print_status(&args.socket(), args.json),
    }
}

fn run(path: &std::path::Path, watch: bool) -> ExitCode {
    let checked = match config::load(path) {
        Ok(checked) => checked,
        Err(LoadError::Source(err)) => {
            eprintln!("nvmf-tgt: {err}");
            return ExitCode::from(2);
        }
        Err(LoadError::Invalid(report)) => {
            eprint!("{}", report.render());
            return ExitCode::from(1);
        }
    };
    if !checked.report.diagnostics.is_empty() {
        eprint!("{}", checked.report.render());
    }
    match nvmf_tgt::daemon::serve(&checked.config, path, &checked.report.text, watch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nvmf-tgt: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn import(from: ImportFrom, path: &std::path::Path) -> ExitCode {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    let text = match text {
        Ok(text) => text,
        Err(err) => {
            eprintln!("nvmf-tgt import: cannot read {}: {err}", path.display());
            return ExitCode::from(2);
        }
    };
    let format = match from {
        ImportFrom::Spdk => nvmf_tgt::import::Format::Spdk,
        ImportFrom::Nvmetcli => nvmf_tgt::import::Format::Nvmetcli,
    };
    let declaration = match nvmf_tgt::import::import(format, &text) {
        Ok(declaration) => declaration,
        Err(err) => {
            eprintln!("nvmf-tgt import: {}: {err}", path.display());
            return ExitCode::from(2);
        }
    };
    print!("{declaration}");
    // What `check` would say of it on this machine, so a missing backing file shows now.
    let (_, report) = config::check_text(
        "<imported>",
        declaration,
        Purpose::Check,
        &Environment::this_machine(),
    );
    let findings = report.render();
    if !report.is_valid() || findings.lines().count() > 1 {
        eprint!("{findings}");
    }
    if report.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn check(path: &std::path::Path, format: Format, strict: bool) -> ExitCode {
    let env = Environment::this_machine();
    let mut report = match config::check_file(path, Purpose::Check, &env) {
        Ok((_, report)) => report,
        Err(err) => {
            match format {
                Format::Human => eprintln!("nvmf-tgt: {err}"),
                Format::Json => println!(
                    "{}",
                    serde_json::json!({"file": path.display().to_string(), "valid": false,
                        "readable": false, "error": err.to_string()})
                ),
            }
            return ExitCode::from(2);
        }
    };
    if strict {
        report.make_strict();
    }
    match format {
        Format::Human => print!("{}", report.render()),
        Format::Json => println!("{}", report.to_json()),
    }
    if report.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
