//! The target's queue pair and the host's queue machine wired together in memory (quinn-proto's
//! `Pair::drive`): what one sends the other reads, until neither has anything to say. No
//! socket, no thread, no clock; both ends are the real code.

use std::sync::Arc;
use std::time::Instant;

use super::TcpContext;
use super::TcpQpair;
use super::qpair::tests::{HOSTNQN, SUBNQN, buffer_pool, context};
use crate::controller::ListenerAddr;
use crate::host::{HostError, HostMachine, HostQueue, TestCommands};
use crate::nvme::connect::{CATTR_DISABLE_SQ_FLOW_CONTROL, ConnectCmd, ConnectData};
use crate::nvme::opcode::{FABRICS, admin, fctype};
use crate::nvme::{Cqe, Sqe, Status};
use crate::transport::buffer_pool::BufferPool;
use crate::transport::context::{AsyncNotifier, Flow, IoCx};
use crate::transport::tcp::pdu::{self, fes, pdu_type};

/// One queue: the target's end and the host's, and the bytes in flight between them.
struct Pair {
    target: TcpQpair,
    target_closed: bool,
    completions: crate::backend::Completions,
    _poll: mio::Poll,
    notifier: AsyncNotifier,
    pool: BufferPool,
    now: Instant,
    host: HostMachine,
    commands: TestCommands,
    to_target: Vec<u8>,
    finished: Vec<Cqe>,
    next_cid: u16,
    /// Applied to every batch the target sends, before the host reads it.
    in_transit: fn(&mut Vec<u8>),
}

impl Pair {
    /// A connection through ICReq and ICResp.
    fn new(context: &Arc<TcpContext>, digests: bool) -> Self {
        let (poll, completions) = crate::backend::tests::completions();
        let now = Instant::now();
        let listener = ListenerAddr::Tcp("127.0.0.1:4420".parse().expect("address"));
        let host = HostMachine::new(digests, digests, 4096);
        let mut pair = Self {
            target: TcpQpair::new(Arc::clone(context), listener, None, now),
            target_closed: false,
            completions,
            _poll: poll,
            notifier: Arc::new(|| {}),
            pool: buffer_pool(),
            now,
            host,
            commands: TestCommands::default(),
            to_target: Vec::new(),
            finished: Vec::new(),
            next_cid: 1,
            in_transit: |_| {},
        };
        pair.host.icreq(&mut pair.to_target);
        pair.drive().expect("ICReq and ICResp");
        assert!(pair.host.is_established());
        pair
    }

    /// Moves bytes both ways until neither end has anything to send.
    fn drive(&mut self) -> Result<(), HostError> {
        loop {
            if !self.to_target.is_empty() && !self.target_closed {
                let mut cx = IoCx::new(&self.completions, 0, &self.notifier, &mut self.pool);
                let (used, flow) = self.target.handle_input(&self.to_target, &mut cx, self.now);
                self.to_target.drain(..used);
                self.target_closed |= flow == Flow::Close;
            }
            let mut from_target = self.target.output().take_all();
            let mut cx = IoCx::new(&self.completions, 0, &self.notifier, &mut self.pool);
            self.target.handle_sent(&mut cx);
            if from_target.is_empty() {
                return Ok(());
            }
            (self.in_transit)(&mut from_target);
            self.host_reads(&from_target)?;
        }
    }

    fn host_reads(&mut self, mut bytes: &[u8]) -> Result<(), HostError> {
        if !self.host.is_established() {
            let (icresp, rest) = bytes.split_at(bytes.len().min(pdu::IC_LEN));
            self.host.handle_icresp(icresp)?;
            bytes = rest;
        }
        while let Some(view) = self.host.deframe(bytes, 1 << 20)? {
            bytes = &bytes[view.len()..];
            let done = self
                .host
                .handle_pdu(&view, &mut self.commands, &mut self.to_target)?;
            self.finished.extend(done);
        }
        if !bytes.is_empty() {
            return Err(HostError::Protocol("half a PDU left"));
        }
        Ok(())
    }

    /// Runs one command to completion: its completion and the data it read.
    fn run(
        &mut self,
        mut sqe: Sqe,
        write: &[u8],
        read_len: u32,
    ) -> Result<(Cqe, Vec<u8>), HostError> {
        let cid = self.next_cid;
        self.next_cid += 1;
        sqe.set_cid(cid);
        let by_r2t = self.host.command(&mut self.to_target, sqe, write, read_len);
        let write = if by_r2t { write.to_vec() } else { Vec::new() };
        self.commands
            .0
            .insert(cid, (write, vec![0; read_len as usize], 0));
        self.drive()?;
        let at = self
            .finished
            .iter()
            .position(|c| c.cid == cid)
            .ok_or(HostError::Protocol("no completion"))?;
        let cqe = self.finished.remove(at);
        let (_, read, received) = self.commands.0.remove(&cid).unwrap_or_default();
        assert!(received == 0 || received == read.len(), "whole reads only");
        Ok((cqe, read))
    }

    fn connect(&mut self, qid: u16, cntlid: u16, cattr: u8) -> u16 {
        let mut sqe = Sqe::new(FABRICS, 0);
        sqe.set_fctype(fctype::CONNECT);
        ConnectCmd {
            recfmt: 0,
            qid,
            sqsize: 31,
            cattr,
            kato: if qid == 0 { 10_000 } else { 0 },
        }
        .emit(&mut sqe);
        let mut data = vec![0; 1024];
        ConnectData {
            hostid: [9; 16],
            cntlid,
            subnqn: SUBNQN.into(),
            hostnqn: HOSTNQN.into(),
        }
        .emit(&mut data);
        let (cqe, _) = self.run(sqe, &data, 0).expect("Connect");
        assert_eq!(cqe.status, Status::SUCCESS, "{cqe:?}");
        u16::try_from(cqe.dw0 & 0xFFFF).expect("cntlid")
    }

