//! The queue pair driven in memory, as a host would, against a real registry and RAM
//! backend: no sockets, no clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::backend::ram::RamBackend;
use crate::controller::{Registry, SubsystemSpec, TransportLimits};
use crate::nvme::connect::{ConnectCmd, ConnectData};
use crate::nvme::opcode::{admin, io};
use crate::nvme::{Cqe, Sgl, Sqe, Status};
use crate::transport::buffer_pool::{BufferPool, PoolLimits, SharedPool};
use crate::transport::tcp::inbound::IcReq;
use crate::transport::tcp::pdu::{
    CapsuleCmd, CapsuleResp, Digests, Framing, Pdu, PduView, TermReq, pdu_type,
};

pub(crate) const SUBNQN: &str = "nqn.2026-11.io.nvmf-tgt:unit";
pub(crate) const HOSTNQN: &str =
    "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

fn listener() -> ListenerAddr {
    ListenerAddr::Tcp("127.0.0.1:4420".parse().expect("socket address"))
}

pub(crate) fn context() -> Arc<TcpContext> {
    context_with(Arc::new(RamBackend::new(1 << 20)))
}

fn context_with(backend: Arc<dyn crate::backend::Backend>) -> Arc<TcpContext> {
    let spec = SubsystemSpec::for_tests(SUBNQN, "UNIT0001", listener(), backend);
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
    notifier: crate::transport::context::AsyncNotifier,
    pool: BufferPool,
    now: Instant,
}

