//! Surviving a file that shrinks under a shared mapping.
//!
//! A VMM hands us its guest memory as file descriptors, and nothing stops it from truncating
//! such a file after we mapped it (a memfd without seals, a file in /dev/shm). Touching a page
//! past the new end raises SIGBUS, which would kill the target and every host it serves. So
//! every access to a [`Mapping`](super::mmap::Mapping) runs [`guarded`]: a SIGBUS on the
//! accessing thread while the guard is up maps an anonymous page over the faulting one and
//! returns, the copy finishes on that page, and the caller learns that the access faulted
//! and fails it (the mapping refuses every access after that). A SIGBUS anywhere else goes to
//! the handler that was there before (Rust's own, or the default: the process dies, as it
//! should for a bug of ours).

use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// An access to a mapping runs on this thread.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// A SIGBUS was absorbed during the guarded access.
    static FAULTED: Cell<bool> = const { Cell::new(false) };
}

/// The page size, read before the handler can run (sysconf is not async-signal-safe).
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

/// The action SIGBUS had before ours, for faults that are not ours; and whether installing
/// worked.
static PREVIOUS: OnceLock<Result<libc::sigaction, i32>> = OnceLock::new();

/// Installs the handler once per process. Without it (sigaction failed), accesses still work
/// and a shrunk file kills the process as before.
pub fn install() -> io::Result<()> {
    match PREVIOUS.get_or_init(install_handler) {
        Ok(_) => Ok(()),
        Err(errno) => Err(io::Error::from_raw_os_error(*errno)),
    }
}

fn install_handler() -> Result<libc::sigaction, i32> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if let Ok(page) = usize::try_from(page) {
        if page > 0 {
            PAGE_SIZE.store(page, Ordering::Relaxed);
        }
    }
    let mut previous = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a zeroed sigaction is a valid value of the C struct; every field we rely on is
    // set below, and sigemptyset initialises the mask it is given.
    let mut action: libc::sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigbus;
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: both pointers are to live, properly sized sigaction values.
    let rc = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, previous.as_mut_ptr())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    // SAFETY: sigaction succeeded, so it filled `previous`.
    Ok(unsafe { previous.assume_init() })
}

/// Runs `access` (a copy to or from a mapping) with the guard up; returns its result and
/// whether a SIGBUS was absorbed while it ran (then what it read is not the file's).
pub fn guarded<T>(access: impl FnOnce() -> T) -> (T, bool) {
    GUARDED.set(true);
    FAULTED.set(false);
    let out = access();
    GUARDED.set(false);
    (out, FAULTED.replace(false))
}

/// The SIGBUS handler. Only async-signal-safe work: two thread-local cells (const-initialised,
/// no destructor: plain TLS reads), mmap and sigaction.
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    if GUARDED.get() && !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGBUS it
        // carries the faulting address.
        let addr = unsafe { (*info).si_addr() } as usize;
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        let at = addr & !(page - 1);
        // SAFETY: the page is inside a mapping of ours that the guarded access is reading or
        // writing (only such accesses raise the guard); replacing it with a private zero page
        // changes nothing anyone else sees and lets the access finish. The mapping is never
        // trusted again: the caller fails it.
        let replaced = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if replaced != libc::MAP_FAILED {
            FAULTED.set(true);
            return;
        }
    }
    // Not ours: the previous action gets it when the instruction faults again.
    let previous = match PREVIOUS.get() {
        Some(Ok(previous)) => *previous,
        _ => {
            // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask.
            unsafe { MaybeUninit::zeroed().assume_init() }
        }
    };
    // SAFETY: `previous` is a valid sigaction (what the kernel gave us, or SIG_DFL).
    unsafe {
        libc::sigaction(signal, &previous, std::ptr::null_mut());
    }
}
