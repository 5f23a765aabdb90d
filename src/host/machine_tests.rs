//! The host machine fed bytes as a target would send them, good and bad: whole PDUs only,
//! digests checked, data placed in the caller's buffers, R2T answered, and every lie an error.

use std::collections::HashMap;

use super::*;
use crate::transport::tcp::pdu::{CapsuleResp, IcResp, PduError, R2t, TermReq, digest, fes, flags};

const BOTH: Digests = Digests {
    header: true,
    data: true,
};

fn digests(on: bool) -> Digests {
    if on { BOTH } else { Digests::NONE }
}

/// A machine past ICResp, with the digests `on` and MAXH2CDATA of 4096.
fn established(on: bool) -> HostMachine {
    let mut machine = HostMachine::new(on, on, 8192);
    let mut icreq = Vec::new();
    machine.icreq(&mut icreq);
    assert_eq!((icreq[0], icreq.len()), (pdu_type::IC_REQ, pdu::IC_LEN));
    let mut resp = Vec::new();
    IcResp {
        pfv: 0,
        cpda: 0,
        header_digest: on,
        data_digest: on,
        maxh2cdata: 4096,
    }
    .emit(&mut resp);
    machine.handle_icresp(&resp).expect("ICResp");
    assert!(machine.is_established());
    machine
}

fn c2h(cid: u16, data: &[u8], success: bool, on: bool) -> Vec<u8> {
    let mut pdu = Vec::new();
    DataPdu {
        cccid: cid,
        ttag: 0,
        datao: 0,
        last: true,
        success,
        data,
    }
    .emit(
        &mut pdu,
        pdu_type::C2H_DATA,
        &Framing {
            digests: digests(on),
            pda: 0,
        },
    );
    pdu
}

/// Commands by CID: (data to write, read buffer, bytes received). Also the host's side of
/// the in-memory pair tests.
#[derive(Default)]
pub(crate) struct Table(pub(crate) HashMap<u16, (Vec<u8>, Vec<u8>, usize)>);

impl CommandBuffers for Table {
    fn write_data(&self, cid: u16) -> Option<&[u8]> {
        self.0
            .get(&cid)
            .map(|c| c.0.as_slice())
            .filter(|w| !w.is_empty())
    }

    fn read_buffer(&mut self, cid: u16) -> Option<&mut [u8]> {
        self.0
            .get_mut(&cid)
            .map(|c| c.1.as_mut_slice())
            .filter(|r| !r.is_empty())
    }

    fn data_received(&mut self, cid: u16, _offset: usize, len: usize) {
        if let Some(c) = self.0.get_mut(&cid) {
            c.2 += len;
        }
    }
}

/// Deframes and handles every PDU in `bytes`.
fn feed(
    machine: &mut HostMachine,
    table: &mut Table,
    bytes: &[u8],
) -> Result<(Vec<Cqe>, Vec<u8>), HostError> {
    let (mut done, mut out, mut at) = (Vec::new(), Vec::new(), 0);
    while let Some(view) = machine.deframe(&bytes[at..], 1 << 20)? {
        at += view.len();
        if let Some(cqe) = machine.handle_pdu(&view, table, &mut out)? {
            done.push(cqe);
        }
    }
    assert_eq!(at, bytes.len(), "whole PDUs only");
    Ok((done, out))
}

#[test]
fn whole_pdus_only_and_digests_checked() {
    for on in [false, true] {
        let machine = established(on);
        let pdu = c2h(7, b"hello world", true, on);
        for cut in 0..pdu.len() {
            assert!(
                matches!(machine.deframe(&pdu[..cut], 1 << 16), Ok(None)),
                "cut {cut}"
            );
        }
        let mut two = pdu.clone();
        two.extend_from_slice(&pdu);
        let view = machine
            .deframe(&two, 1 << 16)
            .expect("framing")
            .expect("whole");
        assert_eq!(view.len(), pdu.len());
        if on {
            let mut bad = pdu.clone();
            bad[10] ^= 1;
            assert!(matches!(
                machine.deframe(&bad, 1 << 16),
                Err(HostError::Malformed(PduError::HeaderDigest))
            ));
            let mut bad = pdu.clone();
            bad[30] ^= 1;
            let mut machine = established(on);
            let mut table = Table::default();
            table.0.insert(7, (Vec::new(), vec![0; 11], 0));
            assert!(matches!(
                feed(&mut machine, &mut table, &bad),
                Err(HostError::Malformed(PduError::DataDigest))
            ));
        }
    }
}

