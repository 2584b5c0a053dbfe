//! Durable state: the operations the broker persists, the handle sessions submit them through,
//! and opening the data directory. L1: depends on L0, sled (through `Backend`) and the file
//! system; never called with a session or trie lock held across I/O.
//! Invariants: operations are applied in submission order; a ticket is reported durable only
//! after every operation up to it is on disk; the operations of one `Group` reach the disk in
//! one atomic batch; a data directory is renamed only when its content is proven corrupt, and
//! only one broker uses it at a time (an exclusive lock). With persistence off nothing here runs.

pub(crate) mod data_dir;
mod dir;
mod legacy;
mod sled_backend;
mod writer;

use crate::admin::metrics::Histogram;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tracing::{error, info};

use crate::config::{OnCorrupt, PersistenceConfig, SyncMode};

pub(crate) use sled_backend::SledBackend;

/// A failure of the storage engine or of the data directory. The message includes the cause;
/// `source()` does not repeat it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("storage engine: {0}")]
    Engine(sled::Error),
    #[error("data directory {path}: {error}{}", dir_hint(path, error))]
    Dir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("data directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("data directory {path} is in use by another process{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, pid: Option<u32> },
    #[error(
        "data directory {path} has format {found}; this brokerd reads format {}",
        sled_backend::FORMAT
    )]
    Format { path: PathBuf, found: u32 },
    #[error("corrupt data directory: {0}")]
    Corrupt(&'static str),
    #[error("{ops} operations were not written to disk ({why})")]
    Unflushed { ops: usize, why: &'static str },
}

/// For a permission error on the data directory (or its lock file): which uid needs access.
fn dir_hint(path: &std::path::Path, error: &std::io::Error) -> String {
    let dir = match path.file_name() {
        Some(name) if name == dir::LOCK_FILE => path.parent().unwrap_or(path),
        _ => path,
    };
    crate::error::access_hint(error, dir, "readable and writable")
}

impl StoreError {
    /// Whether the directory's content failed validation: the only case in which it may be
    /// moved aside. Permissions, locks, missing mounts and newer formats are not corruption.
    fn is_corruption(&self) -> bool {
        match self {
            StoreError::Corrupt(_) | StoreError::Engine(sled::Error::Corruption { .. }) => true,
            // sled's answer to a `conf` file that is not its text format (its message names
            // versions before 0.29, which wrote binary configs): unreadable content.
            StoreError::Engine(sled::Error::Unsupported(m)) => m.contains("earlier than 0.29"),
            _ => false,
        }
    }
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
    /// Written by the writer around the operations of overlapping groups (never submitted):
    /// what lies between them reaches the disk in one atomic batch.
    AtomicBegin,
    AtomicEnd,
}

impl Op {
    /// Roughly what applying the op writes to disk, for the free-space check.
    fn disk_estimate(&self) -> u64 {
        const RECORD: u64 = 64;
        match self {
            Op::MsgPut { msg, .. } | Op::RetainPut { msg } => {
                RECORD + (msg.topic.len() + msg.payload.len()) as u64
            }
            _ => RECORD,
        }
    }
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
    /// Applies a batch of operations in order, atomically (not yet necessarily durable).
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError>;
    /// Makes everything applied so far durable (fsync).
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Reads everything back.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
}

/// How acknowledgements relate to the disk (from `persistence.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckPolicy {
    /// Never wait (persistence off, or sync = "off").
    Immediate,
    /// Wait until what the packet reveals is durable (sync = "always").
    Durable,
    /// Send at once while the oldest state not yet durable is younger than `gate_ms`; beyond
    /// that, wait until durable (sync = "periodic": bounds what a crash can lose).
    Bounded { gate_ms: u64 },
}

