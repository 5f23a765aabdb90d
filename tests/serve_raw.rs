//! The real binary against hand-made bytes: what a broken or hostile host gets.

mod common;

use std::io::Write as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{TargetProcess, TargetSpec, read_until_closed};

/// NVMe/TCP 1.0, 3.6.2.2: a 128-byte ICReq with the given PFV and digest flags.
fn icreq(pfv: u16, digests: u8) -> Vec<u8> {
    let mut pdu = vec![0u8; 128];
    pdu[0] = 0x00;
    pdu[2] = 128;
    pdu[4..8].copy_from_slice(&128u32.to_le_bytes());
    pdu[8..10].copy_from_slice(&pfv.to_le_bytes());
    pdu[11] = digests;
    pdu
}

/// Type, FES and FEI of a C2HTermReq at the start of `bytes`.
fn term_req(bytes: &[u8]) -> Option<(u8, u16, u32)> {
    if bytes.len() < 24 || bytes[0] != 0x03 {
        return None;
    }
    Some((
        bytes[0],
        u16::from_le_bytes([bytes[8], bytes[9]]),
        u32::from_le_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]),
    ))
}

#[test]
fn icreq_gets_icresp_with_requested_digests() {
    let target = TargetProcess::start(&TargetSpec::default());
    let mut stream = TcpStream::connect(target.addr()).expect("connect");
    stream.write_all(&icreq(0, 0x3)).expect("send icreq");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut resp = [0u8; 128];
    std::io::Read::read_exact(&mut stream, &mut resp).expect("icresp");
    assert_eq!(resp[0], 0x01, "ICResp type");
    assert_eq!(resp[2], 128, "ICResp hlen");
    assert_eq!(
        u32::from_le_bytes([resp[4], resp[5], resp[6], resp[7]]),
        128
    );
    assert_eq!(resp[11] & 0x3, 0x3, "both digests echoed");
    let maxh2cdata = u32::from_le_bytes([resp[12], resp[13], resp[14], resp[15]]);
    assert!(maxh2cdata >= 4096, "MAXH2CDATA {maxh2cdata}");
}

#[test]
fn garbage_gets_a_termination_request_and_others_keep_working() {
    let target = TargetProcess::start(&TargetSpec::default());
    let mut bad = TcpStream::connect(target.addr()).expect("connect");
    // A CapsuleCmd header before any ICReq: out of sequence.
    let mut capsule = vec![0u8; 72];
    capsule[0] = 0x04;
    capsule[2] = 72;
    capsule[4..8].copy_from_slice(&72u32.to_le_bytes());
    bad.write_all(&capsule).expect("send");
    let reply = read_until_closed(&mut bad);
    let (kind, fes, _) =
        term_req(&reply).unwrap_or_else(|| panic!("no C2HTermReq in {reply:02x?}"));
    assert_eq!(kind, 0x03);
    assert_eq!(fes, 0x02, "PDU sequence error");

    // An ICReq with PFV 1: invalid header field pointing at PFV (byte 8).
    let mut bad = TcpStream::connect(target.addr()).expect("connect");
    bad.write_all(&icreq(1, 0)).expect("send");
    let reply = read_until_closed(&mut bad);
    let (_, fes, fei) = term_req(&reply).unwrap_or_else(|| panic!("no C2HTermReq in {reply:02x?}"));
    assert_eq!((fes, fei), (0x01, 8), "invalid PFV");

    // Random junk with an absurd length.
    let mut bad = TcpStream::connect(target.addr()).expect("connect");
    bad.write_all(&[0xFFu8; 300]).expect("send");
    let reply = read_until_closed(&mut bad);
    assert!(
        term_req(&reply).is_some(),
        "junk answered with {reply:02x?}"
    );

    // The target still serves a well-behaved host.
    let mut good = TcpStream::connect(target.addr()).expect("connect");
    good.write_all(&icreq(0, 0)).expect("send icreq");
    good.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut resp = [0u8; 128];
    std::io::Read::read_exact(&mut good, &mut resp).expect("icresp after bad hosts");
    assert_eq!(resp[0], 0x01);
}

#[test]
fn sigterm_exits_zero_promptly() {
    let mut target = TargetProcess::start(&TargetSpec::default());
    let _idle = TcpStream::connect(target.addr()).expect("connect");
    let started = Instant::now();
    let status = target.stop();
    assert!(status.success(), "exit status {status}\n{}", target.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(!target.control_socket().exists(), "control socket removed");
}
