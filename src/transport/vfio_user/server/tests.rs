//! A test device served on a real UNIX socket by a thread that drives `ClientConnection`s with a
//! small mio loop; the `vfio_user` crate's Client (the VMM of these tests) and a raw socket
//! client that sends junk talk to it.

use std::collections::HashMap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use rustix::event::EventfdFlags;
use rustix::fs::MemfdFlags;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use vfio_user::Client;

use super::*;
use crate::transport::vfio_user::protocol::{
    DeviceInfoRequest, HEADER_LEN, IrqInfoRequest, RegionData, RegionInfoRequest, device_flags,
    dma_map_flags, emit_message, flags, irq_info_flags,
};

/// 4 KiB of memory; a u32 `v` written at [`TRIGGER_OFFSET`] signals MSI-X vector `v`.
const REGION_MEM: u32 = 0;
/// 8 KiB of a memfd from file offset [`MMAP_FILE_OFFSET`]; its second page may be mmapped.
const REGION_MMAP: u32 = 1;
/// 2 MiB of memory, for transfers at the limit.
const REGION_BIG: u32 = 2;
/// No region (size 0).
const REGION_EMPTY: u32 = 3;
const NUM_REGIONS: u32 = 4;
const IRQ_MSIX: u32 = 2;
const MSIX_VECTORS: u32 = 4;
const TRIGGER_OFFSET: u64 = 0xf00;
const MMAP_FILE_OFFSET: u64 = 0x1000;
const MMAP_REGION_SIZE: u64 = 0x2000;
const SPARSE_AREA: (u64, u64) = (0x1000, 0x1000);
const SPARSE_PATTERN: &[u8] = b"the sparse mmap area";
const BIG_SIZE: usize = 2 << 20;
const TIMEOUT: Duration = Duration::from_secs(20);

/// What the device saw, for the tests to look at.
#[derive(Default)]
struct Log {
    /// Each DMA_MAP, with the first 16 bytes of its fd at its offset (if it had one).
    maps: Vec<(DmaMap, Option<Vec<u8>>)>,
    unmaps: Vec<DmaUnmap>,
    /// Each SET_IRQS and how many fds came with it.
    irq_sets: Vec<(IrqSet, usize)>,
    resets: usize,
    /// How each connection ended: `Ok` when the client hung up.
    closed: Vec<Result<(), ServerError>>,
}

struct TestDevice {
    mem: Vec<u8>,
    big: Vec<u8>,
    memfd: Arc<OwnedFd>,
    vectors: Vec<Option<OwnedFd>>,
    log: Arc<Mutex<Log>>,
}

impl TestDevice {
    fn new(log: Arc<Mutex<Log>>) -> Self {
        let memfd = rustix::fs::memfd_create("vfio-user-test-region", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&memfd, MMAP_FILE_OFFSET + MMAP_REGION_SIZE).unwrap();
        rustix::io::pwrite(&memfd, SPARSE_PATTERN, MMAP_FILE_OFFSET + SPARSE_AREA.0).unwrap();
        Self {
            mem: vec![0; 4096],
            big: vec![0; BIG_SIZE],
            memfd: Arc::new(memfd),
            vectors: (0..MSIX_VECTORS).map(|_| None).collect(),
            log,
        }
    }

    fn disconnected(&mut self) {
        self.vectors.iter_mut().for_each(|v| *v = None);
    }

    fn memory(&mut self, index: u32) -> Result<&mut Vec<u8>, Errno> {
        match index {
            REGION_MEM => Ok(&mut self.mem),
            REGION_BIG => Ok(&mut self.big),
            _ => Err(libc::EINVAL),
        }
    }
}

/// `offset..offset + len` within `size`, or EINVAL.
fn span(size: u64, offset: u64, len: usize) -> Result<std::ops::Range<usize>, Errno> {
    let end = offset.checked_add(len as u64).ok_or(libc::EINVAL)?;
    if end > size {
        return Err(libc::EINVAL);
    }
    Ok(offset as usize..end as usize)
}

