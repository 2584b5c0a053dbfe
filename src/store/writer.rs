//! The writer thread: takes pending operations in submission order (never splitting an open
//! group), applies each take as one atomic batch, flushes per the sync mode, and publishes the
//! durable ticket. L1. Invariants: a ticket is published only once every operation up to it is
//! on disk (applied, for sync = "off"); it never lets the storage engine meet a full disk (it
//! pauses below `persistence.min_free_bytes` instead); it never exits with unwritten operations
//! without counting them in `Shared::unwritten`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::{dir, lock, Backend, Op, Shared, SledBackend, StoreError};
use crate::config::SyncMode;

/// A quarter of the flush interval: with sync = "periodic" nothing acknowledged waits longer
/// than this for its flush to start (see `AckPolicy::Bounded`), which leaves three quarters of
/// the interval for the write and the fsync (and a loaded machine's scheduling) before the
/// promise "a crash loses at most flush_interval_ms of acknowledgements" could break.
pub(super) fn gate_ms(flush_interval: Duration) -> u64 {
    (flush_interval.as_millis() as u64 / 4).max(1)
}

/// With sync = "periodic", a flush comes early once this many applied ops wait for it.
const MAX_UNFLUSHED_OPS: usize = 65_536;

/// Capacity (in ops) the writer keeps in its buffers between bursts.
const OPS_KEPT: usize = 4096;

/// How long the writer waits before retrying a failed engine or a full disk.
const RETRY: Duration = Duration::from_millis(250);

pub(super) struct Writer<F> {
    backend: Option<SledBackend>,
    reopen: F,
    shared: Arc<Shared>,
    path: PathBuf,
    min_free_bytes: u64,
    /// Taken from `pending`, not yet applied.
    batch: Vec<Op>,
    /// The ticket of the last operation taken.
    taken_ticket: u64,
    /// When the oldest taken operation not yet durable was submitted (store clock).
    undurable_since_ms: Option<u64>,
    /// Applied since the last successful flush (re-applied after a reopen; not kept for
    /// sync = "off").
    unflushed: Vec<Op>,
    dirty: bool,
    last_flush: Instant,
    failing: bool,
    /// Free space is below the reserve: nothing is applied.
    paused: bool,
    compactor: Compactor,
}

impl<F: Fn() -> Result<SledBackend, StoreError>> Writer<F> {
    pub(super) fn new(
        backend: SledBackend,
        shared: Arc<Shared>,
        reopen: F,
        path: PathBuf,
        min_free_bytes: u64,
    ) -> Self {
        Writer {
            backend: Some(backend),
            reopen,
            shared,
            path,
            min_free_bytes,
            batch: Vec::new(),
            taken_ticket: 0,
            undurable_since_ms: None,
            unflushed: Vec::new(),
            dirty: false,
            last_flush: Instant::now(),
            failing: false,
            paused: false,
            compactor: Compactor::default(),
        }
    }

