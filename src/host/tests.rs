//! What a short or lying target does to the host: errors, never a panic.

use std::net::TcpListener;

use proptest::prelude::*;

use super::*;
use crate::transport::tcp::pdu::{
    CapsuleResp, DataPdu, Digests, IcResp, Pdu, R2t, digest, flags, pdu_type,
};

const BOTH: Digests = Digests {
    header: true,
    data: true,
};

fn c2h(data: &[u8], digests: Digests) -> Vec<u8> {
    let mut pdu = Vec::new();
    DataPdu {
        cccid: 1,
        ttag: 0,
        datao: 0,
        last: true,
        success: true,
        data,
    }
    .emit(&mut pdu, pdu_type::C2H_DATA, &Framing { digests, pda: 0 });
    pdu
}

fn r2t(digests: Digests) -> Vec<u8> {
    let mut pdu = Vec::new();
    R2t {
        cccid: 1,
        ttag: 2,
        r2to: 0,
        r2tl: 512,
    }
    .emit(&mut pdu, digests);
    pdu
}

/// `pdu` with `bytes` at `at` and, when the PDU has one, its header digest made right again.
fn patched(pdu: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut pdu = pdu.to_vec();
    pdu[at..at + bytes.len()].copy_from_slice(bytes);
    if pdu[1] & flags::HDGSTF != 0 {
        let hlen = usize::from(pdu[2]);
        let d = digest(&pdu[..hlen]);
        pdu[hlen..hlen + 4].copy_from_slice(&d);
    }
    pdu
}

fn malformed(bytes: &[u8], digests: Digests) -> PduError {
    match parse_from_target(bytes, digests) {
        Err(HostError::Malformed(err)) => err,
        other => panic!("expected a malformed PDU, got {other:?}"),
    }
}

#[test]
fn lying_lengths_from_a_target_are_errors() {
    let good = c2h(b"0123456789abcdef", BOTH);
    assert!(matches!(
        parse_from_target(&good, BOTH),
        Ok(Pdu::C2HData(d)) if d.data == b"0123456789abcdef"
    ));
    // PLEN shorter than HLEN.
    let short = patched(&good, 4, &16u32.to_le_bytes());
    assert_eq!(malformed(&short, BOTH), PduError::ShorterThanHeader);
    // PDO beyond PLEN.
    let far = patched(&good, 3, &[200]);
    assert_eq!(malformed(&far, BOTH), PduError::DataOffset);
    // DATAL beyond the PDU: the data would run past PLEN.
    let long = patched(&good, 16, &1000u32.to_le_bytes());
    assert_eq!(malformed(&long, BOTH), PduError::DataLength);
    // PLEN beyond the bytes received.
    let cut = &good[..good.len() - 1];
    assert_eq!(malformed(cut, BOTH), PduError::Truncated);
    // Digests negotiated but missing from the PDU.
    let plain = c2h(b"0123456789abcdef", Digests::NONE);
    assert_eq!(malformed(&plain, BOTH), PduError::HeaderDigestFlag);
    let no_ddgst = c2h(
        b"0123",
        Digests {
            header: true,
            data: false,
        },
    );
    assert_eq!(malformed(&no_ddgst, BOTH), PduError::DataDigestFlag);
    // A data digest that does not match.
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(malformed(&bad, BOTH), PduError::DataDigest);
    // An R2T shorter than its 24-byte header, or cut before it ends.
    let short_r2t = patched(&r2t(Digests::NONE), 4, &16u32.to_le_bytes());
    assert_eq!(
        malformed(&short_r2t, Digests::NONE),
        PduError::ShorterThanHeader
    );
    assert_eq!(
        malformed(&r2t(Digests::NONE)[..20], Digests::NONE),
        PduError::Truncated
    );
}

#[test]
fn every_truncation_of_a_target_pdu_is_an_error() {
    let mut resp = Vec::new();
    CapsuleResp {
        cqe: Cqe::new(1, Status::SUCCESS),
    }
    .emit(&mut resp, BOTH);
    for pdu in [c2h(&[7; 100], BOTH), r2t(BOTH), resp] {
        parse_from_target(&pdu, BOTH).expect("whole PDU");
        for cut in 0..pdu.len() {
            assert!(parse_from_target(&pdu[..cut], BOTH).is_err(), "cut {cut}");
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_from_a_target_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        header in any::<bool>(),
        data in any::<bool>(),
    ) {
        let _ = parse_from_target(&bytes, Digests { header, data });
    }
}

/// A one-connection fake target: answers the ICReq with a plain ICResp, then sends `reply`
/// after the first command and closes.
fn fake_target(reply: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut icreq = [0; pdu::IC_LEN];
        if stream.read_exact(&mut icreq).is_err() {
            return;
        }
        let mut out = Vec::new();
        IcResp {
            pfv: 0,
            cpda: 0,
            header_digest: false,
            data_digest: false,
            maxh2cdata: 4096,
        }
        .emit(&mut out);
        let mut capsule = [0; pdu::CAPSULE_CMD_HLEN];
        if stream.write_all(&out).is_err() || stream.read_exact(&mut capsule).is_err() {
            return;
        }
        let _ = stream.write_all(&reply);
    });
    addr
}

fn options() -> QueueOptions {
    QueueOptions {
        timeout: Duration::from_secs(5),
        ..QueueOptions::admin("nqn.test", "nqn.host")
    }
}

#[test]
fn a_lying_target_over_a_socket_is_an_error() {
    let short_r2t = patched(&r2t(Digests::NONE), 4, &16u32.to_le_bytes());
    let long_c2h = patched(&c2h(b"abcd", Digests::NONE), 16, &4000u32.to_le_bytes());
    let far_c2h = patched(&c2h(b"abcd", Digests::NONE), 3, &250u8.to_le_bytes());
    for reply in [short_r2t, long_c2h, far_c2h] {
        let mut queue = HostQueue::handshake(fake_target(reply), &options()).expect("handshake");
        queue
            .submit(HostQueue::read_sqe(1, 0, 1), None, 512)
            .expect("submit");
        let err = queue.wait().expect_err("a lying PDU");
        assert!(matches!(err, HostError::Malformed(_)), "{err}");
    }
}

#[test]
fn c2h_data_beyond_what_was_asked_is_refused() {
    let mut big = c2h(&[1; 64], Digests::NONE);
    big[12..16].copy_from_slice(&1_000_000u32.to_le_bytes());
    let mut queue = HostQueue::handshake(fake_target(big), &options()).expect("handshake");
    queue
        .submit(HostQueue::read_sqe(1, 0, 1), None, 512)
        .expect("submit");
    let err = queue.wait().expect_err("beyond the read");
    assert!(matches!(err, HostError::Protocol(_)), "{err}");
}