impl Device for TestDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: device_flags::RESET | device_flags::PCI,
            num_regions: NUM_REGIONS,
            num_irqs: 5,
        }
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = region_flags::READ | region_flags::WRITE;
        Some(match index {
            REGION_MEM => RegionInfo {
                flags: rw,
                size: self.mem.len() as u64,
                mmap: None,
            },
            REGION_MMAP => RegionInfo {
                flags: rw,
                size: MMAP_REGION_SIZE,
                mmap: Some(RegionMmap {
                    fd: self.memfd.clone(),
                    file_offset: MMAP_FILE_OFFSET,
                    areas: vec![SPARSE_AREA],
                }),
            },
            REGION_BIG => RegionInfo {
                flags: rw,
                size: BIG_SIZE as u64,
                mmap: None,
            },
            REGION_EMPTY => RegionInfo {
                flags: 0,
                size: 0,
                mmap: None,
            },
            _ => return None,
        })
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        (index < 5).then_some(IrqInfo {
            flags: irq_info_flags::EVENTFD,
            count: if index == IRQ_MSIX { MSIX_VECTORS } else { 1 },
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        if index == REGION_MMAP {
            span(MMAP_REGION_SIZE, offset, data.len())?;
            let read = rustix::io::pread(&*self.memfd, &mut *data, MMAP_FILE_OFFSET + offset);
            return (read == Ok(data.len())).then_some(()).ok_or(libc::EIO);
        }
        let memory = self.memory(index)?;
        let range = span(memory.len() as u64, offset, data.len())?;
        data.copy_from_slice(&memory[range]);
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if index == REGION_MEM && offset == TRIGGER_OFFSET && data.len() == 4 {
            let vector = u32::from_le_bytes(data.try_into().unwrap()) as usize;
            let fd = self.vectors.get(vector).and_then(Option::as_ref);
            let fd = fd.ok_or(libc::EINVAL)?;
            rustix::io::write(fd, &1u64.to_ne_bytes()).map_err(|e| e.raw_os_error())?;
            return Ok(());
        }
        if index == REGION_MMAP {
            span(MMAP_REGION_SIZE, offset, data.len())?;
            let written = rustix::io::pwrite(&*self.memfd, data, MMAP_FILE_OFFSET + offset);
            return (written == Ok(data.len())).then_some(()).ok_or(libc::EIO);
        }
        let memory = self.memory(index)?;
        let range = span(memory.len() as u64, offset, data.len())?;
        memory[range].copy_from_slice(data);
        Ok(())
    }

    fn dma_map(&mut self, map: DmaMap, fd: Option<OwnedFd>) -> Result<(), Errno> {
        let content = fd.map(|fd| {
            let mut head = vec![0; 16];
            let read = rustix::io::pread(&fd, &mut head, map.offset).unwrap();
            head.truncate(read);
            head
        });
        self.log.lock().unwrap().maps.push((map, content));
        Ok(())
    }

    fn dma_unmap(&mut self, unmap: DmaUnmap) -> Result<(), Errno> {
        self.log.lock().unwrap().unmaps.push(unmap);
        Ok(())
    }

    fn set_irqs(&mut self, set: IrqSet, fds: Vec<OwnedFd>) -> Result<(), Errno> {
        if set.index != IRQ_MSIX {
            return Err(libc::EINVAL);
        }
        let end = set.start.checked_add(set.count).ok_or(libc::EINVAL)?;
        if end > MSIX_VECTORS {
            return Err(libc::EINVAL);
        }
        self.log
            .lock()
            .unwrap()
            .irq_sets
            .push((set.clone(), fds.len()));
        let mut fds = fds.into_iter();
        for vector in set.start..end {
            self.vectors[vector as usize] = fds.next();
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.log.lock().unwrap().resets += 1;
        Ok(())
    }
}

const WAKE: Token = Token(0);
const LISTENER: Token = Token(1);

/// The test device served on `dir/cntrl` by a thread; dropping it stops the thread.
struct Server {
    path: PathBuf,
    _dir: tempfile::TempDir,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    log: Arc<Mutex<Log>>,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cntrl");
        let listener = mio::net::UnixListener::bind(&path).unwrap();
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
        let log = Arc::new(Mutex::new(Log::default()));
        let device = TestDevice::new(log.clone());
        let serve_log = log.clone();
        let thread = std::thread::spawn(move || serve(poll, listener, device, &serve_log));
        Self {
            path,
            _dir: dir,
            waker,
            thread: Some(thread),
            log,
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }

    /// Waits until the log satisfies `done` (the server thread works on its own time).
    fn wait_for(&self, what: &str, done: impl Fn(&Log) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !done(&self.log()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the `n`th connection to end and returns how.
    fn closed(&self, n: usize) -> String {
        self.wait_for("a connection to close", |log| log.closed.len() >= n);
        match &self.log().closed[n - 1] {
            Ok(()) => "hung up".to_string(),
            Err(error) => chain(error),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !std::thread::panicking() {
                result.unwrap();
            }
        }
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text += ": ";
        text += &error.to_string();
        source = error.source();
    }
    text
}

/// The owner's side, as a reactor would do it: register, call on readiness, arm writability
/// while replies wait, drop on error or hang-up.
fn serve(
    mut poll: Poll,
    mut listener: mio::net::UnixListener,
    mut device: TestDevice,
    log: &Mutex<Log>,
) {
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(64);
    let mut clients: HashMap<Token, (ClientConnection, bool)> = HashMap::new();
    let mut next = 2;
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => panic!("poll: {error}"),
        }
        for event in &events {
            match event.token() {
                WAKE => return,
                LISTENER => loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let mut connection = ClientConnection::new(stream);
                            let token = Token(next);
                            next += 1;
                            poll.registry()
                                .register(&mut connection, token, Interest::READABLE)
                                .unwrap();
                            clients.insert(token, (connection, false));
                        }
                        Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                        Err(error) => panic!("accept: {error}"),
                    }
                },
                token => {
                    let Some((connection, armed)) = clients.get_mut(&token) else {
                        continue;
                    };
                    let mut result = Ok(ConnectionState::Open);
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        result = connection.handle_readable(&mut device);
                    }
                    if event.is_writable() && matches!(result, Ok(ConnectionState::Open)) {
                        result = connection.handle_writable(&mut device);
                    }
                    match result {
                        Ok(ConnectionState::Open) => {
                            let wants = connection.wants_writable();
                            if wants != *armed {
                                let interest = if wants {
                                    Interest::READABLE | Interest::WRITABLE
                                } else {
                                    Interest::READABLE
                                };
                                poll.registry()
                                    .reregister(connection, token, interest)
                                    .unwrap();
                                *armed = wants;
                            }
                        }
                        ended => {
                            let (mut connection, _) = clients.remove(&token).unwrap();
                            poll.registry().deregister(&mut connection).unwrap();
                            drop(connection);
                            device.disconnected();
                            log.lock().unwrap().closed.push(ended.map(|_| ()));
                        }
                    }
                }
            }
        }
    }
}

