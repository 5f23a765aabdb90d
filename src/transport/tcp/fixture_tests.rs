//! Real captures (`tests/fixtures/*.pcap`: the Linux host against Linux nvmet, and SPDK's
//! host against SPDK's target, both with header and data digests). Every PDU of both
//! directions is parsed with the PDU module and re-emitted byte for byte; the host's PDUs also
//! go through the target's deframer, and the target's through its own emitters.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::inbound::{IcReq, Inbound, Negotiated};
use super::outbound;
use super::pdu::{Digests, Framing, IcResp, Pdu, PduView, pdu_type};
use crate::controller::TransportLimits;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A little-endian u32 of the pcap file format (not a PDU).
fn pcap_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The TCP connections of a classic little-endian Ethernet/IPv4 pcap, keyed by the host's
/// port: bytes sent to port 4420 (host to target) and from it, reassembled by sequence number.
fn streams(pcap: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    assert_eq!(
        &pcap[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "little-endian microsecond pcap"
    );
    assert_eq!(pcap_u32(pcap, 20), 1, "Ethernet link type");
    type Segments = BTreeMap<u32, Vec<u8>>;
    let mut connections: BTreeMap<u16, (Segments, Segments)> = BTreeMap::new();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = pcap_u32(pcap, off + 8) as usize;
        let frame = &pcap[off + 16..off + 16 + incl];
        off += 16 + incl;
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0xF) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip[9] != 6 {
            continue;
        }
        let tcp = &ip[ihl..total];
        let (sport, dport) = (
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
        );
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let payload = &tcp[usize::from(tcp[12] >> 4) * 4..];
        if payload.is_empty() {
            continue;
        }
        let map = if dport == 4420 {
            &mut connections.entry(sport).or_default().0
        } else if sport == 4420 {
            &mut connections.entry(dport).or_default().1
        } else {
            continue;
        };
        map.entry(seq).or_insert_with(|| payload.to_vec());
    }
    connections
        .values()
        .map(|(to_target, to_host)| (reassemble(to_target), reassemble(to_host)))
        .collect()
}

fn reassemble(segments: &BTreeMap<u32, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let Some((&first, _)) = segments.iter().next() else {
        return out;
    };
    let mut next = first;
    for (&seq, data) in segments {
        let skip = next.wrapping_sub(seq) as usize;
        if seq.wrapping_sub(next) as i32 > 0 {
            panic!("gap in the capture at sequence {next}");
        }
        if skip < data.len() {
            out.extend_from_slice(&data[skip..]);
            next = seq.wrapping_add(data.len() as u32);
        }
    }
    out
}

#[derive(Debug, Default)]
struct Counts {
    by_type: BTreeMap<u8, usize>,
}

/// Parses every host PDU; returns the negotiation and the counts by type.
fn parse_host_stream(stream: &[u8]) -> (Negotiated, Counts) {
    let mut neg = Negotiated::before_icreq();
    let mut counts = Counts::default();
    let mut at = 0;
    while at < stream.len() {
        let (pdu, used) = Inbound::parse(&stream[at..], &neg)
            .unwrap_or_else(|e| panic!("host PDU at byte {at}: {e}"))
            .unwrap_or_else(|| panic!("truncated host PDU at byte {at}"));
        *counts.by_type.entry(stream[at]).or_default() += 1;
        match pdu {
            Inbound::IcReq(icreq) => {
                let limits = TransportLimits {
                    max_io_size: 1 << 20,
                    ..TransportLimits::default()
                };
                neg.accept_icreq(&IcReq { ..icreq }, &limits)
                    .expect("icreq");
                assert!(
                    icreq.header_digest && icreq.data_digest,
                    "captures use both digests"
                );
            }
            Inbound::Capsule { data_digest_ok, .. } => {
                assert!(data_digest_ok, "capsule data digest at {at}")
            }
            Inbound::H2CData(d) => assert!(d.data_digest_ok, "H2CData digest at {at}"),
            Inbound::TermReq { .. } => {}
        }
        at += used;
    }
    (neg, counts)
}

/// Parses every PDU of `stream` with the PDU module, data digests checked, and re-emits it
/// framed as `framing`: the bytes must come out the same. Counts the PDUs by type.
fn reemit_stream(stream: &[u8], framing: &Framing, direction: &str) -> Counts {
    let mut counts = Counts::default();
    let mut at = 0;
    while at < stream.len() {
        let view = PduView::new_checked(&stream[at..], framing.digests)
            .unwrap_or_else(|e| panic!("{direction} PDU at byte {at}: {e}"));
        assert!(view.data_digest_ok(), "{direction} data digest at {at}");
        let pdu = Pdu::parse(&view).unwrap_or_else(|e| panic!("{direction} PDU at {at}: {e}"));
        let mut again = vec![0xEE; 3];
        pdu.emit(&mut again, framing);
        assert_eq!(
            &again[3..],
            view.as_bytes(),
            "{direction} PDU type {:#x} at byte {at} re-emits differently",
            view.pdu_type()
        );
        *counts.by_type.entry(view.pdu_type()).or_default() += 1;
        at += view.len();
    }
    counts
}

