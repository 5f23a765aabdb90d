//! The host side of one NVMe/TCP queue as a state machine with no socket: ICReq and ICResp,
//! commands with in-capsule data or R2T, H2CData answering R2T, C2HData (with SUCCESS) and
//! CapsuleResp, termination requests, digests. The blocking [`HostQueue`](super::HostQueue)
//! and `nvmf-perf`'s non-blocking queue both drive it: they own the socket and the command
//! table, the machine decides what every PDU means.
//!
//! Bytes to send are appended to the caller's buffer; data moves between the PDUs and the
//! caller's own command buffers through [`CommandBuffers`], so a caller that reuses buffers
//! per slot (perf) allocates nothing per command.

use super::HostError;
use crate::nvme::{Cqe, Sgl, Sqe, Status};
use crate::transport::tcp::pdu::{
    self, CapsuleCmd, CommonHeader, DataPdu, Digests, Framing, IcReq, IcResp, Pdu, PduView,
    pdu_type,
};

/// Where the data of the caller's commands is.
pub trait CommandBuffers {
    /// The data command `cid` writes, of which an R2T asks for a part; `None` when `cid` is
    /// not a command writing through R2T.
    fn write_data(&self, cid: u16) -> Option<&[u8]>;

    /// The buffer the data of command `cid` lands in, as long as the data it asked for;
    /// `None` when `cid` is not a command reading.
    fn read_buffer(&mut self, cid: u16) -> Option<&mut [u8]>;

    /// `len` bytes landed at `offset` of `cid`'s read buffer.
    fn data_received(&mut self, cid: u16, offset: usize, len: usize) {
        let _ = (cid, offset, len);
    }
}

/// The host side of one queue.
#[derive(Debug, Clone)]
pub struct HostMachine {
    /// The digests asked for in ICReq.
    asked: Digests,
    /// The digests ICResp granted and the target's data alignment (CPDA).
    framing: Framing,
    maxh2cdata: usize,
    in_capsule_limit: usize,
    established: bool,
}

impl HostMachine {
    /// A queue that asks for the digests given, and sends writes up to `in_capsule_limit`
    /// bytes in the capsule.
    pub fn new(header_digest: bool, data_digest: bool, in_capsule_limit: usize) -> Self {
        Self {
            asked: Digests {
                header: header_digest,
                data: data_digest,
            },
            framing: Framing::default(),
            maxh2cdata: 4096,
            in_capsule_limit,
            established: false,
        }
    }

    /// The same queue sending writes up to `limit` bytes in the capsule (what the target's
    /// IOCCSZ allows an I/O queue).
    #[must_use]
    pub fn with_in_capsule_limit(&self, limit: usize) -> Self {
        Self {
            in_capsule_limit: limit,
            ..self.clone()
        }
    }

