//! Both engines against real files: tmpfs, a disk file (buffered and O_DIRECT), a loop block
//! device, a full filesystem and a read-only mount. The tests that need root (a loop device,
//! mounts) say so and skip where they cannot.

#![allow(clippy::cast_possible_truncation)]

use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;
use crate::backend::tests::completions;
use crate::backend::{Completions, Uring};
use crate::nvme::Status;

const ENGINES: [Engine; 2] = [Engine::Uring, Engine::Threads];

/// A directory on a real disk: /tmp may be tmpfs, which refuses O_DIRECT.
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/var/tmp").expect("tempdir in /var/tmp")
}

fn tmpfs_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm")
}

fn sized_file(path: &Path, len: u64) {
    std::fs::File::create(path)
        .expect("create")
        .set_len(len)
        .expect("size");
}

fn open(path: &Path, direct: bool, engine: Engine) -> FileBackend {
    FileBackend::open(path, direct, false, engine, &[]).expect("open")
}

/// Drives a backend as a reactor does: the io_uring engine through a ring that signals the
/// poll's eventfd (interrupt mode), the threads engine through the completion queue.
struct Rig {
    poll: mio::Poll,
    completions: Completions,
    uring: Option<Uring>,
}

impl Rig {
    fn new(engine: Engine) -> Self {
        let (poll, completions) = completions();
        let uring = (engine == Engine::Uring).then(|| {
            let uring = Uring::open().expect("io_uring (kernel.io_uring_disabled = 0?)");
            uring
                .signal(completions.wake_fd())
                .expect("register eventfd");
            uring
        });
        Self {
            poll,
            completions,
            uring,
        }
    }

    fn start(&mut self, backend: &FileBackend, token: u64, req: IoRequest) -> Option<IoDone> {
        let mut cx = SubmitCx {
            completions: &self.completions,
            uring: self.uring.as_mut(),
        };
        backend.submit(token, req, &mut cx)
    }

    /// The next completion, which must wake the poll.
    fn wait(&mut self) -> IoDone {
        let mut events = mio::Events::with_capacity(4);
        let mut got = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(uring) = self.uring.as_mut() {
                uring.submit().expect("submit");
            }
            // io_uring's task work interrupts epoll_wait (the reactor retries too).
            match self
                .poll
                .poll(&mut events, Some(Duration::from_millis(100)))
            {
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                polled => polled.expect("poll"),
            }
            if let Some(uring) = self.uring.as_mut() {
                uring.reap(&self.completions, &mut got);
            }
            self.completions.drain_into(&mut got);
            if !got.is_empty() {
                assert!(!events.is_empty(), "the completion woke the poll");
                assert_eq!(got.len(), 1, "one request, one completion");
                return got.remove(0);
            }
        }
        panic!("no completion within 10 s");
    }

    fn run(&mut self, backend: &FileBackend, kind: IoKind, offset: u64, buf: Vec<u8>) -> IoDone {
        let len = match &kind {
            IoKind::Read | IoKind::Write { .. } => buf.len() as u64,
            _ => 0,
        };
        self.run_len(backend, kind, offset, len, buf)
    }

    fn run_len(
        &mut self,
        backend: &FileBackend,
        kind: IoKind,
        offset: u64,
        len: u64,
        buf: Vec<u8>,
    ) -> IoDone {
        let req = IoRequest {
            kind,
            offset,
            len,
            buf,
        };
        let done = match self.start(backend, 9, req) {
            Some(done) => done,
            None => self.wait(),
        };
        assert_eq!(done.token, 9);
        done
    }

    fn read(&mut self, backend: &FileBackend, offset: u64, len: usize) -> Vec<u8> {
        let done = self.run(backend, IoKind::Read, offset, vec![0xEE; len]);
        assert!(done.result.is_ok(), "read: {:?}", done.result);
        done.buf
    }

    fn ok(&mut self, backend: &FileBackend, kind: IoKind, offset: u64, len: u64, buf: Vec<u8>) {
        let what = format!("{kind:?}");
        let done = self.run_len(backend, kind, offset, len, buf);
        assert!(done.result.is_ok(), "{what}: {:?}", done.result);
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(7).wrapping_add(seed) % 251) as u8)
        .collect()
}