#[test]
fn reads_land_in_the_callers_buffer_and_success_completes_them() {
    for on in [false, true] {
        let mut machine = established(on);
        let mut table = Table::default();
        table.0.insert(3, (Vec::new(), vec![0; 6], 0));
        table.0.insert(4, (Vec::new(), vec![0; 6], 0));
        let mut bytes = c2h(3, b"abcdef", true, on);
        bytes.extend(c2h(4, b"ghijkl", false, on));
        let mut resp = Vec::new();
        CapsuleResp {
            cqe: Cqe::new(4, Status::SUCCESS),
        }
        .emit(&mut resp, digests(on));
        bytes.extend(resp);
        let (done, out) = feed(&mut machine, &mut table, &bytes).expect("good PDUs");
        assert_eq!(
            done.iter().map(|c| (c.cid, c.status)).collect::<Vec<_>>(),
            [(3, Status::SUCCESS), (4, Status::SUCCESS)]
        );
        assert!(out.is_empty());
        assert_eq!(table.0[&3].1, b"abcdef");
        assert_eq!(
            (table.0[&4].1.as_slice(), table.0[&4].2),
            (&b"ghijkl"[..], 6)
        );
    }
}

#[test]
fn r2t_is_answered_with_h2c_data_cut_at_maxh2cdata() {
    let mut machine = established(true);
    let mut table = Table::default();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    table.0.insert(5, (data.clone(), Vec::new(), 0));
    let mut r2t = Vec::new();
    R2t {
        cccid: 5,
        ttag: 6,
        r2to: 100,
        r2tl: 9000,
    }
    .emit(&mut r2t, BOTH);
    let (done, out) = feed(&mut machine, &mut table, &r2t).expect("R2T");
    assert!(done.is_empty());
    let mut at = 0;
    let mut parts = Vec::new();
    while at < out.len() {
        let view = PduView::new_checked(&out[at..], BOTH).expect("H2CData framing");
        view.check_data_digest().expect("data digest");
        let pdu = DataPdu::parse(&view).expect("H2CData");
        parts.push((pdu.cccid, pdu.ttag, pdu.datao, pdu.data.len(), pdu.last));
        assert_eq!(
            pdu.data,
            &data[pdu.datao as usize..pdu.datao as usize + pdu.data.len()]
        );
        assert_eq!(view.pdu_type(), pdu_type::H2C_DATA);
        at += view.len();
    }
    assert_eq!(
        parts,
        [
            (5, 6, 100, 4096, false),
            (5, 6, 4196, 4096, false),
            (5, 6, 8292, 808, true)
        ]
    );
}

#[test]
fn commands_carry_small_writes_in_the_capsule_and_wait_for_r2t_with_large_ones() {
    let machine = established(true);
    let sqe = Sqe::new(0x01, 9);
    let mut out = Vec::new();
    assert!(!machine.command(&mut out, sqe, b"data", 0));
    assert_eq!(&out[..8], &[0x04, 0x03, 72, 76, 84, 0, 0, 0]);
    assert_eq!(out[72..76], digest(&out[..72]));
    assert_eq!(&out[76..80], b"data");
    assert_eq!(out[80..84], digest(b"data"));
    let view = PduView::new_checked(&out, BOTH).expect("framing");
    let Ok(Pdu::CapsuleCmd(cmd)) = Pdu::parse(&view) else {
        panic!("a capsule")
    };
    assert!(cmd.sqe.sgl().is_in_capsule());
    let mut out = Vec::new();
    assert!(machine.command(&mut out, sqe, &[0; 16384], 0));
    let view = PduView::new_checked(&out, BOTH).expect("framing");
    let Ok(Pdu::CapsuleCmd(cmd)) = Pdu::parse(&view) else {
        panic!("a capsule")
    };
    assert!(cmd.sqe.sgl().is_transport() && cmd.data.is_empty());
    assert_eq!(cmd.sqe.sgl().length, 16384);
}

