//! The real binary against hand-made bytes: what a broken or hostile host gets.

mod common;

use std::io::Write as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{TargetProcess, TargetSpec, read_until_closed};
use nvmf_tgt::nvme::Sqe;
use nvmf_tgt::transport::tcp::pdu::{
    CapsuleCmd, Digests, Framing, IcReq, IcResp, PduView, TermReq, pdu_type,
};

/// NVMe/TCP 1.0, 3.6.2.2: a 128-byte ICReq with the given PFV and digest flags.
fn icreq(pfv: u16, digests: u8) -> Vec<u8> {
    let mut pdu = Vec::new();
    IcReq {
        pfv,
        hpda: 0,
        header_digest: digests & 0x1 != 0,
        data_digest: digests & 0x2 != 0,
        maxr2t: 0,
    }
    .emit(&mut pdu);
    pdu
}

/// Type, FES and FEI of a C2HTermReq at the start of `bytes`.
fn term_req(bytes: &[u8]) -> Option<(u8, u16, u32)> {
    let view = PduView::new_checked(bytes, Digests::NONE).ok()?;
    let term = TermReq::parse_as(&view, pdu_type::C2H_TERM_REQ).ok()?;
    Some((view.pdu_type(), term.fes, term.fei))
}

/// The ICResp in `bytes`: type, HLEN and PLEN (128) checked by the view.
fn icresp(bytes: &[u8]) -> IcResp {
    let view = PduView::new_checked(bytes, Digests::NONE).expect("ICResp framing");
    IcResp::parse(&view).expect("ICResp type")
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
    let resp = icresp(&resp);
    assert!(
        resp.header_digest && resp.data_digest,
        "both digests echoed"
    );
    let maxh2cdata = resp.maxh2cdata;
    assert!(maxh2cdata >= 4096, "MAXH2CDATA {maxh2cdata}");
}

#[test]
fn garbage_gets_a_termination_request_and_others_keep_working() {
    let target = TargetProcess::start(&TargetSpec::default());
    let mut bad = TcpStream::connect(target.addr()).expect("connect");
    // A CapsuleCmd header before any ICReq: out of sequence.
    let mut capsule = Vec::new();
    CapsuleCmd {
        sqe: Sqe::default(),
        data: &[],
    }
    .emit(&mut capsule, &Framing::default());
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
    icresp(&resp);
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
