//! The Prometheus endpoint (`[metrics] listen`): `GET /metrics` in the OpenMetrics text
//! format, encoded by `prometheus-client` from the figures the target keeps anyway (reactor
//! stats, namespace and controller I/O, the buffer pool, the reload state), read at each
//! scrape. Nothing is counted twice and nothing runs between scrapes.
//!
//! The server is one thread blocked in `accept`, answering one scrape at a time: a client has
//! [`REQUEST_TIMEOUT`] to send a request head of at most [`MAX_REQUEST`] bytes and
//! [`WRITE_TIMEOUT`] to take the answer, so no client holds more than one connection's worth
//! of the target for longer. A reload that changes `listen` binds the new address first and
//! then stops the old server.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tracing::{info, warn};

use super::status::StatusReport;
use crate::controller::{IoClass, IoStatsSnapshot, LATENCY_BUCKETS, bucket_bound_s};

/// The longest request head read.
pub const MAX_REQUEST: usize = 8192;
/// How long a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoint reads; set once the status report exists (after the reloader that owns
/// the server). A scrape before that gets 503.
pub type MetricsSource = Arc<OnceLock<Weak<StatusReport>>>;

/// A running endpoint; dropping it stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (what can fail is done here, before anything changes).
    pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
        TcpListener::bind(addr)
    }

    /// Serves on `listener` until dropped.
    pub fn start(listener: TcpListener, source: MetricsSource) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&listener, &source, &stopping))?;
        info!(%addr, "metrics endpoint listening");
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept; the thread sees the flag and ends.
        let wake = match self.addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
            }
            other => other,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        info!(addr = %self.addr, "metrics endpoint closed");
    }
}

fn serve(listener: &TcpListener, source: &MetricsSource, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        match stream {
            Ok(stream) => answer(stream, source),
            Err(err) => {
                warn!(%err, "metrics endpoint cannot accept");
                // Out of descriptors, say: do not spin.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Reads one request head and answers it, then closes.
fn answer(mut stream: TcpStream, source: &MetricsSource) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let head = match read_head(&mut stream) {
        Ok(head) => head,
        Err(status) => {
            let _ = respond(&mut stream, status, "text/plain", status.as_bytes());
            return;
        }
    };
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let _ = match (method, path) {
        ("GET" | "HEAD", "/metrics") => match source.get().and_then(Weak::upgrade) {
            Some(report) => {
                let body = render(&report);
                let body = if method == "HEAD" {
                    String::new()
                } else {
                    body
                };
                respond(
                    &mut stream,
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body.as_bytes(),
                )
            }
            None => respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                b"starting\n",
            ),
        },
        ("GET" | "HEAD", "/") => respond(
            &mut stream,
            "200 OK",
            "text/plain",
            b"nvmf-tgt: the figures are at /metrics\n",
        ),
        ("GET" | "HEAD", _) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n"),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        ),
    };
    let _ = stream.shutdown(Shutdown::Both);
}

/// The request line and headers, up to the blank line, within the limits.
fn read_head(stream: &mut TcpStream) -> Result<String, &'static str> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("408 Request Timeout");
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(_) => return Err("408 Request Timeout"),
        }
        if head.len() > MAX_REQUEST {
            return Err("431 Request Header Fields Too Large");
        }
    }
    String::from_utf8(head).map_err(|_| "400 Bad Request")
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

/// The figures in the OpenMetrics text format.
pub fn render(report: &Arc<StatusReport>) -> String {
    let mut registry = Registry::with_prefix("nvmf_tgt");
    registry.register_collector(Box::new(Figures(Arc::downgrade(report))));
    let mut out = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        warn!(%err, "cannot encode the metrics");
    }
    out
}

/// Reads the report at each scrape.
#[derive(Debug)]
struct Figures(Weak<StatusReport>);

type Labels = Vec<(&'static str, String)>;

/// One metric family of counters or gauges: a descriptor and its labelled values.
fn family(
    encoder: &mut DescriptorEncoder<'_>,
    kind: MetricType,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in values {
        let sample = metric.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*value).encode(sample)?,
            _ => ConstGauge::new(*value).encode(sample)?,
        }
    }
    Ok(())
}

#[allow(clippy::cast_precision_loss)]
fn f(n: u64) -> f64 {
    n as f64
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(report) = self.0.upgrade() else {
            return Ok(());
        };
        encode_reactors(&report, &mut encoder)?;
        encode_namespaces(&report, &mut encoder)?;
        encode_controllers(&report, &mut encoder)?;
        encode_reload(&report, &mut encoder)
    }
}

