//! Where log lines go and how they look. Colour only on a terminal (and not with `NO_COLOR`),
//! so a log file or `journalctl` shows no escape codes. Under systemd, when `JOURNAL_STREAM`
//! names our stderr, lines carry no timestamp of their own (journald stamps each entry) and
//! start with a `<N>` syslog priority, which journald takes as the entry's level (so
//! `journalctl -p warning` finds our warnings).

use std::io::IsTerminal as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{self, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// What reads our stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// A terminal: colours.
    Terminal,
    /// systemd's journal: priorities, no timestamps, no colours.
    Journal,
    /// A file, a pipe, anything else: plain lines with timestamps.
    Plain,
}

impl LogOutput {
    pub fn of_stderr() -> Self {
        if journal_stream_is_stderr() {
            Self::Journal
        } else if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            Self::Terminal
        } else {
            Self::Plain
        }
    }
}

/// systemd sets `JOURNAL_STREAM=DEV:INODE` for a service whose stderr goes to the journal;
/// a child whose stderr was redirected inherits the variable, hence the comparison.
fn journal_stream_is_stderr() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // A duplicate of stderr, so its metadata (fstat) is read without unsafe code.
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|meta| meta.dev() == dev && meta.ino() == ino)
}

/// Logs to stderr at `RUST_LOG` (else `default_level`), shaped for what reads it.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match LogOutput::of_stderr() {
        LogOutput::Terminal => builder.init(),
        LogOutput::Plain => builder.with_ansi(false).init(),
        LogOutput::Journal => builder
            .with_ansi(false)
            .event_format(Prioritised(
                format::Format::default().without_time().with_ansi(false),
            ))
            .init(),
    }
}

/// The syslog priority journald reads from a line's `<N>` prefix (sd-daemon(3)).
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Puts the event's priority in front of the line `F` writes.
struct Prioritised<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritised<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> core::fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}
