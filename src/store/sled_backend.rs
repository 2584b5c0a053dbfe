//! The sled (0.34) storage engine behind `Backend`.
//! L1: sled only. Invariants: every record lives in one tree, written in operation order, so a
//! crash keeps a prefix of the operations; an atomic range (a store group: a QoS 2 packet id and
//! the copies routed for it) is one `apply_batch`, which sled recovers whole or not at all; the
//! tree carries a format version that is checked before anything is read, so a future layout is
//! refused, never misread.
//!
//! Layout (format 2): a key is one byte of record kind, then (for per-client records) the
//! client id as a 2-byte big-endian length plus its bytes, then the rest. One session's records
//! of one kind are one prefix range, and its messages sort by sequence number.
//!
//! | kind | rest of key | value |
//! |---|---|---|
//! | `S` session | - | empty |
//! | `B` subscription | filter | granted QoS (1 byte) |
//! | `M` queued/in-flight message | seq (u64 BE) | `encode_msg`, with its state |
//! | `Q` inbound QoS 2 id | packet id (u16 BE) | empty |
//! | `R` retained message | topic (no client id) | `encode_msg` (state queued) |
//!
//! A state change rewrites the message record (read, patch 3 bytes, write): one leaf of the
//! tree, where a separate state record cost a third of durable throughput in node updates.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tracing::{error, info};

use super::{legacy, Backend, Op, Snapshot, StoreError, StoredEntry, StoredMessage, StoredState};
use crate::config::SyncMode;

/// The tree holding every record.
const TREE: &str = "brokerd";
/// Key of the format version (sorts before every record kind).
const FORMAT_KEY: &[u8] = b"\0format";
/// The layout this code reads and writes. Format 1 was one tree per record kind (0.1.0).
pub(crate) const FORMAT: u32 = 2;

mod kind {
    pub(super) const SESSION: u8 = b'S';
    pub(super) const SUB: u8 = b'B';
    pub(super) const MSG: u8 = b'M';
    pub(super) const QOS2: u8 = b'Q';
    pub(super) const RETAINED: u8 = b'R';
}

/// The kinds of per-client records, removed with their session.
const CLIENT_KINDS: [u8; 4] = [kind::SESSION, kind::SUB, kind::MSG, kind::QOS2];

/// sled database with the broker's tree.
pub(crate) struct SledBackend {
    db: sled::Db,
    tree: sled::Tree,
}

/// `kind`, the client id (2-byte length + bytes), then `rest`.
fn key(kind: u8, client: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + client.len() + rest.len());
    k.push(kind);
    // Client ids are at most 65,535 bytes (a UTF-8 string field).
    k.extend_from_slice(&(client.len() as u16).to_be_bytes());
    k.extend_from_slice(client.as_bytes());
    k.extend_from_slice(rest);
    k
}

/// Splits the part of a key after its kind byte into (client id, rest).
fn split_client(k: &[u8]) -> Option<(String, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*k.first()?, *k.get(1)?]));
    let id = k.get(2..2 + len)?;
    Some((String::from_utf8(id.to_vec()).ok()?, &k[2 + len..]))
}

/// Message record: state tag(1: 0 queued, 1 sent, 2 released) packet id(2) qos(1) retain(1)
/// topic_len(2) topic payload.
fn encode_msg(msg: &StoredMessage, state: StoredState) -> Vec<u8> {
    let mut v = Vec::with_capacity(7 + msg.topic.len() + msg.payload.len());
    v.extend_from_slice(&encode_state(state));
    v.push(msg.qos);
    v.push(u8::from(msg.retain));
    v.extend_from_slice(&(msg.topic.len() as u16).to_be_bytes());
    v.extend_from_slice(msg.topic.as_bytes());
    v.extend_from_slice(&msg.payload);
    v
}