/// Operations waiting for the writer, with the ticket of the last one.
#[derive(Default)]
struct Pending {
    ops: Vec<Op>,
    last_ticket: u64,
    stopping: bool,
    /// When the first of `ops` was submitted (ms on the store's clock).
    first_ms: Option<u64>,
    /// Groups open now, and where in `ops` the oldest of them began (see `Group`).
    open_groups: usize,
    epoch_start: usize,
    /// Ranges of `ops` written by groups that overlapped in time, closed since the writer's
    /// last take; each goes to disk as one atomic batch.
    epochs: Vec<(usize, usize)>,
    /// The writer waits for the open groups to close; new groups wait for the writer.
    writer_waiting: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer: work arrived, the last group closed, or stop.
    wake: Condvar,
    /// Wakes threads waiting to open a group.
    groups_done: Condvar,
    /// The highest ticket known to be durable (applied, for sync = "off").
    flushed: watch::Sender<u64>,
    sync: SyncMode,
    flush_interval: Duration,
    /// The store's clock.
    started: Instant,
    /// sync = "periodic": when the oldest operation not yet durable was submitted (ms on the
    /// store's clock); `u64::MAX` when everything submitted is durable. Written under `pending`.
    backlog_since_ms: AtomicU64,
    /// Operations the writer could not write when it stopped (disk full, I/O errors).
    unwritten: AtomicU64,
    /// How long each successful flush to disk took (`/metrics`).
    flush_latency: Histogram,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// The writer thread and a channel that disconnects when it ends.
type WriterHandle = (JoinHandle<()>, mpsc::Receiver<()>);

/// Handle to the store; cheap to clone. `Store::disabled()` makes every call a no-op.
#[derive(Clone, Default)]
pub(crate) struct Store {
    shared: Option<Arc<Shared>>,
    writer: Option<Arc<Mutex<Option<WriterHandle>>>>,
    /// Held as long as any handle lives; released by the kernel when the process ends.
    _lock: Option<Arc<dir::DirLock>>,
}

/// A set of operations that reach the disk in one atomic batch (an inbound QoS 2 packet id
/// and the copies routed for it). While any group is open the writer takes only the
/// operations submitted before the oldest open group began; groups that overlap in time are
/// written together. Open it with no session lock held: it may wait (briefly) for the writer.
pub(crate) struct Group<'a> {
    shared: Option<&'a Shared>,
}

impl Drop for Group<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared {
            let mut p = lock(&shared.pending);
            p.open_groups -= 1;
            if p.open_groups == 0 {
                let range = (p.epoch_start, p.ops.len());
                if range.1 > range.0 {
                    p.epochs.push(range);
                }
                drop(p);
                shared.wake.notify_one();
                shared.groups_done.notify_all();
            }
        }
    }
}

impl Store {
    /// The flush latency histogram; None with persistence off.
    pub(crate) fn flush_latency(&self) -> Option<&Histogram> {
        self.shared.as_deref().map(|s| &s.flush_latency)
    }

    /// Persistence off: nothing is written, nothing is waited for.
    pub(crate) fn disabled() -> Store {
        Store::default()
    }

    /// Prepares and locks the data directory, opens and loads it (moving it aside only if
    /// its content is corrupt and `on_corrupt` allows), and starts the writer thread.
    pub(crate) fn open(config: &PersistenceConfig) -> Result<(Store, Snapshot), StoreError> {
        Self::open_inner(config).inspect_err(|e| {
            error!(path = %config.path.display(), error = %e, "cannot use the data directory: not starting");
        })
    }

