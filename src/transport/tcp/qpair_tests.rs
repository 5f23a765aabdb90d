//! The queue pair driven in memory, as a host would, against a real registry and RAM
//! backend: no sockets, no clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::backend::ram::RamBackend;
use crate::controller::{
    AddressFamily, NamespaceSpec, Registry, SubsystemSpec, TransportLimits, TransportType,
};
use crate::nvme::connect::{ConnectCmd, ConnectData};
use crate::nvme::opcode::{admin, io};
use crate::nvme::{Cqe, Sgl, Sqe, Status};
use crate::transport::tcp::inbound::IcReq;
use crate::transport::tcp::wire::{self, pdu_type};

const SUBNQN: &str = "nqn.2026-11.io.nvmf-tgt:unit";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

fn listener() -> ListenerAddr {
    ListenerAddr {
        trtype: TransportType::Tcp,
        adrfam: AddressFamily::Ipv4,
        traddr: "127.0.0.1".into(),
        trsvcid: "4420".into(),
    }
}

fn context() -> Arc<TcpContext> {
    context_with(Arc::new(RamBackend::new(1 << 20)))
}

fn context_with(backend: Arc<dyn crate::backend::Backend>) -> Arc<TcpContext> {
    let spec = SubsystemSpec {
        nqn: SUBNQN.into(),
        serial: "UNIT0001".into(),
        model: "nvmf-tgt".into(),
        allow_any_host: true,
        hosts: Vec::new(),
        max_namespaces: 32,
        namespaces: vec![NamespaceSpec {
            nsid: 1,
            backend,
            block_size: 512,
            read_only: false,
            uuid: None,
            nguid: None,
            eui64: None,
        }],
        listeners: vec![listener()],
    };
    let registry = Registry::new(vec![spec], TransportLimits::default()).expect("registry");
    Arc::new(TcpContext {
        registry: Arc::new(registry),
        limits: TransportLimits::default(),
        c2h_success: true,
    })
}

/// One end of the conversation: feeds PDUs in, parses what comes out.
struct Host {
    qpair: TcpQpair,
    neg: Negotiated,
    poll: mio::Poll,
    completions: crate::backend::Completions,
    notifier: super::super::AsyncNotifier,
    now: Instant,
}

#[derive(Debug)]
enum Reply {
    Resp(Cqe),
    Data {
        cccid: u16,
        data: Vec<u8>,
        success: bool,
    },
    R2t {
        cccid: u16,
        ttag: u16,
        r2tl: u32,
    },
    Term {
        fes: u16,
    },
}

impl Host {
    fn new(digests: bool) -> Self {
        let (poll, completions) = crate::backend::tests::completions();
        let now = Instant::now();
        let mut host = Self {
            qpair: TcpQpair::new(context(), listener(), None, now),
            neg: Negotiated::before_icreq(),
            poll,
            completions,
            notifier: Arc::new(|| {}),
            now,
        };
        let mut icreq = vec![0u8; 128];
        icreq[2] = 128;
        icreq[4] = 128;
        icreq[11] = if digests { 3 } else { 0 };
        let out = host.feed(&icreq);
        assert_eq!(out.len(), 128, "ICResp");
        assert_eq!(out[0], pdu_type::IC_RESP);
        host.neg
            .accept_icreq(
                &IcReq {
                    pfv: 0,
                    hpda: 0,
                    header_digest: digests,
                    data_digest: digests,
                    maxr2t: 0,
                },
                &TransportLimits::default(),
            )
            .expect("same negotiation");
        host
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut cx = IoCx::new(&self.completions, 0, &self.notifier);
        let (used, flow) = self.qpair.handle_input(bytes, &mut cx, self.now);
        assert_eq!(used, bytes.len(), "whole PDUs consumed");
        let _ = flow;
        self.qpair.output().take_all()
    }

    fn capsule(&self, sqe: &Sqe, data: &[u8]) -> Vec<u8> {
        let hd = if self.neg.header_digest { 4 } else { 0 };
        let dd = if self.neg.data_digest && !data.is_empty() {
            4
        } else {
            0
        };
        let pdo = if data.is_empty() { 0 } else { 72 + hd };
        let plen = 72 + hd + data.len() + dd;
        let mut pdu = vec![
            pdu_type::CAPSULE_CMD,
            0,
            72,
            u8::try_from(pdo).expect("pdo"),
            0,
            0,
            0,
            0,
        ];
        pdu[4..8].copy_from_slice(&u32::try_from(plen).expect("plen").to_le_bytes());
        if hd > 0 {
            pdu[1] |= wire::flags::HDGSTF;
        }
        if dd > 0 {
            pdu[1] |= wire::flags::DDGSTF;
        }
        pdu.extend_from_slice(sqe.as_bytes());
        if hd > 0 {
            let digest = wire::digest(&pdu);
            pdu.extend_from_slice(&digest);
        }
        pdu.extend_from_slice(data);
        if dd > 0 {
            pdu.extend_from_slice(&wire::digest(data));
        }
        pdu
    }

