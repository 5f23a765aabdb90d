//! vfio-user against the real binary: a fake VMM (`vfio_user::Client`, rust-vmm's VMM side)
//! with a guest NVMe driver in it brings the controller up through BAR0 and config space,
//! creates queues in a memfd "guest RAM", and moves data through PRPs, as QEMU and Linux's
//! `nvme` driver do.

// Test patterns and page offsets are small by construction.
#![allow(clippy::cast_possible_truncation)]

mod common;
#[path = "vfio_user/guest.rs"]
mod guest;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{SUBNQN, TargetProcess, free_port};
use guest::{DATA, Guest, IDENTIFY, PAGE, PRP_LISTS, rw, sqe};

struct VfioTarget {
    target: TargetProcess,
    socket: PathBuf,
}

fn start(interrupt_mode: bool, namespace: &str) -> VfioTarget {
    start_with(interrupt_mode, false, namespace)
}

/// A target in interrupt or poll mode; `mappable` offers BAR0's doorbell page for mapping
/// (poll mode only).
fn start_with(interrupt_mode: bool, mappable: bool, namespace: &str) -> VfioTarget {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let vfio_dir = dir.path().join("vm0");
    let config = format!(
        "[target]\ninterrupt_mode = {interrupt_mode}\ncore_mask = \"0x1\"\ncontrol_socket = \"{}\"\n\n\
         [transport.tcp]\n\n\
         [transport.vfiouser]\ndisable_mappable_bar0 = {}\n\n\
         [[subsystem]]\nnqn = \"{SUBNQN}\"\nallow_any_host = true\n\n\
         [[subsystem.listener]]\ntransport = \"vfiouser\"\npath = \"{}\"\n\n\
         [[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {port}\n\n\
         [[subsystem.namespace]]\nnsid = 1\n{namespace}\n",
        dir.path().join("ctl.sock").display(),
        !mappable,
        vfio_dir.display(),
    );
    let target = TargetProcess::start_with_config(dir, port, &config);
    let socket = vfio_dir.join("cntrl");
    wait_for(&socket, &target);
    VfioTarget { target, socket }
}

fn wait_for(socket: &Path, target: &TargetProcess) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "no vfio-user socket at {}:\n{}",
            socket.display(),
            target.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pattern that differs per byte and per run of the test.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 9) as u8))
        .collect()
}