    fn open_inner(config: &PersistenceConfig) -> Result<(Store, Snapshot), StoreError> {
        let started = Instant::now();
        let path = &config.path;
        dir::prepare(path)?;
        let mut dir_lock = dir::lock(path)?;
        let open = || SledBackend::open(path, config.sync, config.cache_bytes);
        let mut backend = match open() {
            Ok(b) => b,
            Err(e) if e.is_corruption() => {
                dir_lock = move_aside(config, e, dir_lock)?;
                open()?
            }
            Err(e) => return Err(e),
        };
        let snapshot = match backend.load() {
            Ok(s) => s,
            Err(e) if e.is_corruption() => {
                drop(backend);
                dir_lock = move_aside(config, e, dir_lock)?;
                backend = open()?;
                backend.load()?
            }
            Err(e) => return Err(e),
        };
        let messages: usize = snapshot.sessions.values().map(|s| s.messages.len()).sum();
        info!(
            path = %path.display(),
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
            groups_done: Condvar::new(),
            flushed,
            sync: config.sync,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            started: Instant::now(),
            backlog_since_ms: AtomicU64::new(u64::MAX),
            unwritten: AtomicU64::new(0),
            flush_latency: Histogram::default(),
        });
        let reopen = {
            let (path, sync, cache) = (path.clone(), config.sync, config.cache_bytes);
            move || SledBackend::open(&path, sync, cache)
        };
        let w = writer::Writer::new(
            backend,
            shared.clone(),
            reopen,
            path.clone(),
            config.min_free_bytes,
        );
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("brokerd-store".into())
            .spawn(move || {
                let _done = done_tx;
                w.run();
            })
            .map_err(|error| StoreError::Dir {
                path: path.clone(),
                error,
            })?;
        Ok((
            Store {
                shared: Some(shared),
                writer: Some(Arc::new(Mutex::new(Some((handle, done_rx))))),
                _lock: Some(Arc::new(dir_lock)),
            },
            snapshot,
        ))
    }

    pub(crate) fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// How acknowledgements that reveal stored state relate to the disk.
    pub(crate) fn ack_policy(&self) -> AckPolicy {
        match self.shared.as_deref() {
            Some(s) if s.sync == SyncMode::Always => AckPolicy::Durable,
            Some(s) if s.sync == SyncMode::Periodic => AckPolicy::Bounded {
                gate_ms: writer::gate_ms(s.flush_interval),
            },
            _ => AckPolicy::Immediate,
        }
    }

    /// sync = "periodic": how long the oldest operation not yet durable has waited (0 if none).
    pub(crate) fn backlog_age_ms(&self) -> u64 {
        let Some(s) = self.shared.as_deref() else {
            return 0;
        };
        match s.backlog_since_ms.load(Ordering::Acquire) {
            u64::MAX => 0,
            since => s.now_ms().saturating_sub(since),
        }
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
        if p.first_ms.is_none() {
            let now = shared.now_ms();
            p.first_ms = Some(now);
            shared.backlog_since_ms.fetch_min(now, Ordering::AcqRel);
        }
        drop(p);
        if first {
            shared.wake.notify_one();
        }
        ticket
    }

    /// Opens a group: everything submitted (by any thread) until it is dropped is written in
    /// the same atomic batch as what this thread submits in it.
    pub(crate) fn group(&self) -> Group<'_> {
        let Some(shared) = self.shared.as_deref() else {
            return Group { shared: None };
        };
        let mut p = lock(&shared.pending);
        // A writer waiting for overlapping groups to close would otherwise never get a turn.
        while p.writer_waiting && p.open_groups > 0 {
            p = shared
                .groups_done
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
        if p.open_groups == 0 {
            p.epoch_start = p.ops.len();
        }
        p.open_groups += 1;
        Group {
            shared: Some(shared),
        }
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

    /// Waits until `ticket` is durable (or the store stops). For the CONNECT phase, which may
    /// wait; the session loop uses its own receiver.
    pub(crate) async fn durable(&self, ticket: u64) {
        let Some(mut rx) = self.flushed() else { return };
        let _ = rx.wait_for(|t| *t >= ticket).await;
    }

    /// Writes and flushes what is pending and stops the writer (at shutdown), waiting at most
    /// `limit`. An error says how much could not be written.
    pub(crate) fn close(&self, limit: Duration) -> Result<(), StoreError> {
        let (Some(shared), Some(writer)) = (&self.shared, &self.writer) else {
            return Ok(());
        };
        lock(&shared.pending).stopping = true;
        shared.wake.notify_one();
        let Some((handle, done)) = lock(writer).take() else {
            return Ok(());
        };
        // Bounded: a storage engine wedged in I/O must not keep the process from exiting.
        match done.recv_timeout(limit) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let ops = lock(&shared.pending).ops.len();
                Err(StoreError::Unflushed {
                    ops,
                    why: "the store did not finish within listener.shutdown_grace_ms; \
                          at least this many pending",
                })
            }
            _ => {
                let _ = handle.join();
                match shared.unwritten.load(Ordering::Acquire) {
                    0 => Ok(()),
                    n => Err(StoreError::Unflushed {
                        ops: n as usize,
                        why: "the disk failed or was full at shutdown",
                    }),
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Moves a data directory whose content is corrupt aside (`on_corrupt = "move_aside"`), or
/// refuses. Returns the lock of the fresh, empty directory that replaces it.
fn move_aside(
    config: &PersistenceConfig,
    e: StoreError,
    old_lock: dir::DirLock,
) -> Result<dir::DirLock, StoreError> {
    if config.on_corrupt == OnCorrupt::Refuse {
        return Err(e);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = dir::with_suffix(&config.path, &format!(".corrupt-{stamp}"));
    std::fs::rename(&config.path, &aside).map_err(|error| StoreError::Dir {
        path: config.path.clone(),
        error,
    })?;
    error!(
        path = %config.path.display(),
        moved_to = %aside.display(),
        error = %e,
        "data directory corrupt: moved aside, starting with empty state"
    );
    dir::prepare(&config.path)?;
    // Lock the new directory before letting go of the old one (which moved with its lock).
    let new_lock = dir::lock(&config.path)?;
    drop(old_lock);
    Ok(new_lock)
}