    fn replies(&self, mut bytes: &[u8]) -> Vec<Reply> {
        let mut replies = Vec::new();
        while bytes.len() >= 8 {
            let plen = wire::read_u32(bytes, 4) as usize;
            let pdu = &bytes[..plen];
            let hd = if pdu[1] & wire::flags::HDGSTF != 0 {
                4
            } else {
                0
            };
            if hd > 0 {
                let hlen = usize::from(pdu[2]);
                assert_eq!(
                    pdu[hlen..hlen + 4],
                    wire::digest(&pdu[..hlen]),
                    "header digest"
                );
            }
            replies.push(match pdu[0] {
                pdu_type::CAPSULE_RESP => Reply::Resp(Cqe::parse(&pdu[8..]).expect("cqe")),
                pdu_type::C2H_DATA => {
                    let pdo = usize::from(pdu[3]);
                    let datal = wire::read_u32(pdu, 16) as usize;
                    let data = pdu[pdo..pdo + datal].to_vec();
                    if pdu[1] & wire::flags::DDGSTF != 0 {
                        assert_eq!(pdu[pdo + datal..], wire::digest(&data), "data digest");
                    }
                    Reply::Data {
                        cccid: wire::read_u16(pdu, 8),
                        data,
                        success: pdu[1] & wire::flags::SUCCESS != 0,
                    }
                }
                pdu_type::R2T => Reply::R2t {
                    cccid: wire::read_u16(pdu, 8),
                    ttag: wire::read_u16(pdu, 10),
                    r2tl: wire::read_u32(pdu, 16),
                },
                pdu_type::C2H_TERM_REQ => Reply::Term {
                    fes: wire::read_u16(pdu, 8),
                },
                other => panic!("unexpected PDU type {other:#x}"),
            });
            bytes = &bytes[plen..];
        }
        replies
    }

    fn command(&mut self, sqe: &Sqe, data: &[u8]) -> Vec<Reply> {
        let pdu = self.capsule(sqe, data);
        let out = self.feed(&pdu);
        self.replies(&out)
    }

    fn connect_admin(&mut self) -> u16 {
        let mut sqe = Sqe::new(crate::nvme::opcode::FABRICS, 1);
        sqe.set_fctype(crate::nvme::opcode::fctype::CONNECT);
        sqe.set_sgl(Sgl::in_capsule(1024));
        ConnectCmd {
            recfmt: 0,
            qid: 0,
            sqsize: 31,
            cattr: 0,
            kato: 5000,
        }
        .emit(&mut sqe);
        let mut data = vec![0u8; 1024];
        ConnectData {
            hostid: [1; 16],
            cntlid: 0xFFFF,
            subnqn: SUBNQN.into(),
            hostnqn: HOSTNQN.into(),
        }
        .emit(&mut data);
        let replies = self.command(&sqe, &data);
        let [Reply::Resp(cqe)] = replies.as_slice() else {
            panic!("{replies:?}")
        };
        assert!(cqe.status.is_success(), "{cqe:?}");
        u16::try_from(cqe.dw0 & 0xFFFF).expect("cntlid")
    }
}

#[test]
fn admin_connect_enable_identify_with_digests() {
    let mut host = Host::new(true);
    let cntlid = host.connect_admin();
    assert!((1..=0xFFEF).contains(&cntlid));
    // Property Set CC.EN = 1 (offset 0x14, 4 bytes).
    let mut sqe = Sqe::new(crate::nvme::opcode::FABRICS, 2);
    sqe.set_fctype(crate::nvme::opcode::fctype::PROPERTY_SET);
    sqe.set_cdw(11, 0x14).set_cdw(12, 0x0046_0001);
    let replies = host.command(&sqe, &[]);
    assert!(
        matches!(replies.as_slice(), [Reply::Resp(c)] if c.status.is_success()),
        "{replies:?}"
    );
    // Identify controller over C2HData, then the response.
    let mut sqe = Sqe::new(admin::IDENTIFY, 3);
    sqe.set_cdw(10, 1).set_sgl(Sgl::transport(4096));
    let replies = host.command(&sqe, &[]);
    let [
        Reply::Data {
            cccid: 3,
            data,
            success: false,
        },
        Reply::Resp(cqe),
    ] = replies.as_slice()
    else {
        panic!("{replies:?}")
    };
    assert!(cqe.status.is_success());
    assert_eq!(data.len(), 4096);
    assert_eq!(&data[4..12], b"UNIT0001", "serial number");
    assert_eq!(cqe.sqid, 0);
}