pub(super) fn decode_msg(v: &[u8]) -> Option<(StoredMessage, StoredState)> {
    let state = decode_state(v.get(..3)?)?;
    let v = &v[3..];
    let qos = *v.first()?;
    let retain = match *v.get(1)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let tlen = usize::from(u16::from_be_bytes([*v.get(2)?, *v.get(3)?]));
    let topic = Arc::from(std::str::from_utf8(v.get(4..4 + tlen)?).ok()?);
    let payload = Bytes::copy_from_slice(v.get(4 + tlen..)?);
    (qos <= 2).then_some((
        StoredMessage {
            topic,
            payload,
            qos,
            retain,
        },
        state,
    ))
}

fn encode_state(state: StoredState) -> [u8; 3] {
    let (tag, pkid) = match state {
        StoredState::Queued => (0u8, 0u16),
        StoredState::Sent(p) => (1, p),
        StoredState::Released(p) => (2, p),
    };
    let [hi, lo] = pkid.to_be_bytes();
    [tag, hi, lo]
}

fn decode_state(v: &[u8]) -> Option<StoredState> {
    let [tag, hi, lo] = v.try_into().ok()?;
    match (tag, u16::from_be_bytes([hi, lo])) {
        (0, 0) => Some(StoredState::Queued),
        (_, 0) => None,
        (1, p) => Some(StoredState::Sent(p)),
        (2, p) => Some(StoredState::Released(p)),
        _ => None,
    }
}

/// The writes of one batch, last write per key winning; `None` removes.
type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

impl SledBackend {
    /// Opens (creating if needed) the database in the existing directory `path`, checks its
    /// format version, and upgrades a format 1 directory in place.
    pub(crate) fn open(
        path: &Path,
        sync: SyncMode,
        cache_bytes: u64,
    ) -> Result<SledBackend, StoreError> {
        // Bounded: sled's own default page cache is 1 GiB.
        let mut cfg = sled::Config::new().path(path).cache_capacity(cache_bytes);
        // We flush explicitly for "always" and "periodic"; "off" leaves it to sled's own
        // background flusher.
        cfg = match sync {
            SyncMode::Off => cfg.flush_every_ms(Some(1000)),
            _ => cfg.flush_every_ms(None),
        };
        let db = cfg.open()?;
        let tree = db.open_tree(TREE)?;
        let backend = SledBackend { db, tree };
        backend.check_format(path)?;
        Ok(backend)
    }