/// Runs `f` on its own thread and fails the test if it takes longer than [`TIMEOUT`] (the
/// Client blocks for ever on a reply that does not come).
fn with_timeout<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the client timed out"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the client panicked"),
    }
}

fn client(path: &Path) -> Client {
    let path = path.to_owned();
    with_timeout(move || Client::new(&path).unwrap())
}

fn memfd_with(content: &[u8], at: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("vfio-user-test-guest", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 0x10000).unwrap();
    rustix::io::pwrite(&fd, content, at).unwrap();
    fd
}

fn eventfd() -> OwnedFd {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap()
}

fn eventfd_count(fd: &OwnedFd) -> Option<u64> {
    let mut value = [0u8; 8];
    match rustix::io::read(fd, &mut value) {
        Ok(8) => Some(u64::from_ne_bytes(value)),
        Ok(n) => panic!("eventfd read {n} bytes"),
        Err(rustix::io::Errno::AGAIN) => None,
        Err(error) => panic!("eventfd: {error}"),
    }
}

/// A client that writes whatever bytes it is told to, with fds.
struct Raw {
    stream: StdUnixStream,
    next_id: u16,
}

/// A reply: its header, body and the fds that came with it.
struct Reply {
    header: Header,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Reply {
    fn errno(&self) -> Option<u32> {
        self.header.is_error().then_some(self.header.error)
    }
}

impl Raw {
    fn connect(server: &Server) -> Self {
        let stream = StdUnixStream::connect(&server.path).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Self {
            stream,
            next_id: 100,
        }
    }

    /// Connected and through VERSION.
    fn negotiated(server: &Server) -> Self {
        let mut raw = Self::connect(server);
        let reply = raw.version(0, 0, b"{\"capabilities\":{\"max_msg_fds\":1}}\0");
        assert_eq!(reply.errno(), None);
        raw
    }

    fn version(&mut self, major: u16, minor: u16, caps: &[u8]) -> Reply {
        self.call(Command::Version, 0, &[], |out| {
            out.extend_from_slice(&major.to_le_bytes());
            out.extend_from_slice(&minor.to_le_bytes());
            out.extend_from_slice(caps);
        })
    }

    fn message(
        &mut self,
        command: Command,
        flags: u32,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> Vec<u8> {
        let mut out = Vec::new();
        emit_message(&mut out, self.next_id, command, flags, 0, body).unwrap();
        self.next_id += 1;
        out
    }

    /// Sends a command; returns its msg_id.
    fn send(
        &mut self,
        command: Command,
        flags: u32,
        fds: &[BorrowedFd<'_>],
        body: impl FnOnce(&mut Vec<u8>),
    ) -> u16 {
        let id = self.next_id;
        let bytes = self.message(command, flags, body);
        self.send_bytes(&bytes, fds);
        id
    }

    /// Sends a command and reads the reply, which must be for it.
    fn call(
        &mut self,
        command: Command,
        flags: u32,
        fds: &[BorrowedFd<'_>],
        body: impl FnOnce(&mut Vec<u8>),
    ) -> Reply {
        let id = self.send(command, flags, fds, body);
        let reply = self.recv();
        assert_eq!(reply.header.msg_id, id);
        assert_eq!(reply.header.command, command);
        assert_eq!(reply.header.message_type(), MessageType::Reply);
        reply
    }

    /// One `sendmsg` of `bytes` with `fds`.
    fn send_bytes(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len())) + 8];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        let sent = rustix::net::sendmsg(
            &self.stream,
            &[std::io::IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .unwrap();
        assert_eq!(sent, bytes.len());
    }

    fn recv(&mut self) -> Reply {
        let mut head = [0u8; HEADER_LEN];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4)) + 8];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut got = 0;
        let mut fds = Vec::new();
        while got < HEADER_LEN {
            let received = rustix::net::recvmsg(
                &self.stream,
                &mut [std::io::IoSliceMut::new(&mut head[got..])],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .unwrap();
            assert!(received.bytes > 0, "the server closed the connection");
            got += received.bytes;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
        }
        let header = Header::parse(&head).unwrap();
        let mut body = vec![0; header.body_len()];
        self.stream.read_exact(&mut body).unwrap();
        Reply { header, body, fds }
    }

    /// The server closed the connection (with nothing more to say).
    fn expect_closed(&mut self) {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }

    fn device_info(&mut self) -> DeviceInfo {
        let reply = self.call(Command::DeviceGetInfo, 0, &[], |out| {
            DeviceInfoRequest { argsz: 16 }.emit(out);
        });
        assert_eq!(reply.errno(), None);
        DeviceInfo::parse(&reply.body).unwrap()
    }

    fn region_info(&mut self, index: u32, argsz: u32) -> Reply {
        self.call(Command::DeviceGetRegionInfo, 0, &[], |out| {
            RegionInfoRequest { argsz, index }.emit(out);
        })
    }

    fn region_read(&mut self, region: u32, offset: u64, count: u32) -> Reply {
        self.call(Command::RegionRead, 0, &[], |out| {
            RegionAccess {
                offset,
                region,
                count,
            }
            .emit(out);
        })
    }

    fn dma_map(&mut self, map: DmaMap, fds: &[BorrowedFd<'_>]) -> Reply {
        self.call(Command::DmaMap, 0, fds, |out| map.emit(out))
    }
}

fn guest_map(offset: u64) -> DmaMap {
    DmaMap {
        flags: dma_map_flags::READ | dma_map_flags::WRITE,
        offset,
        iova: 0x1_0000_0000,
        size: 0x1000,
    }
}

/// A socket pair end that reads EOF once every copy of its peer is closed: sent to the server
/// as an fd, it tells whether the server closed its copy.
fn closed_probe() -> (StdUnixStream, OwnedFd) {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let ours = StdUnixStream::from(ours);
    ours.set_read_timeout(Some(TIMEOUT)).unwrap();
    (ours, theirs)
}

fn assert_peer_closed(probe: &mut StdUnixStream) {
    let mut byte = [0u8; 1];
    assert_eq!(
        probe.read(&mut byte).unwrap(),
        0,
        "the server kept the fd open"
    );
}

#[test]
fn client_negotiates_and_reads_every_region() {
    let server = Server::start();
    let client = client(&server.path);
    let mem = client.region(REGION_MEM).unwrap();
    assert_eq!(mem.size, 4096);
    assert_eq!(mem.flags, region_flags::READ | region_flags::WRITE);
    assert!(mem.file_offset.is_none());
    assert!(mem.sparse_areas.is_empty());
    let mmap = client.region(REGION_MMAP).unwrap();
    assert_eq!(mmap.size, MMAP_REGION_SIZE);
    assert_eq!(
        mmap.flags,
        region_flags::READ | region_flags::WRITE | region_flags::MMAP | region_flags::CAPS
    );
    assert_eq!(mmap.file_offset.as_ref().unwrap().start(), MMAP_FILE_OFFSET);
    let areas: Vec<_> = mmap
        .sparse_areas
        .iter()
        .map(|a| (a.offset, a.size))
        .collect();
    assert_eq!(areas, [SPARSE_AREA]);
    assert_eq!(client.region(REGION_BIG).unwrap().size, BIG_SIZE as u64);
    assert_eq!(client.region(REGION_EMPTY).unwrap().size, 0);
    assert!(client.region(NUM_REGIONS).is_none());
}

/// The fd a region's info comes with maps the region: what the device put there is seen
/// through the mapping, and what is stored through the mapping the device reads back.
#[test]
#[allow(unsafe_code)]
fn region_fd_maps_the_sparse_area() {
    let server = Server::start();
    let path = server.path.clone();
    with_timeout(move || {
        let mut client = Client::new(&path).unwrap();
        let region = client.region(REGION_MMAP).unwrap();
        let file_offset = region.file_offset.as_ref().unwrap();
        let fd = file_offset.file().as_fd().try_clone_to_owned().unwrap();
        let at = file_offset.start() + region.sparse_areas[0].offset;
        let len = region.sparse_areas[0].size as usize;
        // SAFETY: a new shared mapping of `len` bytes of a memfd the test holds; the slices
        // made from it live only until the munmap below, and nothing else maps that address.
        unsafe {
            let ptr = rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                at,
            )
            .unwrap();
            let mapped = std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len);
            assert_eq!(&mapped[..SPARSE_PATTERN.len()], SPARSE_PATTERN);
            mapped[100..104].copy_from_slice(b"VMM!");
            let mut back = [0u8; 4];
            client
                .region_read(REGION_MMAP, SPARSE_AREA.0 + 100, &mut back)
                .unwrap();
            assert_eq!(&back, b"VMM!");
            rustix::mm::munmap(ptr, len).unwrap();
        }
    });
}

