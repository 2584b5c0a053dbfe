//! Durable state: the operations the broker persists and the writer thread that commits them.
//! L1: depends on L0 and sled (through `Backend`); never called with a session or trie lock
//! held across I/O. Invariants: operations are applied in submission order; a ticket is
//! reported flushed only after every operation up to it is on disk (group commit: one flush
//! covers everything pending at that moment); with persistence off nothing here runs.

pub(crate) mod data_dir;
mod sled_backend;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::{OnCorrupt, PersistenceConfig, SyncMode};

pub(crate) use sled_backend::SledBackend;

/// With sync = "periodic", a flush comes early once this many applied ops wait for it.
const MAX_UNFLUSHED_OPS: usize = 65_536;

/// Capacity (in ops) the writer keeps in its buffers between bursts.
const OPS_KEPT: usize = 4096;

/// How long `close` waits for the writer to flush and stop.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure of the storage engine. The message includes the cause; `source()` does not
/// repeat it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("storage engine: {0}")]
    Engine(sled::Error),
    #[error("data directory {path}: {error}")]
    Dir {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        StoreError::Engine(e)
    }
}

/// A message as stored: enough to re-send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMessage {
    pub(crate) topic: Arc<str>,
    pub(crate) payload: Bytes,
    /// Delivery QoS (for queued messages) or published QoS (retained).
    pub(crate) qos: u8,
    pub(crate) retain: bool,
}

/// Where a stored outgoing message is: queued, or in flight with its packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoredState {
    Queued,
    Sent(u16),
    Released(u16),
}

/// One change to durable state.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// A persistent session exists.
    SessionPut {
        client: Arc<str>,
    },
    /// Remove the session and everything stored for it.
    SessionDel {
        client: Arc<str>,
    },
    SubPut {
        client: Arc<str>,
        filter: Arc<str>,
        qos: u8,
    },
    SubDel {
        client: Arc<str>,
        filter: Arc<str>,
    },
    /// A message queued for a persistent session, keyed by its per-session sequence number.
    MsgPut {
        client: Arc<str>,
        seq: u64,
        msg: StoredMessage,
    },
    MsgState {
        client: Arc<str>,
        seq: u64,
        state: StoredState,
    },
    MsgDel {
        client: Arc<str>,
        seq: u64,
    },
    /// An inbound QoS 2 packet id awaiting PUBREL.
    Qos2Put {
        client: Arc<str>,
        pkid: u16,
    },
    Qos2Del {
        client: Arc<str>,
        pkid: u16,
    },
    RetainPut {
        msg: StoredMessage,
    },
    RetainDel {
        topic: Arc<str>,
    },
}

/// One stored message of a session, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredEntry {
    pub(crate) seq: u64,
    pub(crate) msg: StoredMessage,
    pub(crate) state: StoredState,
}

/// A persistent session as loaded at startup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct StoredSession {
    pub(crate) subscriptions: Vec<(String, u8)>,
    pub(crate) messages: Vec<StoredEntry>,
    pub(crate) inbound_qos2: Vec<u16>,
}

/// Everything loaded at startup.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) sessions: BTreeMap<String, StoredSession>,
    pub(crate) retained: Vec<StoredMessage>,
    /// Records that could not be decoded (logged, skipped).
    pub(crate) corrupt_records: usize,
}

/// A storage engine. Swappable: the broker only sees `Store`.
pub(crate) trait Backend: Send + 'static {
    /// Applies a batch of operations in order (not yet necessarily durable).
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError>;
    /// Makes everything applied so far durable (fsync).
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Reads everything back.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
}

/// Operations waiting for the writer, with the ticket of the last one.
#[derive(Default)]
struct Pending {
    ops: Vec<Op>,
    last_ticket: u64,
    stopping: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The highest ticket known to be durable (per the sync mode).
    flushed: watch::Sender<u64>,
    sync: SyncMode,
}

/// The writer thread and a channel that disconnects when it ends.
type Writer = (JoinHandle<()>, mpsc::Receiver<()>);

/// Handle to the store; cheap to clone. `Store::disabled()` makes every call a no-op.
#[derive(Clone, Default)]
pub(crate) struct Store {
    shared: Option<Arc<Shared>>,
    writer: Option<Arc<Mutex<Option<Writer>>>>,
}

impl Store {
    /// Persistence off: nothing is written, nothing is waited for.
    pub(crate) fn disabled() -> Store {
        Store::default()
    }