    /// The connection's first PDU.
    pub fn icreq(&self, out: &mut Vec<u8>) {
        IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: self.asked.header,
            data_digest: self.asked.data,
            maxr2t: 0,
        }
        .emit(out);
    }

    /// Takes the target's answer to ICReq: the framing it grants, which must be the digests
    /// asked for.
    pub fn handle_icresp(&mut self, bytes: &[u8]) -> Result<(), HostError> {
        let resp: IcResp = match parse_from_target(bytes, Digests::NONE)? {
            Pdu::IcResp(resp) => resp,
            Pdu::C2HTermReq(term) => {
                return Err(HostError::Terminated {
                    fes: term.fes,
                    fei: term.fei,
                });
            }
            _ => return Err(HostError::Protocol("expected ICResp")),
        };
        if resp.pfv != 0 {
            return Err(HostError::Protocol(
                "ICResp with an unknown PDU format version",
            ));
        }
        if resp.header_digest != self.asked.header || resp.data_digest != self.asked.data {
            return Err(HostError::Protocol(
                "ICResp did not grant the digests asked for",
            ));
        }
        self.framing = Framing {
            digests: self.asked,
            pda: resp.cpda,
        };
        self.maxh2cdata = usize::try_from(resp.maxh2cdata)
            .unwrap_or(usize::MAX)
            .max(4096);
        self.established = true;
        Ok(())
    }

    /// Whether ICResp has arrived.
    pub fn is_established(&self) -> bool {
        self.established
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The largest H2CData payload the target accepts (MAXH2CDATA from ICResp).
    pub fn maxh2cdata(&self) -> usize {
        self.maxh2cdata
    }

    /// Appends command `sqe` (its CID set): `write` is its host data, in the capsule when
    /// small enough, else sent when the target asks for it; `read_len` is how much data it
    /// returns. Returns whether the write waits for R2T.
    pub fn command(&self, out: &mut Vec<u8>, mut sqe: Sqe, write: &[u8], read_len: u32) -> bool {
        let in_capsule = !write.is_empty() && write.len() <= self.in_capsule_limit;
        let sgl_len = u32::try_from(write.len()).unwrap_or(u32::MAX).max(read_len);
        sqe.set_sgl(if in_capsule {
            Sgl::in_capsule(sgl_len)
        } else {
            Sgl::transport(sgl_len)
        });
        let data = if in_capsule { write } else { &[] };
        CapsuleCmd { sqe, data }.emit(out, &self.framing);
        !write.is_empty() && !in_capsule
    }

    /// The whole PDU at the start of `buf` once it has fully arrived, its framing checked
    /// against what ICResp granted; `Ok(None)` while more bytes are needed. A PDU longer than
    /// `max_len` is an error: the caller's receive buffer could never hold it.
    pub fn deframe<'a>(
        &self,
        buf: &'a [u8],
        max_len: usize,
    ) -> Result<Option<PduView<'a>>, HostError> {
        let Some(ch) = CommonHeader::peek(buf) else {
            return Ok(None);
        };
        // ICResp was the handshake's; after it a target sends only these.
        if ch.pdu_type == pdu_type::IC_RESP || !pdu::sent_by_controller(ch.pdu_type) {
            return Err(HostError::Protocol("unexpected PDU type"));
        }
        ch.check()?;
        if ch.plen() > max_len {
            return Err(HostError::Protocol("PDU larger than the receive buffer"));
        }
        if buf.len() < ch.plen() {
            return Ok(None);
        }
        Ok(Some(PduView::after_header(ch, buf, self.framing.digests)?))
    }

    /// Acts on one PDU from the target (framing already checked): data lands in the caller's
    /// buffers, H2CData answering an R2T is appended to `out`. Returns the completion of the
    /// command it finished, if any (a C2HData with SUCCESS stands for a successful one).
    pub fn handle_pdu(
        &mut self,
        view: &PduView<'_>,
        buffers: &mut impl CommandBuffers,
        out: &mut Vec<u8>,
    ) -> Result<Option<Cqe>, HostError> {
        match Pdu::parse(view)? {
            Pdu::CapsuleResp(resp) => Ok(Some(resp.cqe)),
            Pdu::C2HData(data) => {
                view.check_data_digest()?;
                self.handle_c2h_data(&data, buffers)
            }
            Pdu::R2t(r2t) => {
                let r2to = usize::try_from(r2t.r2to).unwrap_or(usize::MAX);
                let r2tl = usize::try_from(r2t.r2tl).unwrap_or(usize::MAX);
                let write = buffers
                    .write_data(r2t.cccid)
                    .ok_or(HostError::Protocol("R2T for a command not writing"))?;
                let part = r2to
                    .checked_add(r2tl)
                    .and_then(|end| write.get(r2to..end))
                    .ok_or(HostError::Protocol("R2T beyond the write"))?;
                self.h2c_data(out, (r2t.cccid, r2t.ttag), r2to, part);
                Ok(None)
            }
            Pdu::C2HTermReq(term) => Err(HostError::Terminated {
                fes: term.fes,
                fei: term.fei,
            }),
            _ => Err(HostError::Protocol("unexpected PDU type")),
        }
    }

    fn handle_c2h_data(
        &self,
        data: &DataPdu<'_>,
        buffers: &mut impl CommandBuffers,
    ) -> Result<Option<Cqe>, HostError> {
        let cid = data.cccid;
        let offset = usize::try_from(data.datao).unwrap_or(usize::MAX);
        let read = buffers
            .read_buffer(cid)
            .ok_or(HostError::Protocol("C2HData for a command not reading"))?;
        let target = offset
            .checked_add(data.data.len())
            .and_then(|end| read.get_mut(offset..end))
            .ok_or(HostError::Protocol("C2HData beyond the read"))?;
        target.copy_from_slice(data.data);
        buffers.data_received(cid, offset, data.data.len());
        if !data.success {
            return Ok(None);
        }
        if !data.last {
            return Err(HostError::Protocol("SUCCESS without LAST_PDU"));
        }
        Ok(Some(Cqe::new(cid, Status::SUCCESS)))
    }

    /// H2CData (NVMe/TCP 1.0, 3.6.2.8): the R2T's data cut into PDUs of at most MAXH2CDATA.
    fn h2c_data(&self, out: &mut Vec<u8>, (cid, ttag): (u16, u16), offset: usize, data: &[u8]) {
        let mut sent = 0;
        for part in data.chunks(self.maxh2cdata.max(1)) {
            DataPdu {
                cccid: cid,
                ttag,
                datao: u32::try_from(offset + sent).unwrap_or(u32::MAX),
                last: sent + part.len() == data.len(),
                success: false,
                data: part,
            }
            .emit(out, pdu_type::H2C_DATA, &self.framing);
            sent += part.len();
        }
    }
}

/// Reads one whole PDU from a target: framing checked against the negotiated `digests`, the
/// data digest verified (a bad one is fatal on this side), the fields parsed.
pub fn parse_from_target(bytes: &[u8], digests: Digests) -> Result<Pdu<'_>, HostError> {
    let view = PduView::new_checked(bytes, digests)?;
    view.check_data_digest()?;
    let pdu = Pdu::parse(&view)?;
    if view.len() != bytes.len() {
        return Err(HostError::Protocol("bytes after the PDU"));
    }
    Ok(pdu)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
#[path = "machine_tests.rs"]
pub(crate) mod tests;