#[test]
fn region_reads_and_writes_round_trip() {
    let server = Server::start();
    let path = server.path.clone();
    with_timeout(move || {
        let mut client = Client::new(&path).unwrap();
        client
            .region_write(REGION_MEM, 0x10, &[1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        let mut back = [0u8; 8];
        client.region_read(REGION_MEM, 0x10, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut four = [0u8; 4];
        client.region_read(REGION_MEM, 0x12, &mut four).unwrap();
        assert_eq!(four, [3, 4, 5, 6]);

        client
            .region_write(REGION_MMAP, 8, b"through the socket")
            .unwrap();
        let mut back = [0u8; 18];
        client.region_read(REGION_MMAP, 8, &mut back).unwrap();
        assert_eq!(&back, b"through the socket");

        // A transfer of max_data_xfer_size each way: messages of more than a read, replies of
        // more than the socket holds.
        let big: Vec<u8> = (0..MAX_DATA_XFER_SIZE).map(|i| (i % 251) as u8).collect();
        client.region_write(REGION_BIG, 0x1000, &big).unwrap();
        let mut back = vec![0u8; big.len()];
        client.region_read(REGION_BIG, 0x1000, &mut back).unwrap();
        assert!(back == big, "1 MiB read back differs");
    });
}

#[test]
fn dma_map_hands_the_device_its_fd() {
    let server = Server::start();
    let path = server.path.clone();
    with_timeout(move || {
        let mut client = Client::new(&path).unwrap();
        let guest = memfd_with(b"guest memory 0x2000", 0x2000);
        client
            .dma_map(0x2000, 0x1_0000_0000, 0x1000, guest.as_raw_fd())
            .unwrap();
        client.dma_unmap(0x1_0000_0000, 0x1000).unwrap();
    });
    let log = server.log();
    assert_eq!(log.maps.len(), 1);
    let (map, content) = &log.maps[0];
    assert_eq!(*map, guest_map(0x2000));
    assert_eq!(content.as_deref(), Some(&b"guest memory 0x2"[..]));
    assert_eq!(
        log.unmaps,
        [DmaUnmap {
            flags: 0,
            iova: 0x1_0000_0000,
            size: 0x1000
        }]
    );
}

#[test]
fn set_irqs_hands_over_eventfds_that_the_device_signals() {
    let server = Server::start();
    let path = server.path.clone();
    with_timeout(move || {
        let mut client = Client::new(&path).unwrap();
        let info = client.get_irq_info(IRQ_MSIX).unwrap();
        assert_eq!((info.index, info.count), (IRQ_MSIX, MSIX_VECTORS));
        assert_eq!(info.flags, irq_info_flags::EVENTFD);
        let vectors = [eventfd(), eventfd()];
        let raw: Vec<_> = vectors.iter().map(AsRawFd::as_raw_fd).collect();
        let flags = irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER;
        client.set_irqs(IRQ_MSIX, flags, 0, 2, &raw).unwrap();
        client
            .region_write(REGION_MEM, TRIGGER_OFFSET, &1u32.to_le_bytes())
            .unwrap();
        assert_eq!(eventfd_count(&vectors[1]), Some(1));
        assert_eq!(eventfd_count(&vectors[0]), None);
        client
            .region_write(REGION_MEM, TRIGGER_OFFSET, &0u32.to_le_bytes())
            .unwrap();
        assert_eq!(eventfd_count(&vectors[0]), Some(1));
    });
    let log = server.log();
    assert_eq!(log.irq_sets.len(), 1);
    assert_eq!(log.irq_sets[0].1, 2);
    assert_eq!((log.irq_sets[0].0.start, log.irq_sets[0].0.count), (0, 2));
}

#[test]
fn reset_reaches_the_device() {
    let server = Server::start();
    let path = server.path.clone();
    with_timeout(move || Client::new(&path).unwrap().reset().unwrap());
    assert_eq!(server.log().resets, 1);
}

#[test]
fn version_reply_is_what_qemu_accepts() {
    let server = Server::start();
    let mut raw = Raw::connect(&server);
    let qemu_caps = br#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;
    let mut caps = qemu_caps.to_vec();
    caps.push(0);
    let request_size = HEADER_LEN + 4 + caps.len();
    let reply = raw.version(0, 0, &caps);
    assert_eq!(reply.errno(), None);
    // QEMU reads the reply into the request's buffer, checks major == 0, minor <= 0, the NUL
    // at the very end, max_msg_fds <= 16, max_data_xfer_size <= 64 MiB, pgsizes a multiple of
    // 4096 and max_dma_maps <= 65535.
    assert!(reply.header.msg_size as usize <= request_size);
    assert_eq!(reply.body.last(), Some(&0));
    let version = Version::parse(&reply.body).unwrap();
    assert_eq!((version.major, version.minor), (0, 0));
    let caps = version.capabilities;
    assert_eq!(caps.max_msg_fds, 8);
    assert_eq!(caps.max_data_xfer_size, 1 << 20);
    assert_eq!(caps.pgsizes, 4096);
    assert!(caps.max_dma_maps <= 65535);
    assert!(!caps.write_multiple);
    assert!(!String::from_utf8_lossy(&reply.body).contains("migration"));

    // A client with a later minor gets ours; a second VERSION is refused, the connection stays.
    let mut later = Raw::connect(&server);
    let reply = later.version(0, 7, b"\0");
    assert_eq!(Version::parse(&reply.body).unwrap().minor, 0);
    let again = later.version(0, 0, b"\0");
    assert_eq!(again.errno(), Some(libc::EINVAL as u32));
    assert_eq!(later.device_info().num_regions, NUM_REGIONS);
}

#[test]
fn unknown_and_unsupported_commands_get_enotsup_and_the_next_message_works() {
    let server = Server::start();
    let mut raw = Raw::negotiated(&server);
    for command in [
        Command::Unknown(0x99),
        Command::DmaRead,
        Command::DeviceFeature,
    ] {
        let reply = raw.call(command, 0, &[], |out| out.extend_from_slice(&[0xee; 100]));
        assert_eq!(reply.errno(), Some(libc::ENOTSUP as u32));
        assert_eq!(reply.header.msg_size, 16);
        assert!(reply.body.is_empty());
        assert_eq!(raw.device_info().num_regions, NUM_REGIONS);
    }
    // An unsupported command with NO_REPLY gets nothing, and is skipped all the same.
    raw.send(Command::RegionWriteMulti, flags::NO_REPLY, &[], |out| {
        out.extend_from_slice(&[1; 40]);
    });
    assert_eq!(raw.device_info().num_irqs, 5);
}

#[test]
fn no_reply_commands_get_no_reply() {
    let server = Server::start();
    let mut raw = Raw::negotiated(&server);
    raw.send(Command::RegionWrite, flags::NO_REPLY, &[], |out| {
        RegionData {
            offset: 0x40,
            region: REGION_MEM,
            data: b"posted",
        }
        .emit(out);
    });
    // Failing with NO_REPLY says nothing either.
    raw.send(Command::RegionWrite, flags::NO_REPLY, &[], |out| {
        RegionData {
            offset: 0,
            region: 9,
            data: b"x",
        }
        .emit(out);
    });
    let reply = raw.region_read(REGION_MEM, 0x40, 6);
    assert_eq!(reply.errno(), None);
    let data = RegionData::parse(&reply.body).unwrap();
    assert_eq!(
        (data.offset, data.region, data.data),
        (0x40, REGION_MEM, &b"posted"[..])
    );
}

#[test]
fn device_and_argument_errors_become_error_replies() {
    let server = Server::start();
    let mut raw = Raw::negotiated(&server);
    let einval = Some(libc::EINVAL as u32);
    assert_eq!(raw.region_read(9, 0, 4).errno(), einval, "no such region");
    assert_eq!(
        raw.region_read(REGION_MEM, 4094, 4).errno(),
        einval,
        "past the end"
    );
    assert_eq!(
        raw.region_read(REGION_BIG, 0, MAX_DATA_XFER_SIZE + 1)
            .errno(),
        einval,
        "more than max_data_xfer_size"
    );
    assert_eq!(raw.region_info(7, 32).errno(), einval, "no region info");
    assert_eq!(raw.region_info(0, 16).errno(), einval, "argsz too small");
    let irq_info = raw.call(Command::DeviceGetIrqInfo, 0, &[], |out| {
        IrqInfoRequest {
            argsz: 16,
            index: 9,
        }
        .emit(out);
    });
    assert_eq!(irq_info.errno(), einval, "no such irq index");
    let dirty = raw.call(Command::DmaUnmap, 0, &[], |out| {
        DmaUnmap {
            flags: dma_unmap_flags::GET_DIRTY_BITMAP,
            iova: 0,
            size: 0x1000,
        }
        .emit(out);
    });
    assert_eq!(dirty.errno(), Some(libc::ENOTSUP as u32));
    let set = |count| IrqSet {
        flags: irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER,
        index: IRQ_MSIX,
        start: 0,
        count,
        data: Vec::new(),
    };
    let one = eventfd();
    let short = raw.call(Command::DeviceSetIrqs, 0, &[one.as_fd()], |out| {
        set(2).emit(out)
    });
    assert_eq!(short.errno(), einval, "two vectors, one eventfd");
    let device = raw.call(Command::DeviceSetIrqs, 0, &[], |out| set(9).emit(out));
    assert_eq!(
        device.errno(),
        einval,
        "the device refuses vectors it does not have"
    );
    // None of it hurt the connection.
    assert_eq!(raw.device_info().num_regions, NUM_REGIONS);
    assert!(server.log().irq_sets.is_empty());
}

#[test]
fn region_info_without_room_says_the_size_needed_and_the_client_asks_again() {
    let server = Server::start();
    let mut raw = Raw::negotiated(&server);
    let needed = (REGION_INFO_LEN + RegionInfoReply::sparse_mmap_len(1)) as u32;
    let short = raw.region_info(REGION_MMAP, 32);
    assert_eq!(short.errno(), None);
    assert_eq!(short.body.len(), REGION_INFO_LEN);
    assert!(
        short.fds.is_empty(),
        "the fd comes with the whole reply only"
    );
    let info = RegionInfoReply::parse(&short.body).unwrap();
    assert_eq!(info.argsz, needed);
    assert_eq!(info.sparse_mmap, None);
    assert_eq!(
        &short.body[4..8],
        &(region_flags::READ | region_flags::WRITE | region_flags::MMAP).to_le_bytes()
    );

    for argsz in [needed, 4096] {
        let whole = raw.region_info(REGION_MMAP, argsz);
        assert_eq!(whole.body.len(), needed as usize);
        assert_eq!(whole.fds.len(), 1);
        let info = RegionInfoReply::parse(&whole.body).unwrap();
        assert_eq!(info.argsz, needed);
        assert_eq!(info.offset, MMAP_FILE_OFFSET);
        assert_eq!(info.size, MMAP_REGION_SIZE);
        assert_eq!(info.sparse_mmap, Some(vec![SPARSE_AREA]));
        let mut head = vec![0; SPARSE_PATTERN.len()];
        rustix::io::pread(&whole.fds[0], &mut head, info.offset + SPARSE_AREA.0).unwrap();
        assert_eq!(head, SPARSE_PATTERN);
    }
}

#[test]
fn a_client_that_takes_no_fds_gets_no_mmap() {
    let server = Server::start();
    let mut raw = Raw::connect(&server);
    let reply = raw.version(0, 0, b"{\"capabilities\":{\"max_msg_fds\":0}}\0");
    assert_eq!(reply.errno(), None);
    let info = raw.region_info(REGION_MMAP, 4096);
    assert!(info.fds.is_empty());
    let parsed = RegionInfoReply::parse(&info.body).unwrap();
    assert_eq!(parsed.flags & region_flags::MMAP, 0);
    assert_eq!(parsed.sparse_mmap, None);
    assert_eq!(parsed.argsz as usize, REGION_INFO_LEN);
}

#[test]
fn fds_on_commands_that_take_none_are_closed() {
    let server = Server::start();
    let mut raw = Raw::negotiated(&server);
    let (mut probe, theirs) = closed_probe();
    let reply = raw.call(Command::DeviceGetInfo, 0, &[theirs.as_fd()], |out| {
        DeviceInfoRequest { argsz: 16 }.emit(out);
    });
    assert_eq!(reply.errno(), None);
    drop(theirs);
    assert_peer_closed(&mut probe);

    let (mut probe, theirs) = closed_probe();
    let reply = raw.call(Command::Unknown(77), 0, &[theirs.as_fd()], |_| {});
    assert_eq!(reply.errno(), Some(libc::ENOTSUP as u32));
    drop(theirs);
    assert_peer_closed(&mut probe);

    // DMA_MAP takes one fd; with two it is refused and both are closed.
    let (mut probe_a, a) = closed_probe();
    let (mut probe_b, b) = closed_probe();
    let reply = raw.dma_map(guest_map(0), &[a.as_fd(), b.as_fd()]);
    assert_eq!(reply.errno(), Some(libc::EINVAL as u32));
    drop((a, b));
    assert_peer_closed(&mut probe_a);
    assert_peer_closed(&mut probe_b);
    assert!(server.log().maps.is_empty());
}

#[test]
fn fds_belong_to_the_last_message_that_starts_in_their_read() {
    let server = Server::start();
    let mut raw = Raw::negotiated(&server);
    let map =
        |raw: &mut Raw, offset| raw.message(Command::DmaMap, 0, |out| guest_map(offset).emit(out));
    let info = |raw: &mut Raw| {
        raw.message(Command::DeviceGetInfo, 0, |out| {
            DeviceInfoRequest { argsz: 16 }.emit(out)
        })
    };
    let guest = memfd_with(b"0123456789abcdef", 0);

    // GET_INFO then DMA_MAP in one sendmsg with the fd: the map has it.
    let mut both = info(&mut raw);
    both.extend(map(&mut raw, 0));
    raw.send_bytes(&both, &[guest.as_fd()]);
    assert_eq!(raw.recv().errno(), None);
    assert_eq!(raw.recv().errno(), None);
    // DMA_MAP with the fd, then a DMA_MAP without one in a second sendmsg.
    let first = map(&mut raw, 0);
    let second = map(&mut raw, 4);
    raw.send_bytes(&first, &[guest.as_fd()]);
    raw.send_bytes(&second, &[]);
    assert_eq!(raw.recv().errno(), None);
    assert_eq!(raw.recv().errno(), None);
    // DMA_MAP then GET_INFO in one sendmsg with the fd: the fd is GET_INFO's, which takes none.
    let mut both = map(&mut raw, 8);
    both.extend(info(&mut raw));
    raw.send_bytes(&both, &[guest.as_fd()]);
    assert_eq!(raw.recv().errno(), None);
    assert_eq!(raw.recv().errno(), None);

    let log = server.log();
    let seen: Vec<_> = log
        .maps
        .iter()
        .map(|(map, content)| (map.offset, content.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (0, Some(b"0123456789abcdef".to_vec())),
            (0, Some(b"0123456789abcdef".to_vec())),
            (4, None),
            (8, None),
        ]
    );
}

#[test]
fn replies_wait_while_the_client_does_not_read() {
    let server = Server::start();
    let mut raw = Raw::negotiated(&server);
    let pattern: Vec<u8> = (0..MAX_DATA_XFER_SIZE).map(|i| (i % 253) as u8).collect();
    let mut chunk = 0;
    while chunk < pattern.len() {
        let end = (chunk + 60_000).min(pattern.len());
        let reply = raw.call(Command::RegionWrite, 0, &[], |out| {
            RegionData {
                offset: chunk as u64,
                region: REGION_BIG,
                data: &pattern[chunk..end],
            }
            .emit(out);
        });
        assert_eq!(reply.errno(), None);
        chunk = end;
    }
    // Eight 1 MiB reads asked at once: more than the server buffers for a client, so it
    // stops reading until the replies drain.
    let ids: Vec<u16> = (0..8)
        .map(|_| {
            raw.send(Command::RegionRead, 0, &[], |out| {
                RegionAccess {
                    offset: 0,
                    region: REGION_BIG,
                    count: MAX_DATA_XFER_SIZE,
                }
                .emit(out);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    for id in ids {
        let reply = raw.recv();
        assert_eq!((reply.header.msg_id, reply.errno()), (id, None));
        let data = RegionData::parse(&reply.body).unwrap();
        assert!(data.data == pattern.as_slice(), "reply {id} differs");
    }
    assert_eq!(raw.device_info().num_regions, NUM_REGIONS);
}

#[test]
fn junk_closes_only_that_client_and_new_clients_are_served() {
    let server = Server::start();
    let mut bystander = Raw::negotiated(&server);
    let mut closed = 0;
    let mut expect = |raw: &mut Raw, what: &str| {
        raw.expect_closed();
        closed += 1;
        let how = server.closed(closed);
        assert!(how.contains(what), "expected {what:?}, got {how:?}");
        assert_eq!(bystander.device_info().num_regions, NUM_REGIONS);
    };

    // A header whose size is below a header.
    let mut raw = Raw::negotiated(&server);
    let mut bytes = raw.message(Command::DeviceGetInfo, 0, |out| {
        DeviceInfoRequest { argsz: 16 }.emit(out)
    });
    bytes[4..8].copy_from_slice(&8u32.to_le_bytes());
    raw.send_bytes(&bytes, &[]);
    expect(&mut raw, "smaller than the header");

    // A huge msg_size: refused at its header, its bytes not waited for.
    let mut raw = Raw::negotiated(&server);
    let mut bytes = raw.message(Command::RegionWrite, 0, |out| {
        out.extend_from_slice(&[0; 16])
    });
    bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    raw.send_bytes(&bytes, &[]);
    expect(&mut raw, "exceeds the limit");

    // A REGION_WRITE whose count exceeds its body.
    let mut raw = Raw::negotiated(&server);
    raw.send(Command::RegionWrite, 0, &[], |out| {
        RegionAccess {
            offset: 0,
            region: REGION_MEM,
            count: 100,
        }
        .emit(out);
        out.extend_from_slice(&[1, 2, 3, 4]);
    });
    expect(&mut raw, "count 100 does not match its 4 data bytes");

    // A body too short for its command.
    let mut raw = Raw::negotiated(&server);
    raw.send(Command::DmaMap, 0, &[], |out| {
        out.extend_from_slice(&[0; 12])
    });
    expect(&mut raw, "DMA_MAP needs 32 bytes, has 12");

    // A reply from the client, and a message of an unknown type.
    for (kind, what) in [(flags::TYPE_REPLY, "type 1"), (0x7, "type 7")] {
        let mut raw = Raw::negotiated(&server);
        raw.send(Command::DeviceGetInfo, kind, &[], |out| {
            DeviceInfoRequest { argsz: 16 }.emit(out)
        });
        expect(&mut raw, what);
    }

    // A command before VERSION.
    let mut raw = Raw::connect(&server);
    raw.send(Command::DeviceGetInfo, 0, &[], |out| {
        DeviceInfoRequest { argsz: 16 }.emit(out)
    });
    expect(&mut raw, "DeviceGetInfo before VERSION");

    // VERSION with capabilities that are not JSON: EINVAL, then closed.
    let mut raw = Raw::connect(&server);
    let reply = raw.version(0, 0, b"{\"capabilities\":\0");
    assert_eq!(reply.errno(), Some(libc::EINVAL as u32));
    expect(&mut raw, "not the JSON object");

    // VERSION with another major: ENOTSUP, then closed.
    let mut raw = Raw::connect(&server);
    let reply = raw.version(1, 0, b"\0");
    assert_eq!(reply.errno(), Some(libc::ENOTSUP as u32));
    expect(&mut raw, "version 1.0 is not supported");

    // More fds with one message than max_msg_fds.
    let mut raw = Raw::negotiated(&server);
    let fds: Vec<OwnedFd> = (0..MAX_FDS_PER_MESSAGE + 2).map(|_| eventfd()).collect();
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    raw.send(Command::DeviceGetInfo, 0, &borrowed, |out| {
        DeviceInfoRequest { argsz: 16 }.emit(out)
    });
    expect(&mut raw, "file descriptors with one read");

    // A short header, then the client hangs up: no error, the connection just ends.
    let mut raw = Raw::negotiated(&server);
    raw.stream
        .write_all(&[1, 0, 4, 0, 32, 0, 0, 0, 0, 0])
        .unwrap();
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    expect(&mut raw, "hung up");

    // Half a message, then the client is gone.
    let mut raw = Raw::negotiated(&server);
    let bytes = raw.message(Command::RegionWrite, 0, |out| {
        RegionData {
            offset: 0,
            region: REGION_BIG,
            data: &[7; 1000],
        }
        .emit(out);
    });
    raw.stream.write_all(&bytes[..500]).unwrap();
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    expect(&mut raw, "hung up");

    // After all that, a VMM connects and is served.
    let mut client = client(&server.path);
    let mut back = [0u8; 4];
    let path_client = with_timeout(move || {
        client.region_read(REGION_MEM, 0, &mut back).unwrap();
        back
    });
    assert_eq!(path_client, [0; 4]);
}