    /// Refuses a layout newer than ours; stamps a new database; upgrades format 1.
    fn check_format(&self, path: &Path) -> Result<(), StoreError> {
        match self.tree.get(FORMAT_KEY)? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(&*v)
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("the format version record is malformed"))?;
                if found != FORMAT {
                    return Err(StoreError::Format {
                        path: path.to_owned(),
                        found,
                    });
                }
                // An upgrade that stopped after its batch was durable: finish it.
                legacy::drop_trees(&self.db)?;
                Ok(())
            }
            None => {
                let ops = legacy::read(&self.db)?;
                if ops.is_empty() {
                    if !self.tree.is_empty() {
                        return Err(StoreError::Corrupt("records without a format version"));
                    }
                } else {
                    // Upgrade: the format stamp goes last, so an upgrade cut short by a crash
                    // starts over from the format 1 trees (which are dropped only after).
                    self.tree.clear()?;
                    for op in &ops {
                        self.write(op, None)?;
                    }
                    self.db.flush()?;
                }
                self.tree.insert(FORMAT_KEY, &FORMAT.to_be_bytes())?;
                self.db.flush()?;
                if !ops.is_empty() {
                    legacy::drop_trees(&self.db)?;
                    self.db.flush()?;
                    info!(
                        path = %path.display(),
                        records = ops.len(),
                        "data directory upgraded from format 1 to format {FORMAT}"
                    );
                }
                Ok(())
            }
        }
    }

    /// Sets (`Some`) or removes (`None`) one record: in the tree at once, or in `batch`.
    fn set(
        &self,
        batch: Option<&mut Writes>,
        k: Vec<u8>,
        v: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        match (batch, v) {
            (Some(w), v) => {
                w.insert(k, v);
            }
            (None, Some(v)) => {
                self.tree.insert(k, v)?;
            }
            (None, None) => {
                self.tree.remove(k)?;
            }
        }
        Ok(())
    }

    /// Writes one operation: straight into the tree (`batch` None), or into an atomic batch
    /// (whose pending writes a session removal also covers).
    fn write(&self, op: &Op, mut batch: Option<&mut Writes>) -> Result<(), StoreError> {
        match op {
            Op::SessionPut { client } => {
                self.set(batch, key(kind::SESSION, client, &[]), Some(Vec::new()))?;
            }
            Op::SessionDel { client } => {
                // The session record first: a removal cut short by a crash leaves orphans
                // (skipped at load), never a session with part of its state.
                for k in CLIENT_KINDS {
                    let p = key(k, client, &[]);
                    for kv in self.tree.scan_prefix(&p) {
                        self.set(batch.as_deref_mut(), kv?.0.to_vec(), None)?;
                    }
                    if let Some(w) = batch.as_deref_mut() {
                        for (_, v) in w
                            .range_mut(p.clone()..)
                            .take_while(|(k, _)| k.starts_with(&p))
                        {
                            *v = None;
                        }
                    }
                }
            }
            Op::SubPut {
                client,
                filter,
                qos,
            } => {
                let k = key(kind::SUB, client, filter.as_bytes());
                self.set(batch, k, Some(vec![*qos]))?;
            }
            Op::SubDel { client, filter } => {
                self.set(batch, key(kind::SUB, client, filter.as_bytes()), None)?;
            }
            Op::MsgPut { client, seq, msg } => {
                let k = key(kind::MSG, client, &seq.to_be_bytes());
                self.set(batch, k, Some(encode_msg(msg, StoredState::Queued)))?;
            }
            Op::MsgState { client, seq, state } => {
                let k = key(kind::MSG, client, &seq.to_be_bytes());
                // Patched where it is: in this batch, else in the tree (gone: nothing to do).
                let current = match batch.as_deref_mut().and_then(|w| w.get_mut(&k)) {
                    Some(pending) => pending.take(),
                    None => self.tree.get(&k)?.map(|v| v.to_vec()),
                };
                if let Some(mut v) = current.filter(|v| v.len() >= 3) {
                    v[..3].copy_from_slice(&encode_state(*state));
                    self.set(batch, k, Some(v))?;
                }
            }
            Op::MsgDel { client, seq } => {
                self.set(batch, key(kind::MSG, client, &seq.to_be_bytes()), None)?;
            }
            Op::Qos2Put { client, pkid } => {
                let k = key(kind::QOS2, client, &pkid.to_be_bytes());
                self.set(batch, k, Some(Vec::new()))?;
            }
            Op::Qos2Del { client, pkid } => {
                self.set(batch, key(kind::QOS2, client, &pkid.to_be_bytes()), None)?;
            }
            Op::RetainPut { msg } => {
                let mut k = vec![kind::RETAINED];
                k.extend_from_slice(msg.topic.as_bytes());
                self.set(batch, k, Some(encode_msg(msg, StoredState::Queued)))?;
            }
            Op::RetainDel { topic } => {
                let mut k = vec![kind::RETAINED];
                k.extend_from_slice(topic.as_bytes());
                self.set(batch, k, None)?;
            }
            Op::AtomicBegin | Op::AtomicEnd => {}
        }
        Ok(())
    }

    /// One atomic batch.
    fn apply_writes(&self, writes: Writes) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