/// Re-emits every CapsuleResp, C2HData and R2T of the target stream with the target's own
/// emitters and compares bytes.
fn reemit_with_outbound(stream: &[u8], neg: &Negotiated) {
    let mut at = 0;
    while at < stream.len() {
        let view = PduView::new_checked(&stream[at..], neg.digests()).expect("checked above");
        let mut again = Vec::new();
        match Pdu::parse(&view).expect("parsed above") {
            Pdu::IcResp(resp) => outbound::icresp(&mut again, &resp),
            Pdu::CapsuleResp(resp) => outbound::capsule_resp(&mut again, neg, &resp.cqe),
            Pdu::C2HData(d) => {
                outbound::c2h_data(&mut again, neg, d.cccid, d.datao, d.data, d.last, d.success)
            }
            Pdu::R2t(r) => outbound::r2t(&mut again, neg, r.cccid, r.ttag, r.r2to, r.r2tl),
            other => panic!("unexpected target PDU {other:?} at byte {at}"),
        }
        assert_eq!(
            again,
            view.as_bytes(),
            "outbound re-emits PDU type {:#x} at byte {at} differently",
            view.pdu_type()
        );
        at += view.len();
    }
}

/// The ICReq and ICResp that open a connection's two streams.
fn handshake(to_target: &[u8], to_host: &[u8]) -> (IcReq, IcResp) {
    let icreq = PduView::new_checked(to_target, Digests::NONE)
        .and_then(|v| IcReq::parse(&v))
        .expect("the host stream starts with ICReq");
    let icresp = PduView::new_checked(to_host, Digests::NONE)
        .and_then(|v| IcResp::parse(&v))
        .expect("the target stream starts with ICResp");
    (icreq, icresp)
}

fn check(name: &str, expect_r2t: bool) {
    let mut host = Counts::default();
    let mut target = Counts::default();
    let connections = streams(&fixture(name));
    for (to_target, to_host) in &connections {
        let (neg, h) = parse_host_stream(to_target);
        let (icreq, icresp) = handshake(to_target, to_host);
        let digests = Digests {
            header: icresp.header_digest,
            data: icresp.data_digest,
        };
        assert_eq!(
            digests,
            neg.digests(),
            "the target granted what the host asked"
        );
        let to_target_framing = Framing {
            digests,
            pda: icresp.cpda,
        };
        let to_host_framing = Framing {
            digests,
            pda: icreq.hpda,
        };
        assert_eq!(
            reemit_stream(to_target, &to_target_framing, "host").by_type,
            h.by_type
        );
        let t = reemit_stream(to_host, &to_host_framing, "target");
        reemit_with_outbound(to_host, &neg);
        for (k, v) in h.by_type {
            *host.by_type.entry(k).or_default() += v;
        }
        for (k, v) in t.by_type {
            *target.by_type.entry(k).or_default() += v;
        }
    }
    println!(
        "{name}: {} connections, host {:?}, target {:?}",
        connections.len(),
        host.by_type,
        target.by_type
    );
    assert_eq!(
        host.by_type.get(&pdu_type::IC_REQ),
        Some(&connections.len())
    );
    assert!(
        host.by_type
            .get(&pdu_type::CAPSULE_CMD)
            .copied()
            .unwrap_or(0)
            > 10
    );
    assert!(
        target
            .by_type
            .get(&pdu_type::CAPSULE_RESP)
            .copied()
            .unwrap_or(0)
            > 10
    );
    assert!(
        target
            .by_type
            .get(&pdu_type::C2H_DATA)
            .copied()
            .unwrap_or(0)
            > 0
    );
    if expect_r2t {
        assert!(target.by_type.get(&pdu_type::R2T).copied().unwrap_or(0) > 0);
        assert!(host.by_type.get(&pdu_type::H2C_DATA).copied().unwrap_or(0) > 0);
    }
}

#[test]
fn linux_host_capture_parses_and_reemits() {
    check("linux-host-to-nvmet-tcp-digests.pcap", true);
}

#[test]
fn spdk_host_capture_parses_and_reemits() {
    check("spdk-host-to-spdk-tcp-digests-r2t.pcap", true);
}
