//! The commands a queue holds, by tag: the tag names a command to the backend (its token)
//! and to the host's transport (TCP's R2T transfer tag, RDMA's work request), so a tag is
//! reused only once its command is gone.

use std::collections::VecDeque;
use std::time::Instant;

use crate::controller::IoPlan;
use crate::nvme::Sqe;
use crate::transport::buffer_pool::DataBuf;

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Waiting for buffer credits; no data has moved yet.
    AwaitBuffer,
    /// Waiting for the host's data the transport asked for, until `deadline`.
    AwaitData { deadline: Instant },
    /// Handed to the backend.
    Executing,
}

#[derive(Debug)]
pub(super) struct Command {
    pub sqe: Sqe,
    pub stage: Stage,
    /// `None` for admin commands.
    pub plan: Option<IoPlan>,
    /// The length of the host's data buffer as the transport found it (SGL or PRP).
    pub buffer_len: u32,
    /// Host data: from the capsule, or being fetched by the transport.
    pub data: DataBuf,
    /// Bytes of host data the transport fetches (0 when in the capsule or none).
    pub fetch_len: usize,
    pub received: usize,
    /// Part of the host's data arrived damaged (a bad data digest): the command fails once
    /// its data is all in, and nothing of it reaches the backend.
    pub corrupt: bool,
    /// Where a read, or the read half of a Compare, lands.
    pub read: DataBuf,
    pub read_len: usize,
    /// The turn the backend request was submitted in (the start of its latency).
    pub submitted: Option<Instant>,
    /// Bytes a Deallocate covers, counted when its ranges are parsed.
    pub unmap_bytes: u64,
}

/// Commands in flight, indexed by tag, and the deadlines of those waiting for host data.
#[derive(Debug, Default)]
pub(super) struct CommandTable {
    slots: Vec<Option<Command>>,
    free_tags: Vec<u16>,
    in_flight: usize,
    /// Oldest first; entries of commands that got their data are skipped when they reach the
    /// front.
    data_deadlines: VecDeque<(Instant, u16)>,
}

impl CommandTable {
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Stores `cmd` under a free tag; `None` only when all 65536 tags are taken, which the
    /// queue depth (at most 65535 entries) rules out.
    pub fn insert(&mut self, cmd: Command) -> Option<u16> {
        let tag = match self.free_tags.pop() {
            Some(tag) => tag,
            None => {
                let tag = u16::try_from(self.slots.len()).ok()?;
                self.slots.push(None);
                tag
            }
        };
        if let Stage::AwaitData { deadline } = cmd.stage {
            self.data_deadlines.push_back((deadline, tag));
        }
        self.slots[usize::from(tag)] = Some(cmd);
        self.in_flight += 1;
        Some(tag)
    }

    pub fn get(&self, tag: u16) -> Option<&Command> {
        self.slots.get(usize::from(tag))?.as_ref()
    }

    pub fn get_mut(&mut self, tag: u16) -> Option<&mut Command> {
        self.slots.get_mut(usize::from(tag))?.as_mut()
    }

    pub fn take(&mut self, tag: u16) -> Option<Command> {
        let cmd = self.slots.get_mut(usize::from(tag))?.take()?;
        self.free_tags.push(tag);
        self.in_flight -= 1;
        Some(cmd)
    }

    /// The deadline of the oldest command waiting for host data (possibly one that got its
    /// data since: [`overdue`](Self::overdue) skips those, so a stale entry only wakes the
    /// owner early).
    pub fn data_deadline(&self) -> Option<Instant> {
        self.data_deadlines.front().map(|(at, _)| *at)
    }

    /// The tag of a command whose host data is overdue at `now`.
    pub fn overdue(&mut self, now: Instant) -> Option<u16> {
        self.drop_stale_deadlines();
        let &(at, tag) = self.data_deadlines.front()?;
        (now >= at).then_some(tag)
    }

    pub fn clear(&mut self) -> Vec<Command> {
        self.free_tags.clear();
        self.data_deadlines.clear();
        self.in_flight = 0;
        self.slots.drain(..).flatten().collect()
    }

    /// Drops deadlines at the front whose command is no longer waiting for its data.
    pub fn drop_stale_deadlines(&mut self) {
        while let Some(&(at, tag)) = self.data_deadlines.front() {
            let waiting = self
                .get(tag)
                .is_some_and(|cmd| cmd.stage == Stage::AwaitData { deadline: at });
            if waiting {
                return;
            }
            self.data_deadlines.pop_front();
        }
    }
}