    /// Runs until the store is closed. sled 0.34 makes any I/O error sticky (every later call
    /// fails until the database is reopened), so a failure drops the engine, reopens the
    /// directory (which recovers what reached the disk) and re-applies, in order, what was
    /// applied since the last successful flush plus the failed batch: every operation sets or
    /// removes keys, so re-applying a suffix over state that holds part of it is exact. With
    /// sync = "off" nothing is flushed explicitly, so a reopen loses what sled had not yet
    /// written, as a crash would.
    pub(super) fn run(mut self) {
        loop {
            let stopping = self.take();
            if self.backend.is_none() {
                match (self.reopen)() {
                    Ok(b) => {
                        self.backend = Some(b);
                        // Re-apply what the dropped engine may not have written.
                        self.unflushed.append(&mut self.batch);
                        self.batch = std::mem::take(&mut self.unflushed);
                        self.dirty = false;
                    }
                    Err(e) => {
                        if stopping {
                            return self.give_up("reopen", &e);
                        }
                        self.retry("reopen", e);
                    }
                }
                continue;
            }
            self.compactor.compact(&mut self.batch);
            if !self.batch.is_empty() {
                if !self.space_left(stopping) {
                    if stopping {
                        return self.give_up_full();
                    }
                    std::thread::sleep(RETRY);
                    continue;
                }
                if let Err(e) = self.apply() {
                    if stopping {
                        return self.give_up("write", &e);
                    }
                    self.retry("write", e);
                    continue;
                }
            }
            if self.flush_due(stopping) {
                if let Err(e) = self.flush() {
                    if stopping {
                        return self.give_up("flush", &e);
                    }
                    self.retry("flush", e);
                    continue;
                }
            }
            // A burst must not leave its high-water capacity behind.
            for v in [&mut self.batch, &mut self.unflushed] {
                if v.is_empty() && v.capacity() > OPS_KEPT {
                    v.shrink_to(OPS_KEPT);
                }
            }
            if self.failing {
                warn!("persistence recovered");
                self.failing = false;
            }
            self.publish();
            if stopping && self.batch.is_empty() && lock(&self.shared.pending).ops.is_empty() {
                return;
            }
        }
    }

    /// Waits for work per the sync mode and moves pending operations into `batch`, stopping
    /// at the start of the oldest open group. Returns whether the store is closing.
    fn take(&mut self) -> bool {
        let shared = &*self.shared;
        let mut p = lock(&shared.pending);
        loop {
            let takeable = if p.open_groups > 0 {
                p.epoch_start
            } else {
                p.ops.len()
            };
            if takeable > 0 || p.stopping || !self.batch.is_empty() {
                break;
            }
            if self.dirty && shared.sync == SyncMode::Always {
                break;
            }
            let wait = match (shared.sync, self.undurable_since_ms) {
                (SyncMode::Periodic, Some(since)) if self.dirty => {
                    let due = since + self.gate_ms();
                    let now = shared.now_ms();
                    if now >= due {
                        break;
                    }
                    Duration::from_millis(due - now)
                }
                _ => Duration::from_secs(3600),
            };
            p.writer_waiting = p.open_groups > 0 && !p.ops.is_empty();
            let (guard, _) = shared
                .wake
                .wait_timeout(p, wait)
                .unwrap_or_else(|e| e.into_inner());
            p = guard;
        }
        p.writer_waiting = false;
        let takeable = if p.open_groups > 0 {
            p.epoch_start
        } else {
            p.ops.len()
        };
        if takeable > 0 {
            let left = p.ops.len() - takeable;
            self.taken_ticket = p.last_ticket - left as u64;
            if let Some(first) = p.first_ms {
                self.undurable_since_ms =
                    Some(self.undurable_since_ms.map_or(first, |u| u.min(first)));
            }
            // Closed epochs all lie before the open one (if any), so within what is taken.
            let epochs = std::mem::take(&mut p.epochs);
            if epochs.is_empty() {
                self.batch.extend(p.ops.drain(..takeable));
            } else {
                let mut next = epochs.iter().peekable();
                for (i, op) in p.ops.drain(..takeable).enumerate() {
                    if next.peek().is_some_and(|e| e.0 == i) {
                        self.batch.push(Op::AtomicBegin);
                    }
                    self.batch.push(op);
                    if next.peek().is_some_and(|e| e.1 == i + 1) {
                        self.batch.push(Op::AtomicEnd);
                        next.next();
                    }
                }
            }
            if left == 0 {
                p.first_ms = None;
            }
            // Otherwise the rest was submitted later; keeping the older time only gates earlier.
            if p.open_groups > 0 {
                p.epoch_start -= takeable;
            }
        }
        p.stopping
    }

    fn gate_ms(&self) -> u64 {
        gate_ms(self.shared.flush_interval)
    }