#[test]
fn a_guest_brings_the_controller_up_and_moves_data_through_prps() {
    let mut t = start(true, "ram = { size = \"16MiB\" }");
    let mut g = Guest::connect(&t.socket, 4);

    // The PCI function a driver binds to: NVMe class, our IDs, MSI-X in the capability list.
    let class = g.config_read32(0x08) >> 8;
    assert_eq!(class, 0x01_08_02, "class code");
    assert!(g.find_capability(0x10).is_some(), "PCI Express capability");
    let regions: Vec<u64> = (0..9)
        .map(|i| g.client.region(i).map_or(0, |r| r.size))
        .collect();
    assert_eq!(regions[0], 16 * 1024, "BAR0: registers and doorbells");
    let bar0 = g.client.region(0).expect("BAR0");
    assert!(
        bar0.file_offset.is_none() && bar0.flags & 4 == 0,
        "trapped doorbells: nothing to map"
    );
    assert_eq!(regions[7], 4096, "config space");

    let cap = g.read_reg64(0x0);
    assert_eq!((cap >> 32) & 0xF, 0, "CAP.DSTRD: doorbells 4 bytes apart");
    assert!(cap & 0xFFFF >= 31, "CAP.MQES");
    assert_eq!(g.read_reg32(0x08), 0x0001_0300, "VS 1.3");
    g.enable();

    // Identify Controller into one page.
    let c = g.admin(sqe(0x06, 0, IDENTIFY, 0, [1, 0, 0, 0, 0, 0]));
    assert_eq!(c.status, 0, "identify controller: {c:?}");
    let id = g.read_ram(IDENTIFY, 4096);
    assert!(
        id[4..24].iter().any(|b| *b != b' ' && *b != 0),
        "a serial number"
    );
    assert_eq!(c.sqid, 0);
    // Identify Namespace 1: 16 MiB in 512-byte blocks.
    let c = g.admin(sqe(0x06, 1, IDENTIFY, 0, [0, 0, 0, 0, 0, 0]));
    assert_eq!(c.status, 0, "identify namespace");
    let ns = g.read_ram(IDENTIFY, 4096);
    let nsze = u64::from_le_bytes(ns[0..8].try_into().expect("8 bytes"));
    assert_eq!(nsze, 16 * 1024 * 1024 / 512);

    // Number of Queues, then one I/O queue pair on vector 1.
    let c = g.admin(sqe(0x09, 0, 0, 0, [0x07, 0x0001_0001, 0, 0, 0, 0]));
    assert_eq!(c.status, 0, "set features number of queues");
    g.create_io_queues(1, 1);

    // 128 KiB written from 32 scattered pages (a PRP list), read back into others.
    let len = 128 * 1024;
    let data = pattern(len, 7);
    let pages: Vec<u64> = (0..32u64).map(|i| DATA + (31 - i) * 2 * PAGE).collect();
    for (i, page) in pages.iter().enumerate() {
        g.write_ram(*page, &data[i * 4096..(i + 1) * 4096]);
    }
    let (prp1, prp2) = g.prps(&pages, 0, PRP_LISTS);
    let c = g.io(1, rw(0x01, 8, 256, prp1, prp2));
    assert_eq!(c.status, 0, "write: {c:?}");
    let back: Vec<u64> = (0..32u64)
        .map(|i| DATA + 0x10_0000 + i * 3 * PAGE)
        .collect();
    let (prp1, prp2) = g.prps(&back, 0, PRP_LISTS + PAGE);
    let c = g.io(1, rw(0x02, 8, 256, prp1, prp2));
    assert_eq!(c.status, 0, "read: {c:?}");
    let mut read = Vec::new();
    for page in &back {
        read.extend(g.read_ram(*page, 4096));
    }
    assert!(read == data, "read back what was written");

    // A read into a buffer that starts mid-page: PRP1 with an offset, three pages.
    let offset = 0x200;
    let pages: Vec<u64> = (0..3u64).map(|i| DATA + 0x30_0000 + i * 5 * PAGE).collect();
    let (prp1, prp2) = g.prps(&pages, offset, PRP_LISTS + 2 * PAGE);
    let c = g.io(1, rw(0x02, 8, 16, prp1, prp2));
    assert_eq!(c.status, 0, "read with an offset");
    let mut got = g.read_ram(pages[0] + offset, (PAGE - offset) as usize);
    got.extend(g.read_ram(pages[1], 4096));
    got.extend(g.read_ram(pages[2], offset as usize));
    assert!(got == data[..8192], "offset read");

    // A PRP outside guest memory: Data Transfer Error, and the queue serves on.
    let c = g.io(1, rw(0x02, 0, 8, guest::RAM_SIZE + 0x1000, 0));
    assert_eq!((c.sct(), c.sc()), (0, 0x04), "data transfer error: {c:?}");
    // A second page with an offset: Invalid PRP Offset.
    let c = g.io(1, rw(0x02, 0, 16, DATA, DATA + 0x2000 + 0x10));
    assert_eq!((c.sct(), c.sc()), (0, 0x13), "invalid PRP offset: {c:?}");
    let c = g.io(1, rw(0x02, 8, 8, DATA, 0));
    assert_eq!(c.status, 0, "the queue still serves");

    // A controller reset drops the queues; enabling again starts afresh.
    g.disable();
    g.enable();
    let c = g.admin(sqe(0x06, 0, IDENTIFY, 0, [1, 0, 0, 0, 0, 0]));
    assert_eq!(c.status, 0, "identify after a reset");

    // The VMM goes (a VM reboot) and comes back: a new controller serves it.
    drop(g);
    let mut g = Guest::connect(&t.socket, 2);
    g.enable();
    let c = g.admin(sqe(0x06, 0, IDENTIFY, 0, [1, 0, 0, 0, 0, 0]));
    assert_eq!(c.status, 0, "identify on a new connection");
    g.create_io_queues(1, 1);
    let c = g.io(1, rw(0x02, 8, 8, DATA, 0));
    assert_eq!(c.status, 0, "read on a new connection");
    assert!(
        g.read_ram(DATA, 4096) == data[..4096],
        "data survived the VMM's reconnect"
    );
    drop(g);
    t.target.stop();
}