fn encode_reactors(
    report: &StatusReport,
    e: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let mut busy = Vec::new();
    let mut idle = Vec::new();
    let mut wakeups = Vec::new();
    let mut events = Vec::new();
    let mut interrupt = Vec::new();
    let mut connections = Vec::new();
    let mut in_use = Vec::new();
    let mut cached = Vec::new();
    let mut waiting = Vec::new();
    for (config, stats) in report.reactors() {
        let snap = stats.snapshot();
        let labels: Labels = vec![
            ("reactor", config.index.to_string()),
            ("core", config.core.unwrap_or(config.index).to_string()),
        ];
        busy.push((labels.clone(), f(snap.busy_ns) / 1e9));
        idle.push((labels.clone(), f(snap.idle_ns) / 1e9));
        wakeups.push((labels.clone(), f(snap.wakeups)));
        events.push((labels.clone(), f(snap.events)));
        interrupt.push((
            labels.clone(),
            if config.interrupt_mode { 1.0 } else { 0.0 },
        ));
        connections.push((labels.clone(), f(snap.connections)));
        in_use.push((labels.clone(), f(u64::from(snap.buffers.in_use))));
        cached.push((labels.clone(), f(u64::from(snap.buffers.cached))));
        waiting.push((labels, f(u64::from(snap.buffers.waiting))));
    }
    let seconds = Unit::Seconds;
    family(
        e,
        MetricType::Counter,
        "reactor_busy",
        "Time reactors spent working",
        Some(&seconds),
        &busy,
    )?;
    family(
        e,
        MetricType::Counter,
        "reactor_idle",
        "Time reactors spent waiting for work (asleep in interrupt mode)",
        Some(&seconds),
        &idle,
    )?;
    family(
        e,
        MetricType::Counter,
        "reactor_wakeups",
        "Returns from a blocking wait (interrupt mode)",
        None,
        &wakeups,
    )?;
    family(
        e,
        MetricType::Counter,
        "reactor_events",
        "Units of work reactors handled",
        None,
        &events,
    )?;
    family(
        e,
        MetricType::Gauge,
        "reactor_interrupt_mode",
        "1 when the reactor sleeps when idle, 0 when it polls",
        None,
        &interrupt,
    )?;
    family(
        e,
        MetricType::Gauge,
        "reactor_connections",
        "Connections a reactor serves",
        None,
        &connections,
    )?;
    family(
        e,
        MetricType::Gauge,
        "reactor_buffers_in_use",
        "Data buffers a reactor's commands hold",
        None,
        &in_use,
    )?;
    family(
        e,
        MetricType::Gauge,
        "reactor_buffers_cached",
        "Data buffers a reactor keeps for its next commands",
        None,
        &cached,
    )?;
    family(
        e,
        MetricType::Gauge,
        "reactor_buffer_waiters",
        "Commands waiting for data buffers",
        None,
        &waiting,
    )?;
    let pool = report.buffer_pool();
    family(
        e,
        MetricType::Gauge,
        "buffer_pool_buffers",
        "Data buffers in the shared pool",
        None,
        &[(Vec::new(), f(u64::from(pool.0)))],
    )?;
    family(
        e,
        MetricType::Gauge,
        "buffer_pool_available",
        "Data buffers no reactor holds",
        None,
        &[(Vec::new(), f(u64::from(pool.1)))],
    )
}