    /// Whether the file system has room for this batch above the reserve. Below it, nothing
    /// is written (so the engine never meets ENOSPC, which sled 0.34 does not survive for
    /// large records) and acknowledgements that wait for the disk are withheld.
    fn space_left(&mut self, stopping: bool) -> bool {
        if self.min_free_bytes == 0 {
            return true;
        }
        let need: u64 =
            self.min_free_bytes + 2 * self.batch.iter().map(Op::disk_estimate).sum::<u64>();
        let free = match dir::free_bytes(&self.path) {
            Ok(f) => f,
            Err(e) => {
                debug!(error = %e, "cannot read the free space of the data directory");
                return true;
            }
        };
        if free >= need {
            if self.paused {
                info!(
                    free_bytes = free,
                    "persistence resumed: disk space available again"
                );
                self.paused = false;
            }
            return true;
        }
        if !self.paused && !stopping {
            error!(
                path = %self.path.display(),
                free_bytes = free,
                needed_bytes = need,
                min_free_bytes = self.min_free_bytes,
                "persistence paused: the data directory's file system is below \
                 persistence.min_free_bytes; acknowledgements that need the disk are withheld \
                 until space is freed"
            );
            self.paused = true;
        }
        false
    }

    fn apply(&mut self) -> Result<(), StoreError> {
        let engine = self
            .backend
            .as_mut()
            .ok_or(StoreError::Corrupt("no engine"))?;
        engine.apply(&self.batch)?;
        if self.shared.sync == SyncMode::Off {
            self.batch.clear();
        } else {
            self.unflushed.append(&mut self.batch);
        }
        self.dirty = true;
        Ok(())
    }

