//! Small OS services: CPU pinning, CPU-time figures, eventfds, shared file mappings (with
//! SIGBUS absorbed when a mapped file shrinks), io_uring (`uring.rs`) and the RDMA verbs
//! (`verbs.rs`).
//!
//! The crate denies `unsafe_code`; this module and its children allow it, each block with a
//! `// SAFETY:` comment, so that raw system calls stay here behind safe functions and types.

#![allow(unsafe_code)]

mod eventfd;
pub mod mmap;
mod sigbus;
pub mod uring;
#[cfg(feature = "rdma")]
pub mod verbs;

use std::time::Duration;

pub use eventfd::EventFd;

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(core: usize) -> std::io::Result<()> {
    pin_current_thread_to(&[core])
}

/// Lets the calling thread run on `cores` only.
pub fn pin_current_thread_to(cores: &[usize]) -> std::io::Result<()> {
    if cores.is_empty() || cores.iter().any(|&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: cpu_set_t is plain data for which all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &core in cores {
        // SAFETY: `core` is below CPU_SETSIZE (checked above), so CPU_SET stays inside `set`.
        unsafe { libc::CPU_SET(core, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 means this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CPUs this process may run on.
pub fn online_cpus() -> Vec<usize> {
    // SAFETY: as above, all-zero is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable and its size is passed; pid 0 means this thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return vec![0];
    }
    // SAFETY: every index is below CPU_SETSIZE, inside `set`.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// User plus system CPU time of this process, to the microsecond (getrusage).
pub fn own_cpu_time() -> std::io::Result<Duration> {
    // SAFETY: rusage is plain data for which all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a writable rusage; RUSAGE_SELF needs nothing else.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(time(usage.ru_utime) + time(usage.ru_stime))
}

/// `_IOR(0x12, 114, u64)`, which libc does not name.
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272;

/// The size of a regular file, or of a block device (BLKGETSIZE64: its metadata says 0).
pub fn file_size(file: &std::fs::File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::FileTypeExt as _;
    let meta = file.metadata()?;
    if !meta.file_type().is_block_device() {
        return Ok(meta.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`; the
    // descriptor belongs to `file`, which outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if rc == 0 {
        Ok(size)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `RAMFS_MAGIC` from linux/magic.h, which libc does not name.
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Whether `file` is a regular file on a filesystem that keeps its data in memory (tmpfs,
/// ramfs): reading or writing it never waits for a device.
pub fn is_in_memory_file(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    if !file.metadata()?.file_type().is_file() {
        return Ok(false);
    }
    // SAFETY: statfs is plain data for which all-zero is valid.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fs` is a writable statfs; the descriptor belongs to `file`, which outlives
    // the call.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // f_type and the libc constants are i64 on x86_64 glibc, narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    let (magic, tmpfs) = (fs.f_type as i64, libc::TMPFS_MAGIC as i64);
    Ok(magic == tmpfs || magic == RAMFS_MAGIC)
}

/// The logical block size of a block device (BLKSSZGET); `None` for anything else.
pub fn logical_block_size(file: &std::fs::File) -> std::io::Result<Option<u32>> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::FileTypeExt as _;
    if !file.metadata()?.file_type().is_block_device() {
        return Ok(None);
    }
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at `size`; the
    // descriptor belongs to `file`, which outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
    if rc == 0 {
        Ok(u32::try_from(size).ok())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// How `fallocate` should make a byte range read back as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroMode {
    /// Free the blocks (deallocate / discard); the file keeps its size.
    PunchHole,
    /// Zero the range, keeping it allocated (block devices turn this into write-zeroes).
    ZeroRange,
}

/// Zeroes `len` bytes at `offset` of `file` without writing them, when the filesystem or
/// device can (`fallocate`); the caller falls back to writing zeroes on an error.
pub fn fallocate_zero(
    file: &std::fs::File,
    mode: ZeroMode,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let flags = match mode {
        ZeroMode::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        ZeroMode::ZeroRange => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
    };
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: the descriptor belongs to `file`, which outlives the call; fallocate reads no
    // memory of ours.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), flags, offset, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// CLOCK_MONOTONIC in microseconds (what systemd's MONOTONIC_USEC wants).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

/// The kernel's id of the calling thread (what `top -H` and `/proc/PID/task` show).
pub fn thread_id() -> u64 {
    // SAFETY: gettid has no preconditions and cannot fail.
    u64::try_from(unsafe { libc::gettid() }).unwrap_or(0)
}

/// One CPU's time since boot in clock ticks (USER_HZ), as `/proc/stat` counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
    /// Hard and soft interrupts together.
    pub irq: u64,
}

/// The times of CPU `core` from `/proc/stat`.
pub fn cpu_times(core: usize) -> Option<CpuTimes> {
    parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?, core)
}

fn parse_cpu_times(stat: &str, core: usize) -> Option<CpuTimes> {
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name.as_str()))?;
    // cpuN user nice system idle iowait irq softirq steal guest guest_nice
    let field = |i: usize| line.split_whitespace().nth(i)?.parse::<u64>().ok();
    Some(CpuTimes {
        user: field(1)?,
        system: field(3)?,
        irq: field(6)? + field(7)?,
    })
}

/// The NUMA node of CPU `core`, from sysfs; `None` where the kernel does not say.
pub fn numa_node(core: usize) -> Option<u32> {
    std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{core}"))
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("node")?
                .parse()
                .ok()
        })
}

/// User plus system CPU time of process `pid`, from `/proc/PID/stat`.
pub fn process_cpu_time(pid: u32) -> std::io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu(&stat).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))
}

fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5): the 12th and 13th after the name.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&h| h > 0)?;
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lines_give_user_system_and_both_interrupts() {
        let stat = "cpu  10 0 20 30 0 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\ncpu1 11 12 13 14 15 16 17 0 0 0\nintr 5\n";
        let cpu1 = super::parse_cpu_times(stat, 1).expect("cpu1");
        assert_eq!((cpu1.user, cpu1.system, cpu1.irq), (11, 13, 33));
        assert_eq!(super::parse_cpu_times(stat, 0).map(|t| t.irq), Some(13));
        assert_eq!(super::parse_cpu_times(stat, 2), None);
    }

    #[test]
    fn this_machine_has_a_cpu_zero_and_threads_have_ids() {
        assert!(super::cpu_times(0).is_some());
        assert!(super::thread_id() > 0);
    }

    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "42 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 300 200 0 0 20 0 1 0 5 6 7";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_secs(5)));
    }

    #[test]
    fn own_cpu_time_advances_and_pinning_works() {
        let before = process_cpu_time(std::process::id()).expect("stat");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(150) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = process_cpu_time(std::process::id()).expect("stat");
        assert!(after > before, "{before:?} -> {after:?}");
        assert!(own_cpu_time().expect("getrusage") >= Duration::from_millis(100));
        let cpus = online_cpus();
        assert!(!cpus.is_empty());
        pin_current_thread(cpus[0]).expect("pin");
    }
}