impl Backend for SledBackend {
    /// Applies `ops` in order, one record at a time (sled recovers a prefix of its log, so
    /// a crash keeps a prefix of the operations), except between `AtomicBegin` and
    /// `AtomicEnd`: those go in one batch that sled recovers whole or not at all. (One batch
    /// for everything would be simpler, but sled 0.34 holds a large batch's garbage and log
    /// buffers until it ends: 1.6 GB of RSS for batches of 15k writes.)
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut i = 0;
        while i < ops.len() {
            if matches!(ops[i], Op::AtomicBegin) {
                let end = ops[i..]
                    .iter()
                    .position(|o| matches!(o, Op::AtomicEnd))
                    .map_or(ops.len(), |e| i + e);
                let mut w = Writes::new();
                for op in &ops[i + 1..end] {
                    self.write(op, Some(&mut w))?;
                }
                self.apply_writes(w)?;
                i = end + 1;
            } else {
                self.write(&ops[i], None)?;
                i += 1;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        let mut corrupt = 0usize;
        let mut orphans = 0usize;
        // Sessions first: a record of a session that is not stored is an orphan.
        for kv in self.tree.scan_prefix([kind::SESSION]) {
            match split_client(&kv?.0[1..]) {
                Some((id, [])) => {
                    snap.sessions.entry(id).or_default();
                }
                _ => corrupt += 1,
            }
        }
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            let Some((&kind, rest)) = k.split_first() else {
                corrupt += 1;
                continue;
            };
            if kind == kind::RETAINED {
                match decode_msg(&v) {
                    Some((m, StoredState::Queued)) if m.topic.as_bytes() == rest => {
                        snap.retained.push(m)
                    }
                    _ => corrupt += 1,
                }
                continue;
            }
            if *k == *FORMAT_KEY {
                continue;
            }
            let Some((id, rest)) = split_client(rest) else {
                corrupt += 1;
                continue;
            };
            let seq = || rest.try_into().ok().map(u64::from_be_bytes);
            let ok = match kind {
                kind::SESSION => true,
                kind::SUB => match (std::str::from_utf8(rest), v.first()) {
                    (Ok(f), Some(&q)) if q <= 2 && v.len() == 1 => {
                        match snap.sessions.get_mut(&id) {
                            Some(s) => s.subscriptions.push((f.to_owned(), q)),
                            None => orphans += 1,
                        }
                        true
                    }
                    _ => false,
                },
                kind::MSG => match (seq(), decode_msg(&v)) {
                    (Some(seq), Some((msg, state))) => {
                        match snap.sessions.get_mut(&id) {
                            Some(s) => s.messages.push(StoredEntry { seq, msg, state }),
                            None => orphans += 1,
                        }
                        true
                    }
                    _ => false,
                },
                kind::QOS2 => match <[u8; 2]>::try_from(rest) {
                    Ok(p) if v.is_empty() && u16::from_be_bytes(p) != 0 => {
                        match snap.sessions.get_mut(&id) {
                            Some(s) => s.inbound_qos2.push(u16::from_be_bytes(p)),
                            None => orphans += 1,
                        }
                        true
                    }
                    _ => false,
                },
                _ => false,
            };
            if !ok {
                corrupt += 1;
            }
        }
        if corrupt > 0 {
            error!(
                records = corrupt,
                "skipped undecodable records in the data directory"
            );
        }
        if orphans > 0 {
            error!(records = orphans, "skipped records of no stored session");
        }
        snap.corrupt_records = corrupt + orphans;
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &[u8]) -> StoredMessage {
        StoredMessage {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            qos: 1,
            retain: false,
        }
    }

    /// Opens `path`, retrying while a just-dropped instance's background I/O threads still
    /// hold sled's file lock (they let go within milliseconds).
    fn try_open(path: &Path) -> Result<SledBackend, StoreError> {
        std::fs::create_dir_all(path).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match SledBackend::open(path, SyncMode::Always, 1 << 24) {
                Err(e)
                    if std::time::Instant::now() < deadline
                        && format!("{e:?}").contains("could not acquire lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => return r,
            }
        }
    }

    fn open(path: &Path) -> SledBackend {
        try_open(path).unwrap()
    }