/// Every command the controller sends a file: write (with and without FUA), read, flush,
/// write zeroes (with FUA), deallocate of several ranges (one empty), and the read a Compare
/// makes; then the file itself holds what the namespace said.
fn every_command(backend: &FileBackend, rig: &mut Rig, path: &Path, block: u64) {
    let a = pattern(8 * block as usize, 1);
    rig.ok(
        backend,
        IoKind::Write { fua: true },
        block,
        a.len() as u64,
        a.clone(),
    );
    assert_eq!(rig.read(backend, block, a.len()), a);
    let b = pattern(128 << 10, 2);
    rig.ok(
        backend,
        IoKind::Write { fua: false },
        64 * block,
        b.len() as u64,
        b.clone(),
    );
    rig.ok(backend, IoKind::Flush, 0, 0, Vec::new());
    // Compare reads and the controller compares: the data is what was written.
    assert_eq!(rig.read(backend, 64 * block, b.len()), b);
    rig.ok(
        backend,
        IoKind::WriteZeroes { fua: true },
        2 * block,
        block,
        Vec::new(),
    );
    let ranges = vec![(4 * block, block), (0, 0), (64 * block, 2 * block)];
    rig.ok(backend, IoKind::Deallocate(ranges), 0, 0, Vec::new());
    let mut want = a.clone();
    let zero = |want: &mut Vec<u8>, at: u64| {
        let at = (at - block) as usize;
        want[at..at + block as usize].fill(0);
    };
    zero(&mut want, 2 * block);
    zero(&mut want, 4 * block);
    assert_eq!(rig.read(backend, block, a.len()), want);
    let mut want_b = b.clone();
    want_b[..2 * block as usize].fill(0);
    assert_eq!(rig.read(backend, 64 * block, b.len()), want_b);
    let mut on_disk = vec![0; a.len()];
    std::fs::File::open(path)
        .expect("open")
        .read_exact_at(&mut on_disk, block)
        .expect("read back");
    assert_eq!(on_disk, want);
}

#[test]
fn every_command_on_both_engines_buffered_and_direct() {
    let tmpfs = tmpfs_dir();
    let disk = disk_dir();
    for engine in ENGINES {
        for (dir, direct) in [(&tmpfs, false), (&disk, false), (&disk, true)] {
            let path = dir.path().join(format!("{engine:?}-{direct}.img"));
            sized_file(&path, 4 << 20);
            let backend = open(&path, direct, engine);
            assert_eq!(backend.size(), 4 << 20);
            let mut rig = Rig::new(engine);
            every_command(&backend, &mut rig, &path, 4096);
        }
    }
}

#[test]
fn files_in_memory_are_copied_by_the_reactor_and_others_go_to_the_ring() {
    let memory = tmpfs_dir();
    let disk = disk_dir();
    for (dir, inline) in [(&memory, true), (&disk, false)] {
        let path = dir.path().join("ns.img");
        sized_file(&path, 1 << 20);
        let backend = open(&path, false, Engine::Uring);
        assert_eq!(backend.copied_inline(), inline, "{}", path.display());
        assert!(!open(&path, false, Engine::Threads).copied_inline());
        let mut rig = Rig::new(Engine::Uring);
        let write = IoRequest {
            kind: IoKind::Write { fua: true },
            offset: 8192,
            len: 4096,
            buf: vec![0x5a; 4096],
        };
        let done = match rig.start(&backend, 1, write) {
            Some(done) => done,
            None => {
                assert!(!inline, "a file in memory finishes inside submit");
                rig.wait()
            }
        };
        assert!(done.result.is_ok(), "{:?}", done.result);
        let mut data = vec![0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&path).unwrap(),
            &mut data,
            8192,
        )
        .unwrap();
        assert_eq!(data, vec![0x5a; 4096]);
    }
}

#[test]
fn many_requests_in_flight_on_one_ring_each_complete_once() {
    let dir = disk_dir();
    let path = dir.path().join("ns.img");
    sized_file(&path, 16 << 20);
    let backend = open(&path, false, Engine::Uring);
    let mut rig = Rig::new(Engine::Uring);
    // More than the ring holds: the rest wait their turn in order.
    let count = uring::RING_ENTRIES as u64 + 300;
    for n in 0..count {
        let req = IoRequest {
            kind: IoKind::Write { fua: false },
            offset: n * 4096,
            len: 4096,
            buf: vec![(n % 251) as u8; 4096],
        };
        assert!(rig.start(&backend, n, req).is_none(), "queued on the ring");
    }
    let mut seen = vec![false; count as usize];
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < count as usize && started.elapsed() < Duration::from_secs(10) {
        let uring = rig.uring.as_mut().expect("ring");
        uring.submit().expect("submit");
        uring.reap(&rig.completions, &mut got);
    }
    assert_eq!(got.len(), count as usize);
    for done in got {
        assert!(done.result.is_ok(), "{:?}", done.result);
        let slot = &mut seen[done.token as usize];
        assert!(!*slot, "token {} twice", done.token);
        *slot = true;
    }
    assert_eq!(rig.uring.as_ref().expect("ring").in_flight(), 0);
    let data = std::fs::read(&path).expect("read back");
    for n in 0..count {
        let block = &data[(n * 4096) as usize..][..4096];
        assert!(block.iter().all(|&b| b == (n % 251) as u8), "block {n}");
    }
}

