//! Format 1 of the data directory (brokerd 0.1.0): one sled tree per record kind. Read once,
//! to upgrade a directory to the current format; never written.
//! L1: sled only. Invariant: reading is exact or an error; an undecodable record is an error
//! (the upgrade then refuses to run rather than drop it silently).

use std::sync::Arc;

use super::{Op, StoreError};

/// The format 1 trees, in the order their records are re-created.
const TREES: [&str; 5] = ["sessions", "subs", "msgs", "qos2", "retained"];

/// Splits a format 1 key into (client id, rest): a 2-byte length, the id, the rest.
fn split_key(k: &[u8]) -> Option<(Arc<str>, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*k.first()?, *k.get(1)?]));
    let id = std::str::from_utf8(k.get(2..2 + len)?).ok()?;
    Some((id.into(), &k[2 + len..]))
}

/// Format 1 message records have the layout of format 2's (`sled_backend::decode_msg`): only
/// their place (one tree per kind) changed.
use super::sled_backend::decode_msg;

fn has_tree(db: &sled::Db, name: &str) -> bool {
    db.tree_names().iter().any(|n| &**n == name.as_bytes())
}

/// Everything a format 1 directory holds, as operations that re-create it; empty when there
/// is no format 1 data.
pub(super) fn read(db: &sled::Db) -> Result<Vec<Op>, StoreError> {
    let bad = || StoreError::Corrupt("undecodable record in a format 1 data directory");
    let mut ops = Vec::new();
    for name in TREES {
        if !has_tree(db, name) {
            continue;
        }
        for kv in db.open_tree(name)?.iter() {
            let (k, v) = kv?;
            let op = match name {
                "sessions" => match split_key(&k).ok_or_else(bad)? {
                    (client, []) => Op::SessionPut { client },
                    _ => return Err(bad()),
                },
                "subs" => {
                    let (client, f) = split_key(&k).ok_or_else(bad)?;
                    let filter = std::str::from_utf8(f).map_err(|_| bad())?.into();
                    let qos = *v.first().ok_or_else(bad)?;
                    Op::SubPut {
                        client,
                        filter,
                        qos,
                    }
                }
                "msgs" => {
                    let (client, seq) = split_key(&k).ok_or_else(bad)?;
                    let seq = u64::from_be_bytes(seq.try_into().map_err(|_| bad())?);
                    let (msg, state) = decode_msg(&v).ok_or_else(bad)?;
                    ops.push(Op::MsgPut {
                        client: client.clone(),
                        seq,
                        msg,
                    });
                    Op::MsgState { client, seq, state }
                }
                "qos2" => {
                    let (client, p) = split_key(&k).ok_or_else(bad)?;
                    let pkid = u16::from_be_bytes(p.try_into().map_err(|_| bad())?);
                    Op::Qos2Put { client, pkid }
                }
                _ => Op::RetainPut {
                    msg: decode_msg(&v).ok_or_else(bad)?.0,
                },
            };
            ops.push(op);
        }
    }
    Ok(ops)
}

/// Removes the format 1 trees (after their content is durable in the current format).
pub(super) fn drop_trees(db: &sled::Db) -> Result<(), StoreError> {
    for name in TREES {
        if has_tree(db, name) {
            db.drop_tree(name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    /// Writes a format 1 directory as brokerd 0.1.0 did: session "a" with subscription `x/#`
    /// (QoS 1), message 1 sent as packet id 5, message 2 queued, inbound QoS 2 id 3, and one
    /// retained message.
    pub(in crate::store) fn write_format_1(path: &Path) {
        let db = sled::Config::new().path(path).open().unwrap();
        let key = |client: &str, rest: &[u8]| {
            let mut k = (client.len() as u16).to_be_bytes().to_vec();
            k.extend_from_slice(client.as_bytes());
            k.extend_from_slice(rest);
            k
        };
        let msg = |tag: u8, pkid: u16, topic: &str, payload: &[u8]| {
            let mut v = vec![tag];
            v.extend_from_slice(&pkid.to_be_bytes());
            v.extend_from_slice(&[1, 0]);
            v.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            v.extend_from_slice(topic.as_bytes());
            v.extend_from_slice(payload);
            v
        };
        let t = |n: &str| db.open_tree(n).unwrap();
        t("sessions").insert(key("a", &[]), &[]).unwrap();
        t("subs").insert(key("a", b"x/#"), &[1]).unwrap();
        t("msgs")
            .insert(key("a", &1u64.to_be_bytes()), msg(1, 5, "x/1", b"one"))
            .unwrap();
        t("msgs")
            .insert(key("a", &2u64.to_be_bytes()), msg(0, 0, "x/2", b"two"))
            .unwrap();
        t("qos2")
            .insert(key("a", &3u16.to_be_bytes()), &[])
            .unwrap();
        t("retained")
            .insert("r/t", msg(0, 0, "r/t", b"kept"))
            .unwrap();
        db.flush().unwrap();
    }
}
