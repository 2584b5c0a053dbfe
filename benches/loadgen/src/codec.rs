//! Minimal MQTT 3.1.1 codec: encoders append client packets to a `BytesMut`,
//! the parser decodes server packets zero-copy from a byte slice.
//!
//! Only what the load generator needs is supported. Everything read from the
//! network is validated and malformed input yields an error, never a panic.

use anyhow::{bail, Result};
use bytes::{BufMut, BytesMut};

/// Largest packet we accept from the broker (guards against a bogus length).
pub const MAX_PACKET: usize = 16 * 1024 * 1024;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

/// A packet received from the broker, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Connack { session_present: bool, code: u8 },
    Publish(Publish<'a>),
    Puback(u16),
    Pubrec(u16),
    Pubrel(u16),
    Pubcomp(u16),
    Suback { pid: u16, codes: &'a [u8] },
    Unsuback(u16),
    Pingresp,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: &'a [u8],
    /// Packet identifier; 0 for QoS 0.
    pub pid: u16,
    pub payload: &'a [u8],
}

fn put_remaining_len(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    // Callers only pass short, locally built strings (topics, client ids).
    debug_assert!(s.len() <= u16::MAX as usize);
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

/// CONNECT with no will and no credentials; `clean` = CleanSession flag.
pub fn connect(buf: &mut BytesMut, client_id: &str, keep_alive: u16, clean: bool) {
    let remaining = 10 + 2 + client_id.len();
    buf.put_u8(CONNECT << 4);
    put_remaining_len(buf, remaining);
    put_str(buf, b"MQTT");
    buf.put_u8(4); // protocol level 3.1.1
    buf.put_u8(if clean { 0x02 } else { 0x00 }); // CleanSession flag
    buf.put_u16(keep_alive);
    put_str(buf, client_id.as_bytes());
}

/// Exact encoded size of a PUBLISH, for buffer pre-sizing.
pub fn publish_len(topic_len: usize, qos: u8, payload_len: usize) -> usize {
    let rem = 2 + topic_len + if qos > 0 { 2 } else { 0 } + payload_len;
    let len_bytes = match rem {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_bytes + rem
}

/// Append a PUBLISH header (fixed header, topic, packet id); the caller then
/// appends exactly `payload_len` payload bytes.
pub fn publish_header(
    buf: &mut BytesMut,
    topic: &[u8],
    qos: u8,
    retain: bool,
    pid: u16,
    payload_len: usize,
) {
    let rem = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload_len;
    buf.put_u8((PUBLISH << 4) | (qos << 1) | retain as u8);
    put_remaining_len(buf, rem);
    put_str(buf, topic);
    if qos > 0 {
        buf.put_u16(pid);
    }
}

pub fn publish(buf: &mut BytesMut, topic: &[u8], qos: u8, retain: bool, pid: u16, payload: &[u8]) {
    publish_header(buf, topic, qos, retain, pid, payload.len());
    buf.put_slice(payload);
}

pub fn subscribe(buf: &mut BytesMut, pid: u16, filters: &[(&str, u8)]) {
    let rem = 2 + filters.iter().map(|(f, _)| 2 + f.len() + 1).sum::<usize>();
    buf.put_u8((SUBSCRIBE << 4) | 0x02);
    put_remaining_len(buf, rem);
    buf.put_u16(pid);
    for (f, q) in filters {
        put_str(buf, f.as_bytes());
        buf.put_u8(*q);
    }
}

fn ack(buf: &mut BytesMut, first: u8, pid: u16) {
    buf.put_u8(first);
    buf.put_u8(2);
    buf.put_u16(pid);
}

pub fn puback(buf: &mut BytesMut, pid: u16) {
    ack(buf, PUBACK << 4, pid)
}

// QoS 2 is not exercised by the scenarios; kept (and tested) for completeness.
#[allow(dead_code)]
pub fn pubrel(buf: &mut BytesMut, pid: u16) {
    ack(buf, (PUBREL << 4) | 0x02, pid)
}

#[allow(dead_code)]
pub fn pubcomp(buf: &mut BytesMut, pid: u16) {
    ack(buf, PUBCOMP << 4, pid)
}

pub fn pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[PINGREQ << 4, 0]);
}

pub fn disconnect(buf: &mut BytesMut) {
    buf.put_slice(&[DISCONNECT << 4, 0]);
}

/// Decode the remaining-length varint. Returns (value, bytes used) or None
/// when more input is needed.
fn remaining_len(buf: &[u8]) -> Result<Option<(usize, usize)>> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    bail!("malformed remaining length (more than 4 bytes)")
}

fn read_u16(b: &[u8], at: usize) -> Result<u16> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => bail!("packet too short"),
    }
}