#[test]
fn deallocating_a_huge_range_frees_blocks_without_writing_them() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = disk_dir();
    for engine in ENGINES {
        let path = dir.path().join(format!("big-{engine:?}.img"));
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(64 << 30).expect("64 GiB sparse");
        // Some real data to free.
        file.write_all_at(&vec![0xAB; 4 << 20], 1 << 30)
            .expect("fill");
        file.sync_all().expect("sync");
        let before = std::fs::metadata(&path).expect("stat").blocks();
        assert!(before >= 8192, "{before} blocks allocated");
        let backend = open(&path, false, engine);
        let mut rig = Rig::new(engine);
        let started = Instant::now();
        rig.ok(
            &backend,
            IoKind::Deallocate(vec![(0, 64 << 30)]),
            0,
            0,
            Vec::new(),
        );
        // Writing 64 GiB of zeroes would take minutes and fill the disk.
        assert!(started.elapsed() < Duration::from_secs(10));
        let after = std::fs::metadata(&path).expect("stat").blocks();
        assert!(after < before, "{engine:?}: blocks {before} -> {after}");
        assert_eq!(rig.read(&backend, 1 << 30, 4096), vec![0; 4096]);
    }
}

#[test]
fn shrunk_file_is_a_read_error_and_read_only_refuses_writes() {
    let dir = disk_dir();
    for engine in ENGINES {
        let path = dir.path().join(format!("ns-{engine:?}.img"));
        sized_file(&path, 1 << 20);
        let backend = open(&path, false, engine);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(4096)
            .expect("shrink");
        let mut rig = Rig::new(engine);
        let done = rig.run(&backend, IoKind::Read, 65536, vec![0; 4096]);
        assert!(
            matches!(done.result, Err(BackendError::Read(_))),
            "{engine:?}: {:?}",
            done.result
        );
        drop(backend);
        let ro = FileBackend::open(&path, false, true, engine, &[]).expect("open read-only");
        let done = rig.run(&ro, IoKind::Write { fua: false }, 0, vec![0; 512]);
        assert!(matches!(done.result, Err(BackendError::ReadOnly)));
    }
}

#[test]
fn flush_for_shutdown_finishes_queued_writes_then_refuses_requests() {
    let dir = disk_dir();
    let path = dir.path().join("ns.img");
    sized_file(&path, 1 << 20);
    let backend = open(&path, false, Engine::Threads);
    let (_poll, c) = completions();
    for n in 0..16u8 {
        let req = IoRequest {
            kind: IoKind::Write { fua: false },
            offset: u64::from(n) * 4096,
            len: 4096,
            buf: vec![n + 1; 4096],
        };
        assert!(
            backend
                .submit(u64::from(n), req, &mut SubmitCx::new(&c))
                .is_none(),
            "queued"
        );
    }
    backend.flush_for_shutdown().expect("flush");
    // Every queued write ran before the flush returned.
    let mut done = Vec::new();
    assert!(c.drain_into(&mut done));
    assert_eq!(done.len(), 16);
    assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
    let on_disk = std::fs::read(&path).expect("read back");
    for n in 0..16u8 {
        let block = &on_disk[usize::from(n) * 4096..][..4096];
        assert!(block.iter().all(|&b| b == n + 1), "block {n}");
    }
    // Neither engine takes requests after it.
    let mut rig = Rig::new(Engine::Uring);
    let done = rig.run(&backend, IoKind::Read, 0, vec![0; 512]);
    assert!(
        matches!(done.result, Err(BackendError::ShuttingDown)),
        "{:?}",
        done.result
    );
    backend
        .flush_for_shutdown()
        .expect("a second flush has nothing to do");
}

#[test]
fn a_namespace_removed_with_writes_on_the_ring_keeps_its_file_until_they_finish() {
    let dir = disk_dir();
    let path = dir.path().join("ns.img");
    sized_file(&path, 1 << 20);
    let backend = open(&path, false, Engine::Uring);
    let mut rig = Rig::new(Engine::Uring);
    let req = IoRequest {
        kind: IoKind::Write { fua: false },
        offset: 8192,
        len: 4096,
        buf: vec![0x77; 4096],
    };
    assert!(rig.start(&backend, 9, req).is_none());
    // The reload drops the backend before the reactor's turn hands the write to the kernel.
    drop(backend);
    let done = rig.wait();
    assert!(done.result.is_ok(), "{:?}", done.result);
    let data = std::fs::read(&path).expect("read back");
    assert!(data[8192..12288].iter().all(|&b| b == 0x77));
}