#[test]
fn a_hostile_guest_gets_statuses_and_the_target_serves_on() {
    let mut t = start(true, "ram = { size = \"16MiB\" }");
    let mut g = Guest::connect(&t.socket, 2);
    g.enable();

    // Queues outside guest memory, or on a completion queue that does not exist.
    let size = u32::from(guest::IO_ENTRIES - 1) << 16;
    let outside = guest::RAM_SIZE + 0x10_0000;
    let c = g.admin(sqe(
        0x05,
        0,
        outside,
        0,
        [1 | size, 0x3 | (1 << 16), 0, 0, 0, 0],
    ));
    assert_eq!(
        (c.sct(), c.sc()),
        (0, 0x02),
        "CQ outside guest memory: {c:?}"
    );
    let c = g.admin(sqe(
        0x01,
        0,
        guest::IOSQ,
        0,
        [1 | size, 0x1 | (3 << 16), 0, 0, 0, 0],
    ));
    assert_eq!(
        (c.sct(), c.sc()),
        (1, 0x00),
        "SQ on a CQ that does not exist: {c:?}"
    );

    // Doorbells of queues that do not exist, and a tail past the end of the admin queue, are
    // ignored; the admin queue serves on.
    g.write_reg32(0x1000 + 8 * 5, 1);
    g.write_reg32(0x1000 + 8 * 2 + 4, 7);
    g.write_reg32(0x1000, 1000);
    let c = g.admin(sqe(0x06, 0, IDENTIFY, 0, [1, 0, 0, 0, 0, 0]));
    assert_eq!(c.status, 0, "identify after junk doorbells: {c:?}");

    g.create_io_queues(1, 1);
    let c = g.io(1, sqe(0x7F, 1, DATA, 0, [0; 6]));
    assert_eq!(
        (c.sct(), c.sc()),
        (0, 0x01),
        "a fabrics opcode on PCIe: {c:?}"
    );
    let c = g.io(1, sqe(0x55, 1, DATA, 0, [0; 6]));
    assert_eq!((c.sct(), c.sc()), (0, 0x01), "an unknown opcode: {c:?}");
    let mut sgl = rw(0x02, 0, 8, DATA, 0);
    sgl[1] = 0x40; // PSDT: SGL, which Identify says is not supported
    let c = g.io(1, sgl);
    assert_eq!((c.sct(), c.sc()), (0, 0x02), "an SGL on PCIe: {c:?}");
    let c = g.io(1, rw(0x02, 1 << 40, 8, DATA, 0));
    assert_eq!((c.sct(), c.sc()), (0, 0x80), "LBA out of range: {c:?}");

    // The VMM unmaps guest memory under live queues: the next command cannot be fetched, the
    // queue stops, and the target lives.
    g.client.dma_unmap(0, guest::RAM_SIZE).expect("dma unmap");
    g.submit(1, &rw(0x02, 0, 8, DATA, 0));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        g.config_read32(0x08) >> 8,
        0x01_08_02,
        "the device still answers"
    );
    drop(g);

    // The next VMM is served as if nothing happened.
    let mut g = Guest::connect(&t.socket, 2);
    g.enable();
    g.create_io_queues(1, 1);
    let c = g.io(1, rw(0x02, 0, 8, DATA, 0));
    assert_eq!(c.status, 0, "a read on the next connection: {c:?}");
    drop(g);
    assert!(t.target.stop().success(), "clean exit:\n{}", t.target.log());
}