/// A reactor's pool with SPDK's TCP defaults, alone in its shared pool.
pub(crate) fn buffer_pool() -> BufferPool {
    let shared = SharedPool::new(PoolLimits::spdk_tcp_defaults(1));
    BufferPool::new(shared, 0, Arc::new(|| {}))
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
            pool: buffer_pool(),
            now,
        };
        let icreq = IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: digests,
            data_digest: digests,
            maxr2t: 0,
        };
        let mut bytes = Vec::new();
        icreq.emit(&mut bytes);
        let out = host.feed(&bytes);
        assert_eq!(out.len(), 128, "ICResp");
        assert_eq!(out[0], pdu_type::IC_RESP);
        host.neg
            .accept_icreq(&icreq, &TransportLimits::default())
            .expect("same negotiation");
        host
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut cx = IoCx::new(&self.completions, 0, &self.notifier, &mut self.pool);
        let (used, flow) = self.qpair.handle_input(bytes, &mut cx, self.now);
        assert_eq!(used, bytes.len(), "whole PDUs consumed");
        let _ = flow;
        self.take_output()
    }

    /// What the queue pair sent, as a host reads it; written buffers go back to the pool.
    fn take_output(&mut self) -> Vec<u8> {
        let out = self.qpair.output().take_all();
        let mut cx = IoCx::new(&self.completions, 0, &self.notifier, &mut self.pool);
        self.qpair.handle_sent(&mut cx);
        out
    }

    fn capsule(&self, sqe: &Sqe, data: &[u8]) -> Vec<u8> {
        let mut pdu = Vec::new();
        let framing = Framing {
            digests: self.neg.digests(),
            pda: 0,
        };
        CapsuleCmd { sqe: *sqe, data }.emit(&mut pdu, &framing);
        pdu
    }

    /// The target's PDUs in `bytes`, framing and digests checked by the PDU module.
    fn replies(&self, mut bytes: &[u8]) -> Vec<Reply> {
        let mut replies = Vec::new();
        while bytes.len() >= 8 {
            let view = PduView::new_checked(bytes, self.neg.digests()).expect("framing");
            assert!(view.data_digest_ok(), "data digest");
            replies.push(match Pdu::parse(&view).expect("fields") {
                Pdu::CapsuleResp(resp) => Reply::Resp(resp.cqe),
                Pdu::C2HData(d) => Reply::Data {
                    cccid: d.cccid,
                    data: d.data.to_vec(),
                    success: d.success,
                },
                Pdu::R2t(r2t) => Reply::R2t {
                    cccid: r2t.cccid,
                    ttag: r2t.ttag,
                    r2tl: r2t.r2tl,
                },
                Pdu::C2HTermReq(term) => Reply::Term { fes: term.fes },
                other => panic!("unexpected PDU {other:?}"),
            });
            bytes = &bytes[view.len()..];
        }
        replies
    }

    fn command(&mut self, sqe: &Sqe, data: &[u8]) -> Vec<Reply> {
        let pdu = self.capsule(sqe, data);
        let out = self.feed(&pdu);
        self.replies(&out)
    }

    fn connect_admin(&mut self) -> u16 {
        self.connect_admin_with(31)
    }

    fn connect_admin_with(&mut self, sqsize: u16) -> u16 {
        let mut sqe = Sqe::new(crate::nvme::opcode::FABRICS, 1);
        sqe.set_fctype(crate::nvme::opcode::fctype::CONNECT);
        sqe.set_sgl(Sgl::in_capsule(1024));
        ConnectCmd {
            recfmt: 0,
            qid: 0,
            sqsize,
            cattr: 0,
            kato: 5000,
        }
        .emit(&mut sqe);
        let data = ConnectData {
            hostid: [1; 16],
            cntlid: 0xFFFF,
            subnqn: SUBNQN.into(),
            hostnqn: HOSTNQN.into(),
        }
        .to_vec();
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
    let data = ConnectData {
        hostid: [1; 16],
        cntlid,
        subnqn: SUBNQN.into(),
        hostnqn: HOSTNQN.into(),
    }
    .to_vec();
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
        matches!(replies.as_slice(), [Reply::Resp(c)] if c.status == Status::LBA_OUT_OF_RANGE.with_dnr()),
        "{replies:?}"
    );
    let mut read = Sqe::new(io::READ, 13);
    read.set_nsid(9).set_cdw(12, 0).set_sgl(Sgl::transport(512));
    let replies = ioq.command(&read, &[]);
    assert!(
        matches!(replies.as_slice(), [Reply::Resp(c)] if c.status == Status::INVALID_NAMESPACE.with_dnr()),
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
    let data = ConnectData {
        hostid: [1; 16],
        cntlid,
        subnqn: SUBNQN.into(),
        hostnqn: HOSTNQN.into(),
    }
    .to_vec();
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
            matches!(replies.as_slice(), [Reply::Resp(c)] if c.status == Status::LBA_OUT_OF_RANGE.with_dnr()),
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

/// H2CData for command `cccid` (transfer tag `ttag`) at `datao`, with the data digest of
/// `digest_of` (pass the data itself for a good digest).
fn h2c(neg: &Negotiated, cccid: u16, ttag: u16, datao: u32, data: &[u8], last: bool) -> Vec<u8> {
    let mut pdu = Vec::new();
    outbound::data_pdu(
        &mut pdu,
        neg,
        pdu_type::H2C_DATA,
        cccid,
        ttag,
        datao,
        data,
        last,
        false,
    );
    pdu
}

fn write_sqe(cid: u16, slba: u32, len: u32) -> Sqe {
    let mut sqe = Sqe::new(io::WRITE, cid);
    sqe.set_nsid(1)
        .set_cdw(10, slba)
        .set_cdw(12, len / 512 - 1)
        .set_sgl(Sgl::transport(len));
    sqe
}

fn read_sqe(cid: u16, slba: u32, len: u32) -> Sqe {
    let mut sqe = Sqe::new(io::READ, cid);
    sqe.set_nsid(1)
        .set_cdw(10, slba)
        .set_cdw(12, len / 512 - 1)
        .set_sgl(Sgl::transport(len));
    sqe
}

fn r2t_of(replies: &[Reply]) -> (u16, u32) {
    match replies {
        [Reply::R2t { ttag, r2tl, .. }] => (*ttag, *r2tl),
        other => panic!("expected one R2T: {other:?}"),
    }
}

fn status_of(replies: &[Reply]) -> Status {
    match replies {
        [Reply::Resp(cqe)] => cqe.status,
        other => panic!("expected one response: {other:?}"),
    }
}

#[test]
fn a_bad_data_digest_in_any_h2c_pdu_fails_the_write_and_stores_nothing() {
    let context = context();
    let (_admin, mut ioq) = io_queue(&context, true);
    let payload = vec![0xA5u8; 16384];
    let (ttag, _) = r2t_of(&ioq.command(&write_sqe(10, 0, 16384), &[]));
    // The first of two PDUs: a byte flipped after the digest of the original was taken.
    let mut first = h2c(&ioq.neg, 10, ttag, 0, &payload[..8192], false);
    let pdo = usize::from(first[3]);
    first[pdo + 100] ^= 0xFF;
    assert!(ioq.feed(&first).is_empty(), "no answer before the last PDU");
    let second = h2c(&ioq.neg, 10, ttag, 8192, &payload[8192..], true);
    let out = ioq.feed(&second);
    assert_eq!(
        status_of(&ioq.replies(&out)),
        Status::TRANSIENT_TRANSPORT_ERROR
    );
    // Nothing of it reached the namespace, and the connection still serves.
    let replies = ioq.command(&read_sqe(11, 0, 16384), &[]);
    let [Reply::Data { data, .. }, Reply::Resp(cqe)] = replies.as_slice() else {
        panic!("{replies:?}")
    };
    assert!(cqe.status.is_success());
    assert!(data.iter().all(|&b| b == 0), "corrupted data was stored");
    let (ttag, _) = r2t_of(&ioq.command(&write_sqe(12, 0, 16384), &[]));
    let out = ioq.feed(&h2c(&ioq.neg, 12, ttag, 0, &payload, true));
    assert_eq!(status_of(&ioq.replies(&out)), Status::SUCCESS);
    assert_eq!(ioq.qpair.in_flight(), 0);
}

#[test]
fn commands_wait_for_buffers_and_get_no_r2t_until_they_have_one() {
    let context = context();
    let (_admin, mut ioq) = io_queue(&context, false);
    // Room for two 128 KiB transfers only.
    let shared = SharedPool::new(PoolLimits::new(2, Some(0), 131_072, 1));
    ioq.pool = BufferPool::new(Arc::clone(&shared), 0, Arc::new(|| {}));
    let payload = vec![7u8; 131_072];
    let (a, _) = r2t_of(&ioq.command(&write_sqe(1, 0, 131_072), &[]));
    let (b, _) = r2t_of(&ioq.command(&write_sqe(2, 256, 131_072), &[]));
    // The third waits: no R2T, no buffer, and reads wait behind it.
    assert!(ioq.command(&write_sqe(3, 512, 131_072), &[]).is_empty());
    assert!(ioq.command(&read_sqe(4, 0, 4096), &[]).is_empty());
    assert_eq!(ioq.pool.stats().waiting, 2);
    assert_eq!(shared.available(), 0);
    assert!(ioq.pool.poll_granted().is_none());
    let out = ioq.feed(&h2c(&ioq.neg, 1, a, 0, &payload, true));
    assert_eq!(status_of(&ioq.replies(&out)), Status::SUCCESS);
    // The write's buffer came back: the oldest waiter gets it, and now its R2T.
    let (key, credits) = ioq.pool.poll_granted().expect("granted");
    let tag = u16::try_from(key & 0xFFFF).expect("tag");
    let mut cx = IoCx::new(&ioq.completions, 0, &ioq.notifier, &mut ioq.pool);
    let flow = ioq
        .qpair
        .handle_buffers_granted(tag, credits, &mut cx, ioq.now);
    assert_eq!(flow, Flow::Continue);
    let out = ioq.take_output();
    let (c, r2tl) = r2t_of(&ioq.replies(&out));
    assert_eq!(r2tl, 131_072);
    assert!(ioq.pool.poll_granted().is_none(), "the read still waits");
    for (cid, ttag) in [(2, b), (3, c)] {
        let out = ioq.feed(&h2c(&ioq.neg, cid, ttag, 0, &payload, true));
        assert_eq!(status_of(&ioq.replies(&out)), Status::SUCCESS);
    }
    let (key, credits) = ioq.pool.poll_granted().expect("read granted");
    let tag = u16::try_from(key & 0xFFFF).expect("tag");
    let mut cx = IoCx::new(&ioq.completions, 0, &ioq.notifier, &mut ioq.pool);
    ioq.qpair
        .handle_buffers_granted(tag, credits, &mut cx, ioq.now);
    let out = ioq.take_output();
    let replies = ioq.replies(&out);
    assert!(
        matches!(replies.as_slice(), [Reply::Data { cccid: 4, data, .. }, Reply::Resp(_)] if data == &payload[..4096]),
        "{replies:?}"
    );
    assert_eq!(ioq.pool.stats().in_use, 0, "every credit came back");
    assert_eq!(ioq.pool.stats().cached + shared.available(), 2);
}

#[test]
fn completions_not_yet_written_count_against_the_queue_depth() {
    let context = context();
    let (_admin, mut ioq) = io_queue(&context, false);
    // 128 reads complete at once (RAM) but the host reads none of the answers.
    let pdus: Vec<Vec<u8>> = (0..=128)
        .map(|cid| ioq.capsule(&read_sqe(cid, 0, 131_072), &[]))
        .collect();
    let mut cx = IoCx::new(&ioq.completions, 0, &ioq.notifier, &mut ioq.pool);
    for pdu in &pdus[..128] {
        let (used, flow) = ioq.qpair.handle_input(pdu, &mut cx, ioq.now);
        assert_eq!((used, flow), (pdu.len(), Flow::Continue));
    }
    assert_eq!(ioq.qpair.in_flight(), 0);
    assert_eq!(ioq.qpair.outstanding(), 128);
    // One more than the queue holds: terminated, not buffered.
    let (_, flow) = ioq.qpair.handle_input(&pdus[128], &mut cx, ioq.now);
    assert_eq!(flow, Flow::Close);
    assert!(ioq.qpair.is_terminating());
}

#[test]
fn a_queue_whose_answers_pile_up_stops_taking_commands() {
    let mut admin = Host::new(false);
    admin.connect_admin_with(127);
    let mut sqe = Sqe::new(crate::nvme::opcode::FABRICS, 2);
    sqe.set_fctype(crate::nvme::opcode::fctype::PROPERTY_SET);
    sqe.set_cdw(11, 0x14).set_cdw(12, 0x0046_0001);
    admin.command(&sqe, &[]);
    // Identify pages are copied into the send queue: 100 of them in one batch, unread.
    let mut batch = Vec::new();
    for cid in 0..100 {
        let mut sqe = Sqe::new(admin::IDENTIFY, cid);
        sqe.set_cdw(10, 1).set_sgl(Sgl::transport(4096));
        batch.extend_from_slice(&admin.capsule(&sqe, &[]));
    }
    let mut cx = IoCx::new(&admin.completions, 0, &admin.notifier, &mut admin.pool);
    let (used, flow) = admin.qpair.handle_input(&batch, &mut cx, admin.now);
    assert_eq!(flow, Flow::Continue);
    assert!(used < batch.len(), "stopped before the end of the batch");
    assert!(admin.qpair.is_backpressured());
    let held = admin.qpair.output().unsent_copied();
    assert!(held < BACKPRESSURE_BYTES + 8192, "{held} bytes held");
    // Once the host reads, the rest is taken.
    let first = admin.take_output();
    assert!(!first.is_empty());
    let mut cx = IoCx::new(&admin.completions, 0, &admin.notifier, &mut admin.pool);
    let (rest, flow) = admin.qpair.handle_input(&batch[used..], &mut cx, admin.now);
    assert_eq!((used + rest, flow), (batch.len(), Flow::Continue));
}

#[test]
fn a_host_that_never_sends_r2t_data_is_dropped_after_the_timeout() {
    let context = context();
    let (_admin, mut ioq) = io_queue(&context, false);
    let start = ioq.now;
    r2t_of(&ioq.command(&write_sqe(1, 0, 131_072), &[]));
    let deadline = ioq.qpair.deadline().expect("data deadline");
    assert_eq!(deadline, start + H2C_DATA_TIMEOUT);
    assert_eq!(
        ioq.qpair.handle_timer(start + Duration::from_secs(1)),
        Flow::Continue
    );
    assert_eq!(
        ioq.qpair.handle_timer(deadline + Duration::from_millis(1)),
        Flow::Close
    );
    // A write whose data came in time leaves no deadline behind.
    let (_admin, mut ioq) = io_queue(&context, false);
    let (ttag, _) = r2t_of(&ioq.command(&write_sqe(1, 0, 4096 * 2), &[]));
    ioq.feed(&h2c(&ioq.neg, 1, ttag, 0, &[1; 8192], true));
    assert_eq!(ioq.qpair.deadline(), None);
}

#[test]
fn unknown_admin_opcodes_get_invalid_opcode_and_no_r2t() {
    let mut host = Host::new(false);
    host.connect_admin();
    let mut sqe = Sqe::new(crate::nvme::opcode::FABRICS, 2);
    sqe.set_fctype(crate::nvme::opcode::fctype::PROPERTY_SET);
    sqe.set_cdw(11, 0x14).set_cdw(12, 0x0046_0001);
    host.command(&sqe, &[]);
    // 0x81: vendor specific, its direction bits say host to controller.
    let mut sqe = Sqe::new(0x81, 3);
    sqe.set_sgl(Sgl::transport(1 << 20));
    assert_eq!(
        status_of(&host.command(&sqe, &[])),
        Status::INVALID_OPCODE.with_dnr()
    );
    assert_eq!(host.qpair.in_flight(), 0);
}

#[test]
fn in_capsule_data_beyond_the_advertised_size_is_refused() {
    let context = context();
    let (_admin, mut ioq) = io_queue(&context, false);
    let mut sqe = write_sqe(1, 0, 16384);
    sqe.set_sgl(Sgl::in_capsule(16384));
    let pdu = ioq.capsule(&sqe, &[0x11; 16384]);
    let mut cx = IoCx::new(&ioq.completions, 0, &ioq.notifier, &mut ioq.pool);
    let (_, flow) = ioq.qpair.handle_input(&pdu, &mut cx, ioq.now);
    assert_eq!(flow, Flow::Close);
    let out = ioq.take_output();
    let replies = ioq.replies(&out);
    assert!(
        matches!(replies.as_slice(), [Reply::Term { fes: 0x05 }]),
        "{replies:?}"
    );
}

/// Connects `host` as I/O queue `qid` of controller `cntlid`; the replies.
fn connect_io(host: &mut Host, cntlid: u16, qid: u16) -> Vec<Reply> {
    let mut sqe = Sqe::new(crate::nvme::opcode::FABRICS, 1);
    sqe.set_fctype(crate::nvme::opcode::fctype::CONNECT);
    sqe.set_sgl(Sgl::in_capsule(1024));
    ConnectCmd {
        recfmt: 0,
        qid,
        sqsize: 31,
        cattr: 0,
        kato: 0,
    }
    .emit(&mut sqe);
    let data = ConnectData {
        hostid: [1; 16],
        cntlid,
        subnqn: SUBNQN.into(),
        hostnqn: HOSTNQN.into(),
    }
    .to_vec();
    host.command(&sqe, &data)
}

/// A PDU type only controllers send: the queue answers with a C2HTermReq.
fn terminate_with_a_bad_pdu(host: &mut Host) {
    let mut pdu = Vec::new();
    CapsuleResp {
        cqe: Cqe::default(),
    }
    .emit(&mut pdu, Digests::NONE);
    let mut cx = IoCx::new(&host.completions, 0, &host.notifier, &mut host.pool);
    let (_, flow) = host.qpair.handle_input(&pdu, &mut cx, host.now);
    assert_eq!(flow, Flow::Close);
    assert!(host.qpair.is_terminating());
    let out = host.take_output();
    assert!(matches!(
        host.replies(&out).as_slice(),
        [Reply::Term { fes: 0x01 }]
    ));
}

/// Found by the fuzzer: a queue ended by a C2HTermReq used to stay attached, so the host's
/// reconnect of the same qid was refused.
#[test]
fn an_io_queue_ended_by_a_termination_request_frees_its_qid() {
    let context = context();
    let (admin, mut ioq) = io_queue(&context, false);
    let cntlid = admin.qpair.controller().expect("admin").cntlid().0;
    terminate_with_a_bad_pdu(&mut ioq);
    assert!(
        ioq.qpair.close().is_none(),
        "an I/O queue takes no controller down"
    );
    let mut again = Host::new(false);
    again.qpair.context = Arc::clone(&context);
    let replies = connect_io(&mut again, cntlid, 1);
    assert!(
        matches!(replies.as_slice(), [Reply::Resp(c)] if c.status.is_success()),
        "{replies:?}"
    );
}

/// Found by the fuzzer: an admin queue ended by a C2HTermReq used to leave its controller
/// live (no keep-alive any more, still serving its I/O queues).
#[test]
fn an_admin_queue_ended_by_a_termination_request_tears_its_controller_down() {
    let context = context();
    let (mut admin, mut ioq) = io_queue(&context, false);
    let ctrlr = Arc::clone(admin.qpair.controller().expect("admin"));
    terminate_with_a_bad_pdu(&mut admin);
    let gone = admin
        .qpair
        .close()
        .expect("the admin queue takes its controller down");
    assert!(Arc::ptr_eq(&gone, &ctrlr));
    assert!(!ctrlr.is_live());
    let subsys = context.registry.subsystem(SUBNQN).expect("subsystem");
    assert!(subsys.controller(ctrlr.cntlid()).is_none());
    // Its I/O queue no longer serves.
    let replies = ioq.command(&read_sqe(5, 0, 512), &[]);
    assert!(replies.is_empty(), "{replies:?}");
    assert!(!ioq.qpair.is_terminating());
}

/// Found by the fuzzer: a host's H2CTermReq before ICReq got a C2HTermReq back; a
/// termination request is answered by closing, whatever the state.
#[test]
fn a_termination_request_before_icreq_closes_without_an_answer() {
    let (_poll, completions) = crate::backend::tests::completions();
    let notifier: crate::transport::context::AsyncNotifier = Arc::new(|| {});
    let mut pool = buffer_pool();
    let mut qpair = TcpQpair::new(context(), listener(), None, Instant::now());
    let mut pdu = Vec::new();
    TermReq {
        fes: 0x01,
        fei: 0,
        echo: &[],
    }
    .emit(&mut pdu, pdu_type::H2C_TERM_REQ);
    let mut cx = IoCx::new(&completions, 0, &notifier, &mut pool);
    let (used, flow) = qpair.handle_input(&pdu, &mut cx, Instant::now());
    assert_eq!((used, flow), (24, Flow::Close));
    assert!(
        qpair.output().take_all().is_empty(),
        "no C2HTermReq in answer"
    );
}

/// Property Set CC on `admin`, which must succeed.
fn set_cc(admin: &mut Host, cid: u16, cc: u32) {
    let mut sqe = Sqe::new(crate::nvme::opcode::FABRICS, cid);
    sqe.set_fctype(crate::nvme::opcode::fctype::PROPERTY_SET);
    sqe.set_cdw(11, 0x14).set_cdw(12, cc);
    assert_eq!(status_of(&admin.command(&sqe, &[])), Status::SUCCESS);
}

/// Found by the fuzzer: write data that arrived after the controller was reset (or its
/// admin queue gone) was still written, on a queue that no longer served.
#[test]
fn r2t_data_for_a_queue_that_outlived_its_controller_is_not_written() {
    for reset in [true, false] {
        let context = context();
        let (mut admin, mut ioq) = io_queue(&context, false);
        let (ttag, _) = r2t_of(&ioq.command(&write_sqe(7, 0, 4096), &[]));
        if reset {
            set_cc(&mut admin, 9, 0x0046_0000);
        } else {
            admin.qpair.close();
        }
        let pdu = h2c(&ioq.neg, 7, ttag, 0, &[0x5A; 4096], true);
        let mut cx = IoCx::new(&ioq.completions, 0, &ioq.notifier, &mut ioq.pool);
        let (_, flow) = ioq.qpair.handle_input(&pdu, &mut cx, ioq.now);
        assert_eq!(flow, Flow::Close, "reset {reset}");
        assert!(
            ioq.take_output().is_empty(),
            "no completion (reset {reset})"
        );
        let ns = context
            .registry
            .subsystem(SUBNQN)
            .and_then(|s| s.namespace(crate::nvme::Nsid(1)));
        let backend = Arc::clone(ns.expect("namespace").backend());
        let done = crate::backend::tests::run(
            &*backend,
            &ioq.completions,
            crate::backend::IoKind::Read,
            0,
            vec![0xEE; 4096],
        );
        assert!(
            done.buf.iter().all(|&b| b == 0),
            "the write landed (reset {reset})"
        );
    }
}

/// The same for a command that waited for buffers while its controller was reset: it gets
/// no R2T and does not run.
#[test]
fn a_command_granted_buffers_after_a_reset_does_not_run() {
    let context = context();
    let (mut admin, mut ioq) = io_queue(&context, false);
    let shared = SharedPool::new(PoolLimits::new(1, Some(0), 131_072, 1));
    ioq.pool = BufferPool::new(Arc::clone(&shared), 0, Arc::new(|| {}));
    let (ttag, _) = r2t_of(&ioq.command(&write_sqe(1, 0, 4096), &[]));
    assert!(ioq.command(&read_sqe(2, 0, 4096), &[]).is_empty(), "waits");
    let out = ioq.feed(&h2c(&ioq.neg, 1, ttag, 0, &[1; 4096], true));
    assert_eq!(status_of(&ioq.replies(&out)), Status::SUCCESS);
    set_cc(&mut admin, 9, 0x0046_0000);
    let (key, credits) = ioq.pool.poll_granted().expect("granted");
    let tag = u16::try_from(key & 0xFFFF).expect("tag");
    let mut cx = IoCx::new(&ioq.completions, 0, &ioq.notifier, &mut ioq.pool);
    let flow = ioq
        .qpair
        .handle_buffers_granted(tag, credits, &mut cx, ioq.now);
    assert_eq!(flow, Flow::Close);
    assert!(ioq.take_output().is_empty(), "no data, no completion");
    ioq.qpair.close();
    ioq.pool.collect_strays();
    assert_eq!(ioq.pool.stats().in_use, 0, "the credits came back");
}