    fn flush_due(&self, stopping: bool) -> bool {
        if !self.dirty {
            return false;
        }
        match self.shared.sync {
            SyncMode::Always => true,
            // Also early when many ops wait: bounds the memory kept for a re-apply.
            SyncMode::Periodic => {
                stopping
                    || self.last_flush.elapsed() >= self.shared.flush_interval
                    || self.unflushed.len() >= MAX_UNFLUSHED_OPS
                    || self
                        .undurable_since_ms
                        .is_some_and(|s| self.shared.now_ms() >= s + self.gate_ms())
            }
            SyncMode::Off => stopping,
        }
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let engine = self
            .backend
            .as_mut()
            .ok_or(StoreError::Corrupt("no engine"))?;
        let started = Instant::now();
        engine.flush()?;
        self.shared.flush_latency.observe(started.elapsed());
        self.unflushed.clear();
        self.dirty = false;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Publishes the durable ticket: everything taken, once nothing applied awaits a flush
    /// (sync = "off": once applied).
    fn publish(&mut self) {
        let shared = &*self.shared;
        if !self.batch.is_empty() {
            return;
        }
        if shared.sync != SyncMode::Off && self.dirty {
            return;
        }
        self.undurable_since_ms = None;
        {
            let p = lock(&shared.pending);
            let since = p.first_ms.unwrap_or(u64::MAX);
            shared.backlog_since_ms.store(since, Ordering::Release);
        }
        shared.flushed.send_replace(self.taken_ticket);
    }

    fn retry(&mut self, what: &str, e: StoreError) {
        if !self.failing {
            error!(error = %e, "persistence {what} failed; acknowledgements withheld, retrying");
            self.failing = true;
        } else {
            debug!(error = %e, "persistence {what} failed again");
        }
        // Drop the engine (and its file lock) before reopening.
        self.backend = None;
        std::thread::sleep(RETRY);
    }

    fn unwritten(&self) -> usize {
        self.batch.len() + self.unflushed.len() + lock(&self.shared.pending).ops.len()
    }

    fn give_up(&self, what: &str, e: &StoreError) {
        let n = self.unwritten();
        error!(error = %e, unwritten_ops = n, "persistence {what} failed at shutdown: state not written");
        self.shared.unwritten.store(n as u64, Ordering::Release);
    }

    fn give_up_full(&self) {
        let n = self.unwritten();
        error!(
            path = %self.path.display(),
            unwritten_ops = n,
            "disk still below persistence.min_free_bytes at shutdown: state not written"
        );
        self.shared.unwritten.store(n as u64, Ordering::Release);
    }
}

/// Cancels, within one batch, the writes of messages that were queued and completed before the
/// batch reached the disk: a `MsgPut`, its `MsgState`s and its `MsgDel` all in the same batch
/// leave nothing to write. With subscribers that keep up, most QoS 1 messages never touch the
/// disk, and the acknowledgements that waited for them are still only sent once the batch is
/// done (by then the message has been delivered and acknowledged end to end).
#[derive(Default)]
pub(super) struct Compactor {
    /// (client, seq) -> indices in the batch of its `MsgPut` and `MsgState`s.
    open: HashMap<(Arc<str>, u64), Vec<usize>>,
    drop: Vec<bool>,
}

impl Compactor {
    pub(super) fn compact(&mut self, batch: &mut Vec<Op>) {
        self.open.clear();
        self.drop.clear();
        self.drop.resize(batch.len(), false);
        let mut dropped = 0;
        for (i, op) in batch.iter().enumerate() {
            match op {
                Op::MsgPut { client, seq, .. } => {
                    self.open.insert((client.clone(), *seq), vec![i]);
                }
                Op::MsgState { client, seq, .. } => {
                    if let Some(v) = self.open.get_mut(&(client.clone(), *seq)) {
                        v.push(i);
                    }
                }
                Op::MsgDel { client, seq } => {
                    if let Some(v) = self.open.remove(&(client.clone(), *seq)) {
                        for j in v {
                            self.drop[j] = true;
                        }
                        self.drop[i] = true;
                        dropped += 1;
                    }
                }
                // Sequence numbers restart with a new session: forget the old one's.
                Op::SessionDel { client } => self.open.retain(|(c, _), _| c != client),
                _ => {}
            }
        }
        if dropped > 0 {
            let mut i = 0;
            batch.retain(|_| {
                let keep = !self.drop[i];
                i += 1;
                keep
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::{StoredMessage, StoredState};

    fn put(c: &Arc<str>, seq: u64) -> Op {
        Op::MsgPut {
            client: c.clone(),
            seq,
            msg: StoredMessage {
                topic: "t".into(),
                payload: Bytes::from_static(b"x"),
                qos: 1,
                retain: false,
            },
        }
    }

    fn kinds(batch: &[Op]) -> Vec<String> {
        batch
            .iter()
            .map(|op| match op {
                Op::MsgPut { seq, .. } => format!("put{seq}"),
                Op::MsgState { seq, .. } => format!("state{seq}"),
                Op::MsgDel { seq, .. } => format!("del{seq}"),
                Op::SessionDel { .. } => "sdel".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// A message queued, sent and acknowledged within one batch writes nothing; one whose put
    /// was written in an earlier batch keeps its delete; an open one keeps everything.
    #[test]
    fn completed_messages_cancel_within_a_batch() {
        let c: Arc<str> = "c".into();
        let state = |seq| Op::MsgState {
            client: c.clone(),
            seq,
            state: StoredState::Sent(1),
        };
        let del = |seq| Op::MsgDel {
            client: c.clone(),
            seq,
        };
        let mut batch = vec![put(&c, 1), state(1), put(&c, 2), del(1), del(7), state(2)];
        Compactor::default().compact(&mut batch);
        assert_eq!(kinds(&batch), ["put2", "del7", "state2"]);
    }

    /// Sequence numbers of a removed session never cancel the new session's messages.
    #[test]
    fn session_delete_separates_sequence_numbers() {
        let c: Arc<str> = "c".into();
        let mut batch = vec![
            put(&c, 1),
            Op::SessionDel { client: c.clone() },
            Op::MsgDel {
                client: c.clone(),
                seq: 1,
            },
        ];
        Compactor::default().compact(&mut batch);
        assert_eq!(kinds(&batch), ["put1", "sdel", "del1"]);
    }
}