    fn ok(&mut self, sqe: Sqe, write: &[u8], read_len: u32) -> Vec<u8> {
        let (cqe, data) = self.run(sqe, write, read_len).expect("command");
        assert_eq!(cqe.status, Status::SUCCESS, "{cqe:?}");
        data
    }
}

/// An enabled controller's admin queue, and its I/O queue 1.
fn controller(context: &Arc<TcpContext>, digests: bool, cattr: u8) -> (Pair, Pair) {
    let mut admin = Pair::new(context, digests);
    let cntlid = admin.connect(0, 0xFFFF, 0);
    let mut enable = Sqe::new(FABRICS, 0);
    enable
        .set_fctype(fctype::PROPERTY_SET)
        .set_cdw(11, 0x14)
        .set_cdw(12, 0x0046_0001);
    admin.ok(enable, &[], 0);
    let mut ioq = Pair::new(context, digests);
    ioq.connect(1, cntlid, cattr);
    (admin, ioq)
}

#[test]
fn connect_identify_and_io_with_and_without_digests() {
    for digests in [false, true] {
        let context = context();
        let (mut admin, mut ioq) = controller(&context, digests, 0);
        let mut identify = Sqe::new(admin::IDENTIFY, 0);
        identify.set_cdw(10, 1);
        let page = admin.ok(identify, &[], 4096);
        assert_eq!(&page[24..24 + 8], b"nvmf-tgt", "model number");
        // 4 KiB in the capsule, 128 KiB through R2T (cut at MAXH2CDATA), both read back.
        let small: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
        ioq.ok(HostQueue::write_sqe(1, 0, 8, false), &small, 0);
        let large: Vec<u8> = (0..131_072u32).map(|i| (i % 241) as u8).collect();
        ioq.ok(HostQueue::write_sqe(1, 64, 256, true), &large, 0);
        assert_eq!(ioq.ok(HostQueue::read_sqe(1, 0, 8), &[], 4096), small);
        assert_eq!(ioq.ok(HostQueue::read_sqe(1, 64, 256), &[], 131_072), large);
    }
}

#[test]
fn reads_complete_by_the_success_flag_when_sq_flow_control_is_off() {
    let context = context();
    let (_admin, mut ioq) = controller(&context, true, CATTR_DISABLE_SQ_FLOW_CONTROL);
    ioq.ok(HostQueue::write_sqe(1, 0, 8, false), &[7; 4096], 0);
    let (cqe, data) = ioq
        .run(HostQueue::read_sqe(1, 0, 8), &[], 4096)
        .expect("read");
    assert_eq!(data, vec![7; 4096]);
    // The completion the host machine made from the C2HData's SUCCESS flag: no SQ head.
    assert_eq!((cqe.status, cqe.sqhd, cqe.sqid), (Status::SUCCESS, 0, 0));
}

#[test]
fn a_malformed_pdu_from_the_host_ends_in_a_termination_request() {
    let context = context();
    let (_admin, mut ioq) = controller(&context, false, 0);
    // A CapsuleCmd whose header length is not 72.
    let mut bad = Vec::new();
    ioq.host
        .command(&mut bad, HostQueue::read_sqe(1, 0, 1), &[], 512);
    bad[2] = 64;
    ioq.to_target.extend(bad);
    assert!(matches!(
        ioq.drive(),
        Err(HostError::Terminated {
            fes: fes::INVALID_HEADER_FIELD,
            fei: 2
        })
    ));
    assert!(ioq.target_closed);
}

#[test]
fn a_status_error_travels_back_whole() {
    let context = context();
    let (_admin, mut ioq) = controller(&context, false, 0);
    // Past the end of the 1 MiB namespace (2048 blocks).
    let (cqe, _) = ioq
        .run(HostQueue::read_sqe(1, 4096, 8), &[], 4096)
        .expect("answered");
    assert_eq!(cqe.status, Status::LBA_OUT_OF_RANGE.with_dnr());
}

#[test]
fn damage_on_the_way_to_the_host_is_an_error_there_not_a_panic() {
    let context = context();
    let (_admin, mut ioq) = controller(&context, true, 0);
    ioq.ok(HostQueue::write_sqe(1, 0, 8, false), &[1; 4096], 0);
    // A bit flipped in the header of the first PDU back (a header digest mismatch).
    ioq.in_transit = |bytes| bytes[4] ^= 0x10;
    assert!(ioq.run(HostQueue::read_sqe(1, 0, 8), &[], 4096).is_err());
    // A batch cut short: half a PDU is an error, the rest never read.
    let (_admin, mut ioq) = controller(&context, true, 0);
    ioq.in_transit = |bytes| bytes.truncate(bytes.len() / 2);
    assert!(ioq.run(HostQueue::read_sqe(1, 0, 8), &[], 4096).is_err());
    // Data for a command the host never sent.
    let (_admin, mut ioq) = controller(&context, false, 0);
    ioq.in_transit = |bytes| {
        if bytes.first() == Some(&pdu_type::C2H_DATA) {
            bytes[8] ^= 0x80;
        }
    };
    assert!(matches!(
        ioq.run(HostQueue::read_sqe(1, 0, 8), &[], 4096),
        Err(HostError::Protocol("C2HData for a command not reading"))
    ));
}