/// A declaration with a TCP listener (so the harness knows the target is up) and, when
/// `vfio_dir` is given, a vfio-user listener in that directory.
fn declaration(dir: &Path, port: u16, vfio_dir: Option<&Path>) -> String {
    let vfio = vfio_dir.map_or(String::new(), |d| {
        format!(
            "[[subsystem.listener]]\ntransport = \"vfiouser\"\npath = \"{}\"\n\n",
            d.display()
        )
    });
    format!(
        "[target]\ninterrupt_mode = true\ncore_mask = \"0x1\"\ncontrol_socket = \"{}\"\n\n\
         [transport.tcp]\n\n[transport.vfiouser]\ndisable_mappable_bar0 = true\n\n\
         [[subsystem]]\nnqn = \"{SUBNQN}\"\nallow_any_host = true\n\n{vfio}\
         [[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {port}\n\n\
         [[subsystem.namespace]]\nnsid = 1\nram = {{ size = \"16MiB\" }}\n",
        dir.join("ctl.sock").display(),
    )
}

#[test]
fn a_vfio_user_listener_comes_and_goes_with_the_declaration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let base = dir.path().to_owned();
    let vfio_dir = base.join("vm1");
    let mut target = TargetProcess::start_with_config(dir, port, &declaration(&base, port, None));
    let socket = vfio_dir.join("cntrl");
    assert!(!socket.exists());

    let save = |text: String| {
        let tmp = base.join(".target.toml.swp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, base.join("target.toml")).expect("rename");
    };
    save(declaration(&base, port, Some(&vfio_dir)));
    wait_for(&socket, &target);
    let mut g = Guest::connect(&socket, 2);
    g.enable();
    let c = g.admin(sqe(0x06, 0, IDENTIFY, 0, [1, 0, 0, 0, 0, 0]));
    assert_eq!(c.status, 0, "identify through the listener a reload added");

    save(declaration(&base, port, None));
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the socket outlived its listener:\n{}",
            target.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The VMM's connection went with the listener.
    let mut buf = [0u8; 4];
    assert!(
        g.client.region_read(guest::CONFIG, 0, &mut buf).is_err(),
        "the VMM is disconnected"
    );
    drop(g);
    assert!(target.stop().success(), "clean exit:\n{}", target.log());
}

#[test]
fn malformed_messages_close_that_vmm_only() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    let mut t = start(true, "ram = { size = \"16MiB\" }");
    let header = |id: u16, command: u16, size: u32| {
        let mut h = Vec::new();
        h.extend(id.to_le_bytes());
        h.extend(command.to_le_bytes());
        h.extend(size.to_le_bytes());
        h.extend(0u32.to_le_bytes()); // a command
        h.extend(0u32.to_le_bytes());
        h
    };
    let junk: Vec<Vec<u8>> = vec![
        // A message size below the header.
        header(0, 1, 8),
        // A message size far past the limit.
        header(0, 1, u32::MAX),
        // A command before VERSION.
        header(0, 4, 32).into_iter().chain([0u8; 16]).collect(),
        // Random bytes.
        (0..512u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    ];
    for bytes in junk {
        let mut raw = UnixStream::connect(&t.socket).expect("connect");
        raw.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = raw.write_all(&bytes);
        // The target answers with an error or closes; either way it reaches the end.
        let mut sink = Vec::new();
        let _ = raw.read_to_end(&mut sink);
    }
    // A VMM that connects after all of that is served.
    let mut g = Guest::connect(&t.socket, 2);
    g.enable();
    let c = g.admin(sqe(0x06, 0, IDENTIFY, 0, [1, 0, 0, 0, 0, 0]));
    assert_eq!(c.status, 0, "identify after the junk");
    drop(g);
    assert!(t.target.stop().success(), "clean exit:\n{}", t.target.log());
}

