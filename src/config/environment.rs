//! What the rules need to know about the machine: its CPUs, the namespace files and the
//! control socket's group. Kept behind one struct so the rules stay pure and tests can
//! describe any machine.

use std::path::Path;

/// What opening a namespace's backing file would find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProbe {
    /// A regular file or block device that can be opened as needed; its length in bytes
    /// and, for a block device, its logical block size.
    Usable {
        len: u64,
        logical_block: Option<u32>,
    },
    Missing,
    /// Exists but cannot be opened (permissions, ...).
    Unusable(String),
    /// A directory, socket, character device...
    WrongKind(&'static str),
    /// Not looked at (see [`Environment::for_client_text`]).
    NotProbed,
}

/// Probes a path; the flag says whether it must be writable.
pub type FileProber = Box<dyn Fn(&Path, bool) -> FileProbe + Send + Sync>;

/// The gid of a group name: `Ok(None)` when there is no such group, `Err` when the lookup
/// itself failed (NSS unreachable, ...).
pub type GroupLookup = Box<dyn Fn(&str) -> Result<Option<u32>, String> + Send + Sync>;

pub struct Environment {
    /// Online CPUs; `None` skips the check.
    pub online_cpus: Option<Vec<usize>>,
    pub probe_file: FileProber,
    pub group_id: GroupLookup,
    /// Whether io_uring serves `file` namespaces here, or why not.
    pub io_uring: Result<(), String>,
}

impl Environment {
    /// The machine this process runs on.
    pub fn this_machine() -> Self {
        Self {
            online_cpus: Some(crate::sys::online_cpus()),
            probe_file: Box::new(probe),
            group_id: Box::new(|name| {
                crate::control::os::group_id(name).map_err(|e| e.to_string())
            }),
            io_uring: crate::sys::uring::probe().map_err(|e| e.to_string()),
        }
    }

    /// This machine, for a declaration a client sent (`nvmf-tgt plan`): backing files are not
    /// probed, because the target opens no path that a client names. What `reload` reads
    /// from the target's own file is probed as usual.
    pub fn for_client_text() -> Self {
        Self {
            probe_file: Box::new(|_, _| FileProbe::NotProbed),
            ..Self::this_machine()
        }
    }

    /// A machine with `cpus`, no files and no groups at all: for tests of the rules.
    pub fn fixed(cpus: Vec<usize>) -> Self {
        Self {
            online_cpus: Some(cpus),
            probe_file: Box::new(|_, _| FileProbe::Missing),
            group_id: Box::new(|_| Ok(None)),
            io_uring: Ok(()),
        }
    }
}

fn probe(path: &Path, writable: bool) -> FileProbe {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return FileProbe::Missing,
        Err(err) => return FileProbe::Unusable(err.to_string()),
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        return FileProbe::WrongKind("a directory");
    }
    if !(kind.is_file() || kind.is_block_device()) {
        return FileProbe::WrongKind(if kind.is_char_device() {
            "a character device"
        } else {
            "not a regular file"
        });
    }
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path);
    match opened {
        Err(err) => FileProbe::Unusable(err.to_string()),
        Ok(file) => match (
            crate::sys::file_size(&file),
            crate::sys::logical_block_size(&file),
        ) {
            (Ok(len), Ok(logical_block)) => FileProbe::Usable { len, logical_block },
            (Err(err), _) | (_, Err(err)) => FileProbe::Unusable(err.to_string()),
        },
    }
}