/// Parse one packet from the front of `buf`.
/// Returns `Ok(None)` if the buffer holds no complete packet yet, otherwise
/// the packet and the number of bytes it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some((rem, len_bytes)) = remaining_len(&buf[1..])? else {
        return Ok(None);
    };
    if rem > MAX_PACKET {
        bail!("packet of {rem} bytes exceeds limit {MAX_PACKET}");
    }
    let total = 1 + len_bytes + rem;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[1 + len_bytes..total];
    let kind = first >> 4;
    let flags = first & 0x0f;
    let fixed_two = |name: &str, want_flags: u8| -> Result<u16> {
        if flags != want_flags || body.len() != 2 {
            bail!("malformed {name} (flags {flags:#x}, len {})", body.len());
        }
        read_u16(body, 0)
    };
    let pkt = match kind {
        CONNACK => {
            if flags != 0 || body.len() != 2 || body[0] & 0xfe != 0 {
                bail!("malformed CONNACK");
            }
            Packet::Connack {
                session_present: body[0] & 1 == 1,
                code: body[1],
            }
        }
        PUBLISH => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                bail!("PUBLISH with QoS 3");
            }
            let tlen = read_u16(body, 0)? as usize;
            let topic = body
                .get(2..2 + tlen)
                .ok_or_else(|| anyhow::anyhow!("PUBLISH topic overruns packet"))?;
            let mut at = 2 + tlen;
            let pid = if qos > 0 {
                let p = read_u16(body, at)?;
                if p == 0 {
                    bail!("PUBLISH QoS {qos} with packet id 0");
                }
                at += 2;
                p
            } else {
                0
            };
            Packet::Publish(Publish {
                dup: flags & 0x08 != 0,
                qos,
                retain: flags & 0x01 != 0,
                topic,
                pid,
                payload: &body[at..],
            })
        }
        PUBACK => Packet::Puback(fixed_two("PUBACK", 0)?),
        PUBREC => Packet::Pubrec(fixed_two("PUBREC", 0)?),
        PUBREL => Packet::Pubrel(fixed_two("PUBREL", 2)?),
        PUBCOMP => Packet::Pubcomp(fixed_two("PUBCOMP", 0)?),
        SUBACK => {
            if flags != 0 || body.len() < 3 {
                bail!("malformed SUBACK");
            }
            Packet::Suback {
                pid: read_u16(body, 0)?,
                codes: &body[2..],
            }
        }
        UNSUBACK => Packet::Unsuback(fixed_two("UNSUBACK", 0)?),
        PINGRESP => {
            if flags != 0 || !body.is_empty() {
                bail!("malformed PINGRESP");
            }
            Packet::Pingresp
        }
        other => bail!("unexpected packet type {other} from broker"),
    };
    Ok(Some((pkt, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_roundtrip() {
        let mut b = BytesMut::new();
        let payload = vec![7u8; 300];
        publish(&mut b, b"a/b", 1, true, 42, &payload);
        assert_eq!(b.len(), publish_len(3, 1, 300));
        // Broker-to-client PUBLISH has the same format.
        let (p, n) = parse(&b).unwrap().unwrap();
        assert_eq!(n, b.len());
        match p {
            Packet::Publish(p) => {
                assert_eq!(
                    (p.qos, p.retain, p.pid, p.topic),
                    (1, true, 42, &b"a/b"[..])
                );
                assert_eq!(p.payload, &payload[..]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn small_packets() {
        let mut b = BytesMut::new();
        puback(&mut b, 7);
        pubrel(&mut b, 8);
        pubcomp(&mut b, 9);
        pingreq(&mut b);
        disconnect(&mut b);
        assert_eq!(
            &b[..],
            &[0x40, 2, 0, 7, 0x62, 2, 0, 8, 0x70, 2, 0, 9, 0xc0, 0, 0xe0, 0]
        );
        b.clear();
        connect(&mut b, "id", 60, true);
        assert_eq!(
            &b[..],
            &[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, b'i', b'd']
        );
        b.clear();
        subscribe(&mut b, 1, &[("a/#", 1)]);
        assert_eq!(&b[..], &[0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 1]);
    }

    #[test]
    fn partial_and_malformed() {
        let mut b = BytesMut::new();
        publish(&mut b, b"t", 0, false, 0, b"xyz");
        for cut in 0..b.len() {
            assert!(parse(&b[..cut]).unwrap().is_none());
        }
        assert!(parse(&[0x30, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse(&[0x36, 2, 0, 0]).is_err()); // QoS 3
        assert!(parse(&[0x30, 2, 0, 5]).is_err()); // topic overrun
        assert!(parse(&[0x40, 3, 0, 1, 0]).is_err()); // PUBACK bad len
        assert_eq!(
            parse(&[0x20, 2, 0, 0]).unwrap().unwrap().0,
            Packet::Connack {
                session_present: false,
                code: 0
            }
        );
        assert_eq!(
            parse(&[0x90, 3, 0, 1, 1]).unwrap().unwrap().0,
            Packet::Suback {
                pid: 1,
                codes: &[1]
            }
        );
    }
}
