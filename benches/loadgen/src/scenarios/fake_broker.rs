//! Test-only in-process MQTT "broker" with injectable faults, used to prove
//! that the checks catch a broker that drops, duplicates, reorders,
//! misroutes or corrupts messages.

use crate::codec::{self, Packet};
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Drop every n-th message.
    Drop(u64),
    /// Deliver every n-th message twice.
    Duplicate(u64),
    /// Swap every n-th message with the one after it.
    Reorder(u64),
    /// Deliver every n-th message with a different topic.
    WrongTopic(u64),
    /// Flip a payload byte of every n-th message.
    Corrupt(u64),
}

struct Sub {
    filter: String,
    qos: u8,
    tx: mpsc::Sender<BytesMut>,
}

#[derive(Default)]
struct State {
    subs: Vec<Sub>,
    count: u64,
    held: Option<(Vec<u8>, Vec<u8>)>,
}

fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Start the fake broker; returns its address. It lives until the runtime ends.
pub async fn start(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = Arc::new(Mutex::new(State::default()));
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(client(s, state.clone(), fault));
        }
    });
    addr
}

/// The messages to deliver for one incoming PUBLISH, after the fault.
fn apply(st: &mut State, fault: Fault, topic: &[u8], payload: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    st.count += 1;
    let hit = |n: u64| st.count.is_multiple_of(n);
    let msg = (topic.to_vec(), payload.to_vec());
    match fault {
        Fault::Drop(n) if hit(n) => vec![],
        Fault::Duplicate(n) if hit(n) => vec![msg.clone(), msg],
        Fault::Reorder(n) if hit(n) => {
            st.held = Some(msg);
            vec![]
        }
        Fault::WrongTopic(n) if hit(n) => vec![(b"bench/elsewhere".to_vec(), msg.1)],
        Fault::Corrupt(n) if hit(n) => {
            let mut m = msg;
            if let Some(b) = m.1.last_mut() {
                *b ^= 0xff;
            }
            vec![m]
        }
        _ => {
            let mut out = vec![msg];
            out.extend(st.held.take());
            out
        }
    }
}

async fn client(s: TcpStream, state: Arc<Mutex<State>>, fault: Fault) {
    let (mut rd, mut wr) = s.into_split();
    let (tx, mut rx) = mpsc::channel::<BytesMut>(4096);
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut next_pid = 0u16;
    loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Client packets: CONNECT/SUBSCRIBE/DISCONNECT are recognised by type.
        while let Some(&first) = buf.first() {
            let kind = first >> 4;
            if kind == 1 || kind == 8 || kind == 14 || kind == 4 {
                // Parse the remaining length ourselves (codec only parses server packets).
                let mut len = 0usize;
                let mut i = 1;
                let mut complete = false;
                while i < buf.len() && i <= 4 {
                    len |= ((buf[i] & 0x7f) as usize) << (7 * (i - 1));
                    i += 1;
                    if buf[i - 1] & 0x80 == 0 {
                        complete = true;
                        break;
                    }
                }
                if !complete || buf.len() < i + len {
                    break;
                }
                let body = buf[i..i + len].to_vec();
                buf.advance(i + len);
                let mut out = BytesMut::new();
                match kind {
                    1 => out.extend_from_slice(&[0x20, 2, 0, 0]),
                    8 => {
                        let pid = [body[0], body[1]];
                        let flen = u16::from_be_bytes([body[2], body[3]]) as usize;
                        let filter = String::from_utf8_lossy(&body[4..4 + flen]).into_owned();
                        let qos = body[4 + flen];
                        out.extend_from_slice(&[0x90, 3, pid[0], pid[1], qos]);
                        let sub = Sub {
                            filter,
                            qos,
                            tx: tx.clone(),
                        };
                        state.lock().expect("lock").subs.push(sub);
                    }
                    14 => return,
                    _ => {} // PUBACK from a subscriber
                }
                if !out.is_empty() && tx.send(out).await.is_err() {
                    return;
                }
                continue;
            }
            let parsed = match codec::parse(&buf) {
                Ok(Some((Packet::Publish(p), used))) => {
                    Some((p.qos, p.pid, p.topic.to_vec(), p.payload.to_vec(), used))
                }
                Ok(None) => None,
                _ => return,
            };
            let Some((qos, pid, topic, payload, used)) = parsed else {
                break;
            };
            buf.advance(used);
            let mut sends = Vec::new();
            {
                let mut st = state.lock().expect("lock");
                for (t, p) in apply(&mut st, fault, &topic, &payload) {
                    for sub in &st.subs {
                        if matches(&sub.filter, &String::from_utf8_lossy(&topic)) {
                            let q = qos.min(sub.qos);
                            next_pid = next_pid.checked_add(1).unwrap_or(1);
                            let mut b = BytesMut::new();
                            codec::publish(
                                &mut b,
                                &t,
                                q,
                                false,
                                if q > 0 { next_pid } else { 0 },
                                &p,
                            );
                            sends.push((sub.tx.clone(), b));
                        }
                    }
                }
            }
            for (to, b) in sends {
                let _ = to.send(b).await;
            }
            if qos == 1 {
                let mut ack = BytesMut::new();
                codec::puback(&mut ack, pid);
                if tx.send(ack).await.is_err() {
                    return;
                }
            }
        }
    }
}