/// The I/O families of namespaces or controllers, labelled by `labels`.
fn encode_io(
    e: &mut DescriptorEncoder<'_>,
    prefix: &str,
    what: &str,
    rows: &[(Labels, IoStatsSnapshot)],
) -> Result<(), std::fmt::Error> {
    let classes = [
        (IoClass::Read, "read"),
        (IoClass::Write, "write"),
        (IoClass::Unmap, "unmap"),
    ];
    let by_class = |value: fn(&crate::controller::ClassSnapshot) -> f64| {
        rows.iter()
            .flat_map(|(labels, snap)| {
                classes.iter().map(move |(class, op)| {
                    let mut labels = labels.clone();
                    labels.push(("op", (*op).to_owned()));
                    (labels, value(&snap.class(*class)))
                })
            })
            .collect::<Vec<_>>()
    };
    family(
        e,
        MetricType::Counter,
        &format!("{prefix}_ops"),
        &format!("Commands {what} completed, by operation"),
        None,
        &by_class(|c| f(c.ops)),
    )?;
    family(
        e,
        MetricType::Counter,
        prefix,
        &format!("Data {what} moved, by operation"),
        Some(&Unit::Bytes),
        &by_class(|c| f(c.bytes)),
    )?;
    let failed: Vec<(Labels, f64)> = rows.iter().map(|(l, s)| (l.clone(), f(s.failed))).collect();
    family(
        e,
        MetricType::Counter,
        &format!("{prefix}_failed"),
        &format!("Commands {what} failed in the backend"),
        None,
        &failed,
    )?;
    let name = format!("{prefix}_latency");
    let mut latency = e.encode_descriptor(
        &name,
        &format!("Latency of the commands {what} completed, from the reactor turn that submitted to the one that completed"),
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (labels, snap) in rows {
        for (class, op) in classes {
            let c = snap.class(class);
            let mut labels = labels.clone();
            labels.push(("op", op.to_owned()));
            // Per bucket, not cumulative: the encoder adds them up; f64::MAX is its +Inf.
            let buckets: Vec<(f64, u64)> = (0..LATENCY_BUCKETS)
                .map(|i| (bucket_bound_s(i).unwrap_or(f64::MAX), c.buckets[i]))
                .collect();
            latency
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    f(c.latency_ns) / 1e9,
                    c.ops,
                    &buckets,
                    None,
                )?;
        }
    }
    Ok(())
}

fn encode_namespaces(
    report: &StatusReport,
    e: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let mut rows = Vec::new();
    let mut sizes = Vec::new();
    for s in report.registry().subsystems() {
        for ns in s.namespaces() {
            let labels: Labels = vec![
                ("subsystem", s.nqn().to_string()),
                ("nsid", ns.nsid().0.to_string()),
            ];
            sizes.push((
                labels.clone(),
                f(ns.blocks().saturating_mul(u64::from(ns.block_size()))),
            ));
            rows.push((labels, ns.stats().snapshot()));
        }
    }
    family(
        e,
        MetricType::Gauge,
        "namespace_size",
        "Namespace capacity",
        Some(&Unit::Bytes),
        &sizes,
    )?;
    encode_io(e, "namespace", "on the namespace", &rows)
}

fn encode_controllers(
    report: &StatusReport,
    e: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let mut count = Vec::new();
    let mut io_queues = Vec::new();
    for s in report.registry().subsystems() {
        let controllers = s.controllers();
        count.push((
            vec![("subsystem", s.nqn().to_string())],
            f(controllers.len() as u64),
        ));
        let queues: usize = controllers.iter().map(|c| c.connected_io_queues()).sum();
        io_queues.push((vec![("subsystem", s.nqn().to_string())], f(queues as u64)));
    }
    family(
        e,
        MetricType::Gauge,
        "subsystem_controllers",
        "Controllers connected to the subsystem",
        None,
        &count,
    )?;
    family(
        e,
        MetricType::Gauge,
        "subsystem_io_queues",
        "I/O queues connected to the subsystem's controllers",
        None,
        &io_queues,
    )
}

fn encode_reload(
    report: &StatusReport,
    e: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let declaration = report.reloader().status();
    let generation = declaration["applied"]["generation"].as_u64().unwrap_or(0);
    family(
        e,
        MetricType::Gauge,
        "reload_generation",
        "Generation of the declaration serving (1 at start, one more per applied reload)",
        None,
        &[(Vec::new(), f(generation))],
    )?;
    let last = &declaration["last_attempt"];
    if let Some(result) = last["result"].as_str() {
        let results = ["applied", "unchanged", "invalid", "refused", "failed"];
        let values: Vec<(Labels, f64)> = results
            .iter()
            .map(|r| {
                (
                    vec![("result", (*r).to_owned())],
                    if *r == result { 1.0 } else { 0.0 },
                )
            })
            .collect();
        family(
            e,
            MetricType::Gauge,
            "reload_last_result",
            "1 for the result of the last reload attempt",
            None,
            &values,
        )?;
        let ms = last["duration_ms"].as_f64().unwrap_or(0.0);
        family(
            e,
            MetricType::Gauge,
            "reload_last_duration",
            "How long the last reload attempt took",
            Some(&Unit::Seconds),
            &[(Vec::new(), ms / 1000.0)],
        )?;
    }
    Ok(())
}