    /// Everything written comes back in order after reopening; a deleted session leaves
    /// nothing, also when it was written in the same batch as its removal.
    #[test]
    fn round_trip_and_session_delete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        {
            let mut s = open(&path);
            s.apply(&[
                Op::SessionPut { client: b.clone() },
                Op::MsgPut {
                    client: b.clone(),
                    seq: 1,
                    msg: msg("y", b"old"),
                },
            ])
            .unwrap();
            // Atomic, with a session removal that must also cover writes of its own batch.
            s.apply(&[
                Op::AtomicBegin,
                Op::SessionPut { client: a.clone() },
                Op::SubPut {
                    client: a.clone(),
                    filter: "x/#".into(),
                    qos: 2,
                },
                Op::MsgPut {
                    client: a.clone(),
                    seq: 2,
                    msg: msg("x/1", b"two"),
                },
                Op::MsgPut {
                    client: a.clone(),
                    seq: 1,
                    msg: msg("x/1", b"one"),
                },
                Op::MsgPut {
                    client: a.clone(),
                    seq: 300,
                    msg: msg("x/1", b"three"),
                },
                Op::MsgState {
                    client: a.clone(),
                    seq: 1,
                    state: StoredState::Released(7),
                },
                Op::MsgState {
                    client: a.clone(),
                    seq: 2,
                    state: StoredState::Sent(8),
                },
                Op::Qos2Put {
                    client: a.clone(),
                    pkid: 9,
                },
                Op::MsgPut {
                    client: b.clone(),
                    seq: 2,
                    msg: msg("y", b"b"),
                },
                Op::RetainPut {
                    msg: msg("r", b"kept"),
                },
                Op::SessionDel { client: b.clone() },
                Op::AtomicEnd,
                // And one at a time.
                Op::SessionPut { client: b.clone() },
                Op::MsgPut {
                    client: b.clone(),
                    seq: 1,
                    msg: msg("y", b"c"),
                },
                Op::SessionDel { client: b.clone() },
            ])
            .unwrap();
            s.flush().unwrap();
        }
        let mut s = open(&path);
        let snap = s.load().unwrap();
        assert_eq!(snap.corrupt_records, 0);
        assert_eq!(snap.sessions.len(), 1);
        let sa = &snap.sessions["a"];
        assert_eq!(sa.subscriptions, vec![("x/#".to_owned(), 2)]);
        let got: Vec<(u64, StoredState)> = sa.messages.iter().map(|e| (e.seq, e.state)).collect();
        assert_eq!(
            got,
            vec![
                (1, StoredState::Released(7)),
                (2, StoredState::Sent(8)),
                (300, StoredState::Queued)
            ]
        );
        assert_eq!(sa.inbound_qos2, vec![9]);
        assert_eq!(snap.retained, vec![msg("r", b"kept")]);
        assert_eq!(s.tree.scan_prefix(key(kind::MSG, "b", &[])).count(), 0);
    }

    /// A directory written by a newer format is refused, not misread.
    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = open(&path);
            s.tree
                .insert(FORMAT_KEY, &(FORMAT + 1).to_be_bytes())
                .unwrap();
            s.db.flush().unwrap();
        }
        match try_open(&path) {
            Err(StoreError::Format { found, .. }) => assert_eq!(found, FORMAT + 1),
            Err(e) => panic!("expected a format error, got {e}"),
            Ok(_) => panic!("opened a newer format"),
        }
    }

    /// A format 1 directory (one tree per kind, as 0.1.0 wrote it) is upgraded in place with
    /// everything in it, and the old trees are gone.
    #[test]
    fn format_1_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        legacy::tests::write_format_1(&path);
        let mut s = open(&path);
        let snap = s.load().unwrap();
        assert_eq!(snap.corrupt_records, 0);
        let sa = &snap.sessions["a"];
        assert_eq!(sa.subscriptions, vec![("x/#".to_owned(), 1)]);
        let got: Vec<(u64, StoredState, &[u8])> = sa
            .messages
            .iter()
            .map(|e| (e.seq, e.state, &e.msg.payload[..]))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, StoredState::Sent(5), &b"one"[..]),
                (2, StoredState::Queued, &b"two"[..])
            ]
        );
        assert_eq!(sa.inbound_qos2, vec![3]);
        assert_eq!(snap.retained.len(), 1);
        assert!(!s.db.tree_names().iter().any(|n| &**n == b"msgs"));
        drop(s);
        // And it opens again as format 2.
        let mut s = open(&path);
        assert_eq!(s.load().unwrap().sessions["a"].messages.len(), 2);
    }
}