    /// Opens the data directory per `config` (moving a corrupt one aside or refusing), loads
    /// it, and starts the writer thread.
    pub(crate) fn open(config: &PersistenceConfig) -> Result<(Store, Snapshot), StoreError> {
        let started = Instant::now();
        let mut backend = match SledBackend::open(&config.path, config.sync, config.cache_bytes) {
            Ok(b) => b,
            Err(e) => recover(config, e)?,
        };
        let snapshot = match backend.load() {
            Ok(s) => s,
            Err(e) => {
                drop(backend);
                backend = recover(config, e)?;
                backend.load()?
            }
        };
        let messages: usize = snapshot.sessions.values().map(|s| s.messages.len()).sum();
        info!(
            path = %config.path.display(),
            sessions = snapshot.sessions.len(),
            messages,
            retained = snapshot.retained.len(),
            corrupt_records = snapshot.corrupt_records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "persistent state loaded"
        );
        let (flushed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            flushed,
            sync: config.sync,
        });
        let interval = Duration::from_millis(config.flush_interval_ms);
        let writer_shared = shared.clone();
        let (path, sync, cache) = (config.path.clone(), config.sync, config.cache_bytes);
        let reopen = move || SledBackend::open(&path, sync, cache);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("brokerd-store".into())
            .spawn(move || {
                let _done = done_tx;
                writer_loop(backend, &writer_shared, interval, reopen);
            })
            .map_err(|error| StoreError::Dir {
                path: config.path.clone(),
                error,
            })?;
        Ok((
            Store {
                shared: Some(shared),
                writer: Some(Arc::new(Mutex::new(Some((handle, done_rx))))),
            },
            snapshot,
        ))
    }

    pub(crate) fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether acknowledgements must wait for their ticket to be flushed (`sync = "always"`).
    pub(crate) fn acks_wait(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|s| s.sync == SyncMode::Always)
    }

    /// Queues an operation for the writer; returns its ticket. Never blocks on I/O.
    pub(crate) fn submit(&self, op: Op) -> u64 {
        let Some(shared) = &self.shared else {
            return 0;
        };
        let mut p = lock(&shared.pending);
        p.last_ticket += 1;
        p.ops.push(op);
        let ticket = p.last_ticket;
        let first = p.ops.len() == 1;
        drop(p);
        if first {
            shared.wake.notify_one();
        }
        ticket
    }

    /// The ticket of the last submitted operation (0 if none).
    pub(crate) fn last_ticket(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| lock(&s.pending).last_ticket)
    }

    /// Watches the highest durable ticket.
    pub(crate) fn flushed(&self) -> Option<watch::Receiver<u64>> {
        self.shared.as_ref().map(|s| s.flushed.subscribe())
    }

    /// Flushes what is pending and stops the writer (at shutdown).
    pub(crate) fn close(&self) {
        let (Some(shared), Some(writer)) = (&self.shared, &self.writer) else {
            return;
        };
        lock(&shared.pending).stopping = true;
        shared.wake.notify_one();
        let Some((handle, done)) = lock(writer).take() else {
            return;
        };
        // Bounded: a storage engine wedged in I/O must not keep the process from exiting.
        match done.recv_timeout(CLOSE_TIMEOUT) {
            Err(mpsc::RecvTimeoutError::Timeout) => error!(
                timeout_s = CLOSE_TIMEOUT.as_secs(),
                "persistence writer did not finish; exiting without flushing pending state"
            ),
            _ => {
                let _ = handle.join();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Handles a data directory that cannot be opened or read, per `on_corrupt`.
fn recover(config: &PersistenceConfig, e: StoreError) -> Result<SledBackend, StoreError> {
    if config.on_corrupt == OnCorrupt::Refuse {
        error!(path = %config.path.display(), error = %e, "data directory unusable; persistence.on_corrupt = \"refuse\": not starting");
        return Err(e);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = config.path.clone().into_os_string();
    aside.push(format!(".corrupt-{stamp}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(&config.path, &aside).map_err(|error| StoreError::Dir {
        path: config.path.clone(),
        error,
    })?;
    error!(
        path = %config.path.display(),
        moved_to = %aside.display(),
        error = %e,
        "data directory unusable: moved aside, starting with empty state"
    );
    SledBackend::open(&config.path, config.sync, config.cache_bytes)
}

/// The writer: takes every pending operation at once, applies them, flushes per the sync
/// mode, then publishes the durable ticket. On an engine error (disk full, I/O) it logs and
/// retries every 500 ms; tickets are not reported durable meanwhile, so acknowledgements that
/// wait for them are withheld and clients retry. sled 0.34 makes any I/O error sticky (every
/// later call fails until the database is reopened), so a retry drops the engine, reopens the
/// directory (which recovers what reached the disk) and re-applies, in order, the operations
/// applied since the last successful flush plus the failed batch. Every operation sets or
/// removes keys, so re-applying a suffix over state that already holds part of it is exact.
/// With sync = "off" nothing is flushed explicitly, so a reopen loses what sled had not yet
/// written, as a crash would.
fn writer_loop(
    backend: SledBackend,
    shared: &Shared,
    interval: Duration,
    reopen: impl Fn() -> Result<SledBackend, StoreError>,
) {
    let mut backend = Some(backend);
    let mut batch: Vec<Op> = Vec::new();
    let mut compactor = Compactor::default();
    // Applied since the last successful flush (not kept for sync = "off").
    let mut unflushed: Vec<Op> = Vec::new();
    let mut batch_ticket = 0;
    let mut last_flush = Instant::now();
    let mut dirty = false;
    let mut failing = false;
    let retry = |failing: &mut bool,
                 backend: &mut Option<SledBackend>,
                 what: &str,
                 e: StoreError| {
        if !*failing {
            error!(error = %e, "persistence {what} failed; acknowledgements withheld, retrying");
            *failing = true;
        } else {
            debug!(error = %e, "persistence {what} failed again");
        }
        // Drop the engine (and its file lock) before reopening.
        *backend = None;
        std::thread::sleep(Duration::from_millis(500));
    };
    loop {
        let stopping = {
            let mut p = lock(&shared.pending);
            while p.ops.is_empty()
                && !p.stopping
                && batch.is_empty()
                && !(dirty && shared.sync == SyncMode::Always)
            {
                let wait = match shared.sync {
                    SyncMode::Periodic if dirty => interval.saturating_sub(last_flush.elapsed()),
                    _ => Duration::from_secs(3600),
                };
                let (guard, timeout) = shared
                    .wake
                    .wait_timeout(p, wait.max(Duration::from_millis(1)))
                    .unwrap_or_else(|e| e.into_inner());
                p = guard;
                if timeout.timed_out() {
                    break;
                }
            }
            batch.append(&mut p.ops);
            batch_ticket = batch_ticket.max(p.last_ticket);
            p.stopping
        };
        let Some(engine) = backend.as_mut() else {
            match reopen() {
                Ok(b) => {
                    backend = Some(b);
                    // Re-apply what the dropped engine may not have written.
                    unflushed.append(&mut batch);
                    batch = std::mem::take(&mut unflushed);
                    dirty = false;
                }
                Err(e) => {
                    if stopping {
                        error!(error = %e, lost_ops = batch.len() + unflushed.len(), "shutting down with unwritten state");
                        return;
                    }
                    retry(&mut failing, &mut backend, "reopen", e);
                }
            }
            continue;
        };
        compactor.compact(&mut batch);
        if !batch.is_empty() {
            match engine.apply(&batch) {
                Ok(()) => {
                    if shared.sync == SyncMode::Off {
                        batch.clear();
                    } else {
                        unflushed.append(&mut batch);
                    }
                    dirty = true;
                }
                Err(e) => {
                    if stopping {
                        error!(error = %e, lost_ops = batch.len() + unflushed.len(), "shutting down with unwritten state");
                        return;
                    }
                    retry(&mut failing, &mut backend, "write", e);
                    continue;
                }
            }
        }
        let flush_now = match shared.sync {
            SyncMode::Always => dirty,
            // Also early when many ops wait: bounds the memory kept for a re-apply (and the
            // loss window) under heavy load.
            SyncMode::Periodic => {
                dirty
                    && (last_flush.elapsed() >= interval
                        || stopping
                        || unflushed.len() >= MAX_UNFLUSHED_OPS)
            }
            SyncMode::Off => dirty && stopping,
        };
        if flush_now {
            if let Err(e) = engine.flush() {
                if stopping {
                    error!(error = %e, lost_ops = unflushed.len(), "shutting down with unwritten state");
                    return;
                }
                retry(&mut failing, &mut backend, "flush", e);
                continue;
            }
            unflushed.clear();
            dirty = false;
            last_flush = Instant::now();
        }
        // A burst must not leave its high-water capacity behind.
        for v in [&mut batch, &mut unflushed] {
            if v.is_empty() && v.capacity() > OPS_KEPT {
                v.shrink_to(OPS_KEPT);
            }
        }
        if failing {
            warn!("persistence recovered");
            failing = false;
        }
        // In "always" mode a ticket is durable once flushed; otherwise once applied.
        if shared.sync != SyncMode::Always || !dirty {
            shared.flushed.send_replace(batch_ticket);
        }
        if stopping && batch.is_empty() && lock(&shared.pending).ops.is_empty() {
            return;
        }
    }
}

/// Cancels, within one batch, the writes of messages that were queued and completed before the
/// batch reached the disk: a `MsgPut`, its `MsgState`s and its `MsgDel` all in the same batch
/// leave nothing to write. With subscribers that keep up, most messages never touch the disk,
/// and the acknowledgements that waited for them are still only sent once the batch is done
/// (by then the message has been delivered and acknowledged end to end).
#[derive(Default)]
struct Compactor {
    /// (client, seq) -> indices in the batch of its `MsgPut` and `MsgState`s.
    open: std::collections::HashMap<(Arc<str>, u64), Vec<usize>>,
    drop: Vec<bool>,
}

impl Compactor {
    fn compact(&mut self, batch: &mut Vec<Op>) {
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
    use super::*;

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