#[test]
fn io_queue_write_via_r2t_then_read_back() {
    let mut admin = Host::new(false);
    let cntlid = admin.connect_admin();
    let mut sqe = Sqe::new(crate::nvme::opcode::FABRICS, 2);
    sqe.set_fctype(crate::nvme::opcode::fctype::PROPERTY_SET);
    sqe.set_cdw(11, 0x14).set_cdw(12, 0x0046_0001);
    admin.command(&sqe, &[]);

    let mut ioq = Host::new(false);
    ioq.qpair.context = Arc::clone(&admin.qpair.context);
    let mut sqe = Sqe::new(crate::nvme::opcode::FABRICS, 1);
    sqe.set_fctype(crate::nvme::opcode::fctype::CONNECT);
    sqe.set_sgl(Sgl::in_capsule(1024));
    ConnectCmd {
        recfmt: 0,
        qid: 1,
        sqsize: 127,
        cattr: 0,
        kato: 0,
    }
    .emit(&mut sqe);
    let mut data = vec![0u8; 1024];
    ConnectData {
        hostid: [1; 16],
        cntlid,
        subnqn: SUBNQN.into(),
        hostnqn: HOSTNQN.into(),
    }
    .emit(&mut data);
    let replies = ioq.command(&sqe, &data);
    assert!(
        matches!(replies.as_slice(), [Reply::Resp(c)] if c.status.is_success()),
        "{replies:?}"
    );

    // A 16 KiB write goes through R2T and two H2CData PDUs.
    let payload: Vec<u8> = (0..16384u32).map(|i| (i % 253) as u8).collect();
    let mut write = Sqe::new(io::WRITE, 10);
    write
        .set_nsid(1)
        .set_cdw(10, 8)
        .set_cdw(12, 31)
        .set_sgl(Sgl::transport(16384));
    let replies = ioq.command(&write, &[]);
    let [
        Reply::R2t {
            cccid: 10,
            ttag,
            r2tl: 16384,
        },
    ] = replies.as_slice()
    else {
        panic!("{replies:?}")
    };
    let ttag = *ttag;
    let mut first = Vec::new();
    outbound::data_pdu(
        &mut first,
        &ioq.neg,
        pdu_type::H2C_DATA,
        10,
        ttag,
        0,
        &payload[..8192],
        false,
        false,
    );
    assert!(
        ioq.feed(&first).is_empty(),
        "nothing until all data arrived"
    );
    let mut second = Vec::new();
    outbound::data_pdu(
        &mut second,
        &ioq.neg,
        pdu_type::H2C_DATA,
        10,
        ttag,
        8192,
        &payload[8192..],
        true,
        false,
    );
    let out = ioq.feed(&second);
    let replies = ioq.replies(&out);
    assert!(
        matches!(replies.as_slice(), [Reply::Resp(c)] if c.status.is_success() && c.cid == 10 && c.sqid == 1),
        "{replies:?}"
    );

    let mut read = Sqe::new(io::READ, 11);
    read.set_nsid(1)
        .set_cdw(10, 8)
        .set_cdw(12, 31)
        .set_sgl(Sgl::transport(16384));
    let replies = ioq.command(&read, &[]);
    let [
        Reply::Data {
            cccid: 11, data, ..
        },
        Reply::Resp(cqe),
    ] = replies.as_slice()
    else {
        panic!("{replies:?}")
    };
    assert!(cqe.status.is_success());
    assert_eq!(data, &payload);

    // Out of range, bad namespace, and an H2CData nobody asked for.
    let mut read = Sqe::new(io::READ, 12);
    read.set_nsid(1)
        .set_cdw(10, 2047)
        .set_cdw(12, 1)
        .set_sgl(Sgl::transport(1024));
    let replies = ioq.command(&read, &[]);
    assert!(
        matches!(replies.as_slice(), [Reply::Resp(c)] if c.status.sc == Status::LBA_OUT_OF_RANGE.sc),
        "{replies:?}"
    );
    let mut read = Sqe::new(io::READ, 13);
    read.set_nsid(9).set_cdw(12, 0).set_sgl(Sgl::transport(512));
    let replies = ioq.command(&read, &[]);
    assert!(
        matches!(replies.as_slice(), [Reply::Resp(c)] if c.status.sc == Status::INVALID_NAMESPACE.sc),
        "{replies:?}"
    );
    let mut stray = Vec::new();
    outbound::data_pdu(
        &mut stray,
        &ioq.neg,
        pdu_type::H2C_DATA,
        99,
        77,
        0,
        &[0; 512],
        true,
        false,
    );
    let out = ioq.feed(&stray);
    let replies = ioq.replies(&out);
    assert!(
        matches!(replies.as_slice(), [Reply::Term { fes: 0x04 }]),
        "{replies:?}"
    );
    assert!(ioq.qpair.is_terminating());
    let _ = (&mut ioq.poll, Duration::ZERO);
}