#[test]
fn doorbells_mapped_by_the_vmm_are_stores_the_target_polls() {
    let mut t = start_with(false, true, "ram = { size = \"16MiB\" }");
    let mut g = Guest::connect(&t.socket, 2);
    // The admin queue comes up through trapped register writes; QEMU may trap doorbell writes
    // too before it maps the page, so the first commands ring by REGION_WRITE.
    g.enable();
    let c = g.admin(sqe(0x06, 0, IDENTIFY, 0, [1, 0, 0, 0, 0, 0]));
    assert_eq!(c.status, 0, "identify through trapped doorbells");

    g.map_doorbells();
    assert_eq!(
        &g.doorbell_page()[..8],
        &[1, 0, 0, 0, 1, 0, 0, 0],
        "the page holds the trapped admin doorbells (tail 1, head 1)"
    );
    let c = g.admin(sqe(0x09, 0, 0, 0, [0x07, 0x0001_0001, 0, 0, 0, 0]));
    assert_eq!(c.status, 0, "set features through a stored doorbell");
    g.create_io_queues(1, 1);

    // More commands than the queue has entries: both doorbells wrap, every one a store.
    let data = pattern(4096, 41);
    for i in 0..150u64 {
        let lba = (i % 16) * 8;
        if i < 16 {
            let page = DATA + (i % 16) * PAGE;
            g.write_ram(page, &data);
            let c = g.io(1, rw(0x01, lba, 8, page, 0));
            assert_eq!(c.status, 0, "write {i}: {c:?}");
        } else {
            let page = DATA + 0x10_0000 + (i % 16) * PAGE;
            g.write_ram(page, &[0; 4096]);
            let c = g.io(1, rw(0x02, lba, 8, page, 0));
            assert_eq!(c.status, 0, "read {i}: {c:?}");
            assert!(g.read_ram(page, 4096) == data, "read {i} back");
        }
    }

    // A trapped doorbell write still moves the queue, and the stores go on after it.
    g.trap_doorbells();
    let c = g.io(1, rw(0x02, 0, 8, DATA, 0));
    assert_eq!(c.status, 0, "a trapped doorbell in mapped mode: {c:?}");
    g.map_doorbells();
    let c = g.io(1, rw(0x02, 0, 8, DATA, 0));
    assert_eq!(c.status, 0, "stored again: {c:?}");

    // A stored tail past the end of the queue is ignored; the next good one serves.
    g.ring(0x1000 + 8, 1000);
    std::thread::sleep(Duration::from_millis(20));
    let c = g.io(1, rw(0x02, 0, 8, DATA, 0));
    assert_eq!(c.status, 0, "after an invalid stored tail: {c:?}");

    // A controller reset zeroes the page; the queues start again from 0.
    g.disable();
    assert!(
        g.doorbell_page().iter().all(|b| *b == 0),
        "the page is zeroed by a reset"
    );
    g.enable();
    let c = g.admin(sqe(0x06, 0, IDENTIFY, 0, [1, 0, 0, 0, 0, 0]));
    assert_eq!(c.status, 0, "identify through the page after a reset");
    drop(g);
    assert!(t.target.stop().success(), "clean exit:\n{}", t.target.log());
    let log = plain(&t.target.log());
    let line = log
        .lines()
        .find(|l| l.contains("doorbell writes"))
        .unwrap_or_else(|| panic!("the counts at disconnect:\n{log}"));
    assert!(line.contains("mapped=true"), "{line}");
    let count = |key: &str| -> u64 {
        let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    assert!(count("polled=") >= 300, "{line}");
    // The two trapped by choice above: a command and its head.
    assert_eq!(count("trapped_after_mapped="), 2, "{line}");
}

/// A log without its colours (ANSI SGR sequences).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
