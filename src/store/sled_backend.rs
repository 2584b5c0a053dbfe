//! The sled (0.34) storage engine behind `Backend`.
//! L1: sled only. Layout: one tree per kind of record; keys start with the client id as a
//! 2-byte length plus its bytes, so one session's records are one prefix range and sort by
//! sequence number (big-endian) within it.

use std::path::Path;

use bytes::Bytes;

use super::{Backend, Op, Snapshot, StoreError, StoredEntry, StoredMessage, StoredState};
use crate::config::SyncMode;

/// sled database with the broker's trees.
pub(crate) struct SledBackend {
    db: sled::Db,
    sessions: sled::Tree,
    subs: sled::Tree,
    msgs: sled::Tree,
    qos2: sled::Tree,
    retained: sled::Tree,
}

fn prefix(client: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + client.len() + 8);
    // Client ids are at most 65,535 bytes (a UTF-8 string field).
    k.extend_from_slice(&(client.len() as u16).to_be_bytes());
    k.extend_from_slice(client.as_bytes());
    k
}

fn key(client: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = prefix(client);
    k.extend_from_slice(rest);
    k
}

/// Splits a key into (client id, rest).
fn split_key(k: &[u8]) -> Option<(String, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*k.first()?, *k.get(1)?]));
    let id = k.get(2..2 + len)?;
    Some((String::from_utf8(id.to_vec()).ok()?, &k[2 + len..]))
}

/// Message record: state(1) pkid(2) qos(1) retain(1) topic_len(2) topic payload.
fn encode_msg(msg: &StoredMessage, state: StoredState) -> Vec<u8> {
    let (tag, pkid) = match state {
        StoredState::Queued => (0u8, 0u16),
        StoredState::Sent(p) => (1, p),
        StoredState::Released(p) => (2, p),
    };
    let mut v = Vec::with_capacity(7 + msg.topic.len() + msg.payload.len());
    v.push(tag);
    v.extend_from_slice(&pkid.to_be_bytes());
    v.push(msg.qos);
    v.push(u8::from(msg.retain));
    v.extend_from_slice(&(msg.topic.len() as u16).to_be_bytes());
    v.extend_from_slice(msg.topic.as_bytes());
    v.extend_from_slice(&msg.payload);
    v
}

fn decode_msg(v: &[u8]) -> Option<(StoredMessage, StoredState)> {
    let (&tag, rest) = v.split_first()?;
    let pkid = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    let qos = *rest.get(2)?;
    let retain = *rest.get(3)? != 0;
    let tlen = usize::from(u16::from_be_bytes([*rest.get(4)?, *rest.get(5)?]));
    let topic = std::sync::Arc::from(std::str::from_utf8(rest.get(6..6 + tlen)?).ok()?);
    let payload = Bytes::copy_from_slice(rest.get(6 + tlen..)?);
    let state = match tag {
        0 => StoredState::Queued,
        1 if pkid != 0 => StoredState::Sent(pkid),
        2 if pkid != 0 => StoredState::Released(pkid),
        _ => return None,
    };
    if qos > 2 {
        return None;
    }
    Some((
        StoredMessage {
            topic,
            payload,
            qos,
            retain,
        },
        state,
    ))
}

impl SledBackend {
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
        Ok(SledBackend {
            sessions: db.open_tree("sessions")?,
            subs: db.open_tree("subs")?,
            msgs: db.open_tree("msgs")?,
            qos2: db.open_tree("qos2")?,
            retained: db.open_tree("retained")?,
            db,
        })
    }

    fn remove_prefix(tree: &sled::Tree, p: &[u8]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for kv in tree.scan_prefix(p) {
            let (k, _) = kv?;
            batch.remove(k);
        }
        tree.apply_batch(batch)?;
        Ok(())
    }
}