/// An enabled controller on `context` and a connected I/O queue (qid 1) with or without
/// digests: (admin, I/O queue).
fn io_queue(context: &Arc<TcpContext>, digests: bool) -> (Host, Host) {
    let mut admin = Host::new(digests);
    admin.qpair.context = Arc::clone(context);
    let cntlid = admin.connect_admin();
    let mut sqe = Sqe::new(crate::nvme::opcode::FABRICS, 2);
    sqe.set_fctype(crate::nvme::opcode::fctype::PROPERTY_SET);
    sqe.set_cdw(11, 0x14).set_cdw(12, 0x0046_0001);
    admin.command(&sqe, &[]);
    let mut ioq = Host::new(digests);
    ioq.qpair.context = Arc::clone(context);
    let mut sqe = Sqe::new(crate::nvme::opcode::FABRICS, 1);
    sqe.set_fctype(crate::nvme::opcode::fctype::CONNECT);
    sqe.set_sgl(Sgl::in_capsule(1024));
    ConnectCmd {
        recfmt: 0,
        qid: 1,
        sqsize: 127,
        cattr: 0,
        kato: 0,
    }
    .emit(&mut sqe);
    let mut data = vec![0u8; 1024];
    ConnectData {
        hostid: [1; 16],
        cntlid,
        subnqn: SUBNQN.into(),
        hostnqn: HOSTNQN.into(),
    }
    .emit(&mut data);
    let replies = ioq.command(&sqe, &data);
    assert!(
        matches!(replies.as_slice(), [Reply::Resp(c)] if c.status.is_success()),
        "{replies:?}"
    );
    (admin, ioq)
}

#[test]
fn null_reads_send_zeroes_with_the_right_digest() {
    let context = context_with(Arc::new(crate::backend::null::NullBackend::new(1 << 20)));
    for digests in [false, true] {
        let (_admin, mut ioq) = io_queue(&context, digests);
        // 128 KiB, more than the static block of zeroes, then 4 KiB, in one batch.
        let mut big = Sqe::new(io::READ, 20);
        big.set_nsid(1)
            .set_cdw(10, 0)
            .set_cdw(12, 255)
            .set_sgl(Sgl::transport(131_072));
        let mut small = Sqe::new(io::READ, 21);
        small
            .set_nsid(1)
            .set_cdw(10, 2040)
            .set_cdw(12, 7)
            .set_sgl(Sgl::transport(4096));
        let mut batch = ioq.capsule(&big, &[]);
        batch.extend_from_slice(&ioq.capsule(&small, &[]));
        let out = ioq.feed(&batch);
        let replies = ioq.replies(&out);
        let [
            Reply::Data {
                cccid: 20,
                data: first,
                ..
            },
            Reply::Resp(a),
            Reply::Data {
                cccid: 21,
                data: second,
                ..
            },
            Reply::Resp(b),
        ] = replies.as_slice()
        else {
            panic!("{replies:?}")
        };
        assert!(a.status.is_success() && b.status.is_success());
        assert_eq!(first, &vec![0; 131_072]);
        assert_eq!(second, &vec![0; 4096]);
        assert_eq!(ioq.qpair.in_flight(), 0);
        // Past the end: refused by the controller, as before.
        let mut past = Sqe::new(io::READ, 22);
        past.set_nsid(1)
            .set_cdw(10, 2047)
            .set_cdw(12, 1)
            .set_sgl(Sgl::transport(1024));
        let replies = ioq.command(&past, &[]);
        assert!(
            matches!(replies.as_slice(), [Reply::Resp(c)] if c.status.sc == Status::LBA_OUT_OF_RANGE.sc),
            "{replies:?}"
        );
    }
}

#[test]
fn keep_alive_expiry_closes_the_admin_queue() {
    let mut host = Host::new(false);
    host.connect_admin();
    let deadline = host.qpair.deadline().expect("keep-alive deadline");
    assert!(deadline > host.now);
    assert_eq!(host.qpair.handle_timer(host.now), Flow::Continue);
    assert_eq!(
        host.qpair.handle_timer(deadline + Duration::from_secs(1)),
        Flow::Close
    );
}