#[test]
fn lying_targets_are_errors_not_panics() {
    let mut machine = established(false);
    let mut table = Table::default();
    table.0.insert(7, (vec![1; 64], vec![0; 4], 0));
    // An R2T shorter than its 24-byte header.
    let short_r2t = [pdu_type::R2T, 0, 24, 0, 16, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0, 0];
    assert!(feed(&mut machine, &mut table, &short_r2t).is_err());
    // Data that starts past PLEN.
    let mut pdu = c2h(7, b"abcd", false, false);
    pdu[3] = 60;
    assert!(feed(&mut machine, &mut table, &pdu).is_err());
    // More data than the command asked for, data for no command, R2T beyond the write.
    assert!(matches!(
        feed(&mut machine, &mut table, &c2h(7, b"abcdef", false, false)),
        Err(HostError::Protocol("C2HData beyond the read"))
    ));
    assert!(matches!(
        feed(&mut machine, &mut table, &c2h(8, b"ab", false, false)),
        Err(HostError::Protocol("C2HData for a command not reading"))
    ));
    let mut r2t = Vec::new();
    R2t {
        cccid: 7,
        ttag: 0,
        r2to: 60,
        r2tl: 8,
    }
    .emit(&mut r2t, Digests::NONE);
    assert!(matches!(
        feed(&mut machine, &mut table, &r2t),
        Err(HostError::Protocol("R2T beyond the write"))
    ));
    // SUCCESS on a PDU that is not the last.
    let mut pdu = c2h(7, b"ab", true, false);
    pdu[1] &= !flags::LAST_PDU;
    assert!(feed(&mut machine, &mut table, &pdu).is_err());
    // A header digest the connection negotiated but the PDU lacks.
    let machine = established(true);
    assert!(
        machine
            .deframe(&c2h(7, b"ab", false, false), 1 << 16)
            .is_err()
    );
    // A PDU too large for the caller's buffer, and a PDU type a target never sends.
    assert!(matches!(
        machine.deframe(&c2h(7, &[0; 64], false, true), 16),
        Err(HostError::Protocol("PDU larger than the receive buffer"))
    ));
    let mut capsule = Vec::new();
    machine.command(&mut capsule, Sqe::new(0x02, 1), &[], 0);
    assert!(machine.deframe(&capsule, 1 << 16).is_err());
}

#[test]
fn a_termination_request_ends_the_queue_with_its_status() {
    let mut machine = established(false);
    let mut term = Vec::new();
    TermReq {
        fes: fes::PDU_SEQUENCE_ERROR,
        fei: 0,
        echo: &[],
    }
    .emit(&mut term, pdu_type::C2H_TERM_REQ);
    assert!(matches!(
        feed(&mut machine, &mut Table::default(), &term),
        Err(HostError::Terminated { fes: 0x02, fei: 0 })
    ));
}

#[test]
fn icresp_must_grant_what_was_asked() {
    let mut machine = HostMachine::new(true, false, 8192);
    let mut resp = Vec::new();
    IcResp {
        pfv: 0,
        cpda: 0,
        header_digest: false,
        data_digest: false,
        maxh2cdata: 4096,
    }
    .emit(&mut resp);
    assert!(matches!(
        machine.handle_icresp(&resp),
        Err(HostError::Protocol(_))
    ));
    assert!(!machine.is_established());
    assert!(machine.handle_icresp(&resp[..100]).is_err());
}
