//! Real captures (`../shared/fixtures/*.pcap`: the Linux host against Linux nvmet, and SPDK's
//! host against SPDK's target, both with header and data digests) fed through the deframer,
//! and the target's PDUs re-emitted byte for byte by the emitters.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::inbound::{IcReq, Inbound, Negotiated};
use super::outbound;
use super::wire::{self, flags, pdu_type};
use crate::controller::TransportLimits;
use crate::nvme::Cqe;

fn fixture(name: &str) -> Vec<u8> {
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures")
            .join(name),
        PathBuf::from("/work/shared/fixtures").join(name),
    ];
    for path in &candidates {
        if let Ok(bytes) = std::fs::read(path) {
            return bytes;
        }
    }
    panic!("fixture {name} not found in {candidates:?}");
}

/// The TCP connections of a classic little-endian Ethernet/IPv4 pcap, keyed by the host's
/// port: bytes sent to port 4420 (host to target) and from it, reassembled by sequence number.
fn streams(pcap: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    assert_eq!(
        &pcap[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "little-endian microsecond pcap"
    );
    assert_eq!(wire::read_u32(pcap, 20), 1, "Ethernet link type");
    type Segments = BTreeMap<u32, Vec<u8>>;
    let mut connections: BTreeMap<u16, (Segments, Segments)> = BTreeMap::new();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = wire::read_u32(pcap, off + 8) as usize;
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

/// Re-emits every CapsuleResp, C2HData and R2T of the target stream and compares bytes.
fn reemit_target_stream(stream: &[u8], neg: &Negotiated) -> Counts {
    let mut counts = Counts::default();
    let mut at = 0;
    while at + 8 <= stream.len() {
        let plen = wire::read_u32(stream, at + 4) as usize;
        let pdu = &stream[at..at + plen];
        let mut again = Vec::new();
        match pdu[0] {
            pdu_type::IC_RESP => {}
            pdu_type::CAPSULE_RESP => {
                let cqe = Cqe::parse(&pdu[8..]).expect("cqe");
                outbound::capsule_resp(&mut again, neg, &cqe);
            }
            pdu_type::C2H_DATA => {
                let pdo = usize::from(pdu[3]);
                let datal = wire::read_u32(pdu, 16) as usize;
                outbound::c2h_data(
                    &mut again,
                    neg,
                    wire::read_u16(pdu, 8),
                    wire::read_u32(pdu, 12),
                    &pdu[pdo..pdo + datal],
                    pdu[1] & flags::LAST_PDU != 0,
                    pdu[1] & flags::SUCCESS != 0,
                );
            }
            pdu_type::R2T => outbound::r2t(
                &mut again,
                neg,
                wire::read_u16(pdu, 8),
                wire::read_u16(pdu, 10),
                wire::read_u32(pdu, 12),
                wire::read_u32(pdu, 16),
            ),
            other => panic!("unexpected target PDU type {other:#x} at byte {at}"),
        }
        if pdu[0] != pdu_type::IC_RESP {
            assert_eq!(
                again, pdu,
                "re-emitted PDU type {:#x} at byte {at} differs",
                pdu[0]
            );
        }
        *counts.by_type.entry(pdu[0]).or_default() += 1;
        at += plen;
    }
    assert_eq!(at, stream.len(), "target stream ends on a PDU boundary");
    counts
}

fn check(name: &str, expect_r2t: bool) {
    let mut host = Counts::default();
    let mut target = Counts::default();
    let connections = streams(&fixture(name));
    for (to_target, to_host) in &connections {
        let (neg, h) = parse_host_stream(to_target);
        let t = reemit_target_stream(to_host, &neg);
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
