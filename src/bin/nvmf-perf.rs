//! `nvmf-perf`: a userspace NVMe/TCP host that connects to any NVMe/TCP target (or a fake VMM
//! that drives a vfio-user controller), drives I/O and reports IOPS, bandwidth, latency
//! percentiles and its own CPU use.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use nvmf_tgt::perf::{
    self, Limit, Pattern, PerfConfig, Progress, Target, TcpTarget, TransportId, Trtype,
    VfioUserTarget, parse_size,
};

const DEFAULT_HOSTNQN: &str =
    "nqn.2014-08.org.nvmexpress:uuid:6e766d66-7065-7266-0000-000000000001";

#[derive(Parser)]
#[command(
    name = "nvmf-perf",
    version = nvmf_tgt::VERSION,
    about = "Drive I/O against an NVMe/TCP target or a vfio-user controller and measure it (like spdk_nvme_perf)"
)]
struct Cli {
    /// SPDK transport ID, e.g. 'trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:4420
    /// subnqn:nqn.2016-06.io.spdk:cnode1' or 'trtype:vfiouser traddr:/run/vm0' (the
    /// listener's directory). Flags given as well take precedence.
    #[arg(short = 'r', long = "transport-id")]
    transport_id: Option<String>,
    /// A vfio-user controller's socket (DIR/cntrl, or DIR): be its VMM, with a guest NVMe
    /// driver's queues in shared memory, doorbells as messages, completions by MSI-X eventfd
    /// (or by spinning on guest memory with --busy-poll).
    #[arg(long, value_name = "SOCKET", conflicts_with_all = ["addr", "port", "hdr_digest", "data_digest", "idle"])]
    vfio_user: Option<String>,
    /// Target address (traddr).
    #[arg(long)]
    addr: Option<String>,
    /// Target port (trsvcid), 4420 when absent.
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    subnqn: Option<String>,
    #[arg(long)]
    hostnqn: Option<String>,
    /// Namespace ID (default: the first active namespace).
    #[arg(long)]
    nsid: Option<u32>,
    /// Outstanding I/Os per connection.
    #[arg(short = 'q', long = "queue-depth", default_value_t = 1)]
    queue_depth: u16,
    /// I/O size in bytes: 4096, 4k, 128KiB...
    #[arg(short = 'o', long = "io-size", default_value = "4096")]
    io_size: String,
    #[arg(short = 'w', long, value_enum, default_value = "randread")]
    pattern: Pattern,
    /// Percentage of reads for rw and randrw.
    #[arg(short = 'M', long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    rwmixread: u8,
    /// Run time in seconds (default 10 unless --count is given).
    #[arg(short = 't', long, conflicts_with = "count")]
    time: Option<u64>,
    /// Run exactly this many I/Os instead of a time.
    #[arg(long)]
    count: Option<u64>,
    /// I/O queues (one TCP connection each) of one controller, driven round-robin; with
    /// --idle, controllers.
    #[arg(long, visible_alias = "queues", default_value_t = 1)]
    connections: u16,
    /// Pin the perf thread to this CPU.
    #[arg(long)]
    core: Option<usize>,
    #[arg(long)]
    hdr_digest: bool,
    #[arg(long)]
    data_digest: bool,
    /// Write stamped blocks (LBA + generation) and check every read: a block this run wrote
    /// must carry its generation, one an earlier run stamped its LBA; a block never stamped
    /// is counted, not an error (fio's rule; --prefill stamps them all first).
    #[arg(long)]
    verify: bool,
    /// With --verify: write every block of the namespace first (not measured), so every
    /// read is checked.
    #[arg(long, requires = "verify")]
    prefill: bool,
    /// Controllers to connect, each with --connections I/O queues (NVMe/TCP).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    controllers: u16,
    /// Submit at most this many I/Os per second, to measure the cost of a fixed load.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Spin on the sockets instead of sleeping in epoll while waiting (vfio-user: polled
    /// completion queues, created without interrupts, spun on in guest memory).
    #[arg(long)]
    busy_poll: bool,
    /// vfio-user: ring every doorbell, without shadow doorbells even when the controller
    /// offers them (by default, as Linux's nvme driver, Doorbell Buffer Config at bring-up
    /// and a doorbell write only when the controller's EventIdx asks for one).
    #[arg(long)]
    no_shadow_doorbells: bool,
    /// Seconds without an answer before the target counts as gone.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Seed of the random LBA generator (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object on stdout instead of the text summary.
    #[arg(long)]
    json: bool,
    /// No I/O: connect --connections controllers (admin queue and one I/O queue each) and
    /// only send Keep Alive until the time is up; measures a target's idle cost.
    #[arg(long, conflicts_with_all = ["count", "verify"])]
    idle: bool,
    /// Write the man page and shell completions into DIR (for packaging) and exit.
    #[arg(long, hide = true, value_name = "DIR")]
    generate_assets: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    nvmf_tgt::daemon::logging::init("warn");
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("nvmf-perf: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &cli.generate_assets {
        nvmf_tgt::daemon::assets::write(<Cli as clap::CommandFactory>::command(), dir)
            .with_context(|| format!("cannot write into {}", dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = config(cli)?;
    if cli.idle {
        let report = perf::idle(&cfg)?;
        if cli.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", report.to_text());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let live = std::io::stderr().is_terminal();
    let report = perf::run(&cfg, |p: &Progress| {
        if live {
            let mut err = std::io::stderr();
            let _ = write!(
                err,
                "\r{:>6.1} s {:>12.0} IOPS {:>10.2} MiB/s {:>10.2} us avg ",
                p.elapsed.as_secs_f64(),
                p.iops,
                p.mib_s,
                p.avg_latency_us
            );
            let _ = err.flush();
        }
    })?;
    if live {
        eprintln!();
    }
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    if report.io_errors > 0 {
        bail!(
            "{} of {} I/Os failed",
            report.io_errors,
            report.ios + report.io_errors
        );
    }
    if report.verify_errors > 0 {
        bail!(
            "verify: {} of {} reads returned wrong data",
            report.verify_errors,
            report.reads
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn config(cli: &Cli) -> anyhow::Result<PerfConfig> {
    let mut id = match &cli.transport_id {
        Some(text) => TransportId::parse(text).context("-r")?,
        None => TransportId::default(),
    };
    if let Some(socket) = &cli.vfio_user {
        id.trtype = Some(Trtype::VfioUser);
        id.traddr = Some(socket.clone());
    }
    if let Some(addr) = &cli.addr {
        id.traddr = Some(addr.clone());
    }
    if let Some(port) = cli.port {
        id.trsvcid = Some(port.to_string());
    }
    if let Some(nqn) = &cli.subnqn {
        id.subnqn = Some(nqn.clone());
    }
    if let Some(nqn) = &cli.hostnqn {
        id.hostnqn = Some(nqn.clone());
    }
    let target = match id.trtype.unwrap_or(Trtype::Tcp) {
        Trtype::Tcp => Target::Tcp(TcpTarget {
            addr: id.socket_addr()?,
            subnqn: id
                .subnqn
                .context("subnqn is missing (give it in -r or as --subnqn)")?,
            hostnqn: id.hostnqn.unwrap_or_else(|| DEFAULT_HOSTNQN.into()),
            header_digest: cli.hdr_digest,
            data_digest: cli.data_digest,
        }),
        Trtype::VfioUser => {
            if cli.hdr_digest || cli.data_digest {
                bail!("digests are NVMe/TCP's; a vfio-user controller has none");
            }
            Target::VfioUser(VfioUserTarget {
                socket: id.vfio_user_socket()?,
                subnqn: id.subnqn,
            })
        }
    };
    let io_size = parse_size(&cli.io_size)?;
    let io_size = usize::try_from(io_size).context("I/O size too large")?;
    let limit = match (cli.count, cli.time) {
        (Some(n), _) => Limit::Count(n),
        (None, t) => Limit::Time(Duration::from_secs(t.unwrap_or(10))),
    };
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()) << 20)
    });
    Ok(PerfConfig {
        target,
        nsid: cli.nsid,
        queue_depth: cli.queue_depth,
        io_size,
        pattern: cli.pattern,
        rwmixread: cli.rwmixread,
        limit,
        connections: cli.connections,
        core: cli.core,
        verify: cli.verify,
        prefill: cli.prefill,
        controllers: cli.controllers,
        rate: cli.rate,
        busy_poll: cli.busy_poll,
        shadow_doorbells: !cli.no_shadow_doorbells,
        timeout: Duration::from_secs(cli.timeout.max(1)),
        seed,
    })
}