impl Backend for SledBackend {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        for op in ops {
            match op {
                Op::SessionPut { client } => {
                    self.sessions.insert(prefix(client), &[])?;
                }
                Op::SessionDel { client } => {
                    let p = prefix(client);
                    self.sessions.remove(&p)?;
                    for t in [&self.subs, &self.msgs, &self.qos2] {
                        Self::remove_prefix(t, &p)?;
                    }
                }
                Op::SubPut {
                    client,
                    filter,
                    qos,
                } => {
                    self.subs.insert(key(client, filter.as_bytes()), &[*qos])?;
                }
                Op::SubDel { client, filter } => {
                    self.subs.remove(key(client, filter.as_bytes()))?;
                }
                Op::MsgPut { client, seq, msg } => {
                    self.msgs.insert(
                        key(client, &seq.to_be_bytes()),
                        encode_msg(msg, StoredState::Queued),
                    )?;
                }
                Op::MsgState { client, seq, state } => {
                    let k = key(client, &seq.to_be_bytes());
                    if let Some(v) = self.msgs.get(&k)? {
                        if let Some((msg, _)) = decode_msg(&v) {
                            self.msgs.insert(k, encode_msg(&msg, *state))?;
                        }
                    }
                }
                Op::MsgDel { client, seq } => {
                    self.msgs.remove(key(client, &seq.to_be_bytes()))?;
                }
                Op::Qos2Put { client, pkid } => {
                    self.qos2.insert(key(client, &pkid.to_be_bytes()), &[])?;
                }
                Op::Qos2Del { client, pkid } => {
                    self.qos2.remove(key(client, &pkid.to_be_bytes()))?;
                }
                Op::RetainPut { msg } => {
                    self.retained
                        .insert(msg.topic.as_bytes(), encode_msg(msg, StoredState::Queued))?;
                }
                Op::RetainDel { topic } => {
                    self.retained.remove(topic.as_bytes())?;
                }
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
        for kv in self.sessions.iter() {
            let (k, _) = kv?;
            match split_key(&k) {
                Some((id, [])) => {
                    snap.sessions.entry(id).or_default();
                }
                _ => snap.corrupt_records += 1,
            }
        }
        for kv in self.subs.iter() {
            let (k, v) = kv?;
            let parsed = split_key(&k).and_then(|(id, f)| {
                let f = std::str::from_utf8(f).ok()?.to_owned();
                Some((id, f, *v.first()?))
            });
            match parsed {
                Some((id, f, q)) if q <= 2 => {
                    if let Some(s) = snap.sessions.get_mut(&id) {
                        s.subscriptions.push((f, q));
                    }
                }
                _ => snap.corrupt_records += 1,
            }
        }
        for kv in self.msgs.iter() {
            let (k, v) = kv?;
            let parsed = split_key(&k).and_then(|(id, seq)| {
                let seq = u64::from_be_bytes(seq.try_into().ok()?);
                let (msg, state) = decode_msg(&v)?;
                Some((id, StoredEntry { seq, msg, state }))
            });
            match parsed {
                Some((id, e)) => {
                    if let Some(s) = snap.sessions.get_mut(&id) {
                        s.messages.push(e);
                    }
                }
                None => snap.corrupt_records += 1,
            }
        }
        for kv in self.qos2.iter() {
            let (k, _) = kv?;
            let parsed = split_key(&k)
                .and_then(|(id, p)| Some((id, u16::from_be_bytes(p.try_into().ok()?))));
            match parsed {
                Some((id, pkid)) => {
                    if let Some(s) = snap.sessions.get_mut(&id) {
                        s.inbound_qos2.push(pkid);
                    }
                }
                None => snap.corrupt_records += 1,
            }
        }
        for kv in self.retained.iter() {
            let (_, v) = kv?;
            match decode_msg(&v) {
                Some((m, _)) => snap.retained.push(m),
                None => snap.corrupt_records += 1,
            }
        }
        if snap.corrupt_records > 0 {
            tracing::error!(
                records = snap.corrupt_records,
                "skipped undecodable records in the data directory"
            );
        }
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

    /// Everything written comes back in order after reopening; a deleted session leaves nothing.
    #[test]
    fn round_trip_and_session_delete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (a, b): (std::sync::Arc<str>, std::sync::Arc<str>) = ("a".into(), "b".into());
        {
            let mut s = SledBackend::open(&path, SyncMode::Always, 1 << 24).unwrap();
            s.apply(&[
                Op::SessionPut { client: a.clone() },
                Op::SessionPut { client: b.clone() },
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
                Op::Qos2Put {
                    client: a.clone(),
                    pkid: 9,
                },
                Op::MsgPut {
                    client: b.clone(),
                    seq: 1,
                    msg: msg("y", b"b"),
                },
                Op::RetainPut {
                    msg: msg("r", b"kept"),
                },
                Op::SessionDel { client: b.clone() },
            ])
            .unwrap();
            s.flush().unwrap();
        }
        let mut s = SledBackend::open(&path, SyncMode::Always, 1 << 24).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.sessions.len(), 1);
        let sa = &snap.sessions["a"];
        assert_eq!(sa.subscriptions, vec![("x/#".to_owned(), 2)]);
        let seqs: Vec<u64> = sa.messages.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 300]);
        assert_eq!(sa.messages[0].state, StoredState::Released(7));
        assert_eq!(sa.inbound_qos2, vec![9]);
        assert_eq!(snap.retained, vec![msg("r", b"kept")]);
        assert_eq!(s.msgs.scan_prefix(prefix("b")).count(), 0);
    }
}