#[test]
fn missing_file_names_its_path() {
    let err = FileBackend::open(
        Path::new("/nonexistent/ns.img"),
        false,
        false,
        Engine::Uring,
        &[],
    )
    .expect_err("missing");
    assert!(err.to_string().contains("/nonexistent/ns.img"), "{err}");
}

/// Runs a root-only command; `None` (and a message) where it cannot.
fn privileged(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if out.status.success() {
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        eprintln!(
            "skipped: {program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        None
    }
}

/// A loop block device over a file, detached when dropped.
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    fn attach(file: &Path, block: u32) -> Option<Self> {
        let block = block.to_string();
        let name = file.to_str()?;
        let path = privileged(
            "losetup",
            &["--find", "--show", "--sector-size", &block, name],
        )?;
        Some(Self {
            path: PathBuf::from(path),
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

#[test]
fn a_loop_block_device_is_sized_by_ioctl_and_serves_every_command() {
    let dir = disk_dir();
    let image = dir.path().join("loop.img");
    sized_file(&image, 16 << 20);
    let Some(device) = LoopDevice::attach(&image, 4096) else {
        eprintln!("skipped: no loop device (needs root and the loop module)");
        return;
    };
    let file = std::fs::File::open(&device.path).expect("open the loop device");
    assert_eq!(
        crate::sys::file_size(&file).expect("BLKGETSIZE64"),
        16 << 20
    );
    assert_eq!(
        crate::sys::logical_block_size(&file).expect("BLKSSZGET"),
        Some(4096)
    );
    for engine in ENGINES {
        for direct in [false, true] {
            let backend = open(&device.path, direct, engine);
            assert_eq!(backend.size(), 16 << 20);
            let mut rig = Rig::new(engine);
            every_command(&backend, &mut rig, &device.path, 4096);
            rig.ok(&backend, IoKind::Flush, 0, 0, Vec::new());
        }
    }
}

/// A tmpfs of `size` mounted on a new directory, unmounted when dropped.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn tmpfs(size: &str) -> Option<Self> {
        let dir = disk_dir();
        let at = dir.path().to_str()?;
        privileged(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", at],
        )?;
        Some(Self { dir })
    }

    fn read_only_bind(of: &Path) -> Option<Self> {
        let dir = disk_dir();
        let at = dir.path().to_str()?.to_owned();
        privileged("mount", &["--bind", of.to_str()?, &at])?;
        let mount = Self { dir };
        privileged("mount", &["-o", "remount,bind,ro", &at])?;
        Some(mount)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_filesystem_is_capacity_exceeded_and_reads_still_work() {
    let Some(mount) = Mount::tmpfs("1m") else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    for engine in ENGINES {
        let path = mount.path().join(format!("ns-{engine:?}.img"));
        sized_file(&path, 8 << 20);
        let backend = open(&path, false, engine);
        let mut rig = Rig::new(engine);
        let mut failed = None;
        for n in 0..64u64 {
            let done = rig.run(
                &backend,
                IoKind::Write { fua: false },
                n * (128 << 10),
                vec![0x5A; 128 << 10],
            );
            if let Err(err) = done.result {
                failed = Some(err);
                break;
            }
        }
        let err = failed.expect("8 MiB do not fit in a 1 MiB tmpfs");
        assert_eq!(
            err.status(),
            Status::CAPACITY_EXCEEDED.with_dnr(),
            "{engine:?}: {err:?}"
        );
        assert_eq!(rig.read(&backend, 0, 4096), vec![0x5A; 4096]);
        drop(backend);
        std::fs::remove_file(&path).expect("free the tmpfs");
    }
}

#[test]
fn a_read_only_mount_refuses_a_writable_namespace_and_serves_a_read_only_one() {
    let dir = disk_dir();
    sized_file(&dir.path().join("ns.img"), 1 << 20);
    let Some(mount) = Mount::read_only_bind(dir.path()) else {
        eprintln!("skipped: cannot bind-mount read-only (needs root)");
        return;
    };
    let path = mount.path().join("ns.img");
    let err = FileBackend::open(&path, false, false, Engine::Uring, &[]).expect_err("EROFS");
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("Read-only")),
        "{err}: {cause:?}"
    );
    for engine in ENGINES {
        let backend = FileBackend::open(&path, false, true, engine, &[]).expect("open read-only");
        let mut rig = Rig::new(engine);
        assert_eq!(rig.read(&backend, 0, 4096), vec![0; 4096]);
        let done = rig.run(&backend, IoKind::Write { fua: false }, 0, vec![1; 4096]);
        let err = done.result.expect_err("refused");
        assert_eq!(
            err.status(),
            Status::ATTEMPTED_WRITE_TO_READ_ONLY_RANGE.with_dnr()
        );
    }
}
