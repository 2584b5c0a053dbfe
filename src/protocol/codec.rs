//! Server-side MQTT 3.1.1 codec: decodes what a client sends, encodes what a server sends. No I/O.
//! L1: uses L0 (`error`, `topic`, `message`), `bytes`, and `mqttbytes::check` for framing only.
//! Invariant: every `Packet` that `decode` returns obeys the standard and our policy (flags, packet
//! ids, strings, topic names and filters); anything else is a `ProtocolError` and the connection
//! closes. Decoded payloads and passwords own their bytes, so they never pin the read buffer.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::message::{qos_from_u8, QoS};
use crate::topic::{has_forbidden_char, TopicFilter, TopicName};

/// Largest value the Remaining Length field can carry (four 7-bit groups) [MQTT-2.2.3].
const MAX_REMAINING_LENGTH: usize = 268_435_455;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

/// A packet a client may send to the server, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Packet {
    /// CONNECT.
    Connect(Connect),
    /// PUBLISH from the client.
    Publish(Publish),
    /// PUBACK with its (non-zero) packet id.
    PubAck(u16),
    /// PUBREC with its (non-zero) packet id.
    PubRec(u16),
    /// PUBREL with its (non-zero) packet id.
    PubRel(u16),
    /// PUBCOMP with its (non-zero) packet id.
    PubComp(u16),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// PINGREQ.
    PingReq,
    /// DISCONNECT.
    Disconnect,
}

/// A CONNECT packet. Its `Debug` redacts the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Connect {
    /// 4 for "MQTT" (3.1.1) or 3 for "MQIsdp" (3.1, accepted as mosquitto does); a bridge's
    /// 0x84 / 0x83 arrives here as 4 / 3 with `bridge` set.
    pub(crate) protocol_level: u8,
    /// The level had bit 0x80 set: Mosquitto's `try_private` bridge (issue #11 item 3).
    pub(crate) bridge: bool,
    /// The CleanSession flag.
    pub(crate) clean_session: bool,
    /// Keep alive in seconds; 0 disables it.
    pub(crate) keep_alive: u16,
    /// Possibly empty: the session decides what an empty id means ([MQTT-3.1.3-6], [MQTT-3.1.3-8]).
    pub(crate) client_id: String,
    /// The will, if the will flag is set.
    pub(crate) will: Option<Will>,
    /// The user name, if its flag is set; may be empty.
    pub(crate) username: Option<String>,
    /// Binary data, not a string: any bytes, including 0x00 and invalid UTF-8.
    pub(crate) password: Option<Bytes>,
}

/// The will of a CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Will {
    /// A valid topic name (non-empty, no wildcards).
    pub(crate) topic: TopicName,
    /// The will message; owns its bytes.
    pub(crate) payload: Bytes,
    /// The will QoS (never 3).
    pub(crate) qos: QoS,
    /// The will retain flag.
    pub(crate) retain: bool,
}

/// A PUBLISH from a client.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Publish {
    /// DUP flag; never set with QoS 0.
    pub(crate) dup: bool,
    /// The QoS it was published with.
    pub(crate) qos: QoS,
    /// RETAIN flag.
    pub(crate) retain: bool,
    /// A valid topic name, built once.
    pub(crate) topic: TopicName,
    /// 0 for QoS 0, otherwise non-zero.
    pub(crate) pkid: u16,
    /// The application message, possibly empty. Owns its bytes (never a slice of the read buffer).
    pub(crate) payload: Bytes,
}

/// A SUBSCRIBE: at least one filter, every one valid (one invalid filter refuses the packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscribe {
    /// Non-zero packet id.
    pub(crate) pkid: u16,
    /// Filters in packet order, with the requested QoS.
    pub(crate) filters: Vec<(TopicFilter, QoS)>,
}

/// An UNSUBSCRIBE: at least one filter, every one valid (one invalid filter refuses the packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unsubscribe {
    /// Non-zero packet id.
    pub(crate) pkid: u16,
    /// Filters in packet order.
    pub(crate) filters: Vec<TopicFilter>,
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("protocol_level", &self.protocol_level)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("client_id", &self.client_id)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl fmt::Debug for Will {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Will")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .finish()
    }
}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish")
            .field("dup", &self.dup)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("topic", &self.topic)
            .field("pkid", &self.pkid)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Decodes one packet from the front of `buf`. `Ok(None)` = need more bytes (`buf` untouched).
/// On `Ok(Some)` the frame's bytes are consumed. `max_packet_size` bounds the Remaining Length
/// (not the fixed header); a larger packet is refused as soon as its fixed header is in, before
/// its body is buffered. Wrong type or flags are refused from the first byte, and a fixed-size
/// packet with the wrong length from its fixed header.
pub(crate) fn decode(
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<Packet>, ProtocolError> {
    let Some((header_len, frame_len)) = frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    let (packet_type, flags) = (buf[0] >> 4, buf[0] & 0x0F);
    let body = buf
        .get(header_len..frame_len)
        .ok_or(ProtocolError::Malformed("fixed header"))?;
    let packet = decode_body(packet_type, flags, Reader(body))?;
    buf.advance(frame_len);
    Ok(Some(packet))
}

/// Frames the packet at the front of `buf` from its fixed header alone, with every check
/// `decode` makes before the body: `Ok(Some((header_len, frame_len)))` once the whole frame is
/// buffered, `Ok(None)` while it is not (and nothing refuses it yet). Cheap: it reads at most
/// five bytes, so a caller can ask "would `decode` do anything now?" without decoding.
pub(crate) fn frame(
    buf: &[u8],
    max_packet_size: usize,
) -> Result<Option<(usize, usize)>, ProtocolError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let packet_type = byte1 >> 4;
    check_type_and_flags(packet_type, byte1 & 0x0F)?;
    let frame_len = match mqttbytes::check(buf.iter(), max_packet_size) {
        Ok(header) => header.frame_length(),
        Err(mqttbytes::Error::InsufficientBytes(missing)) => {
            if let Some(header_len) = header_len(buf) {
                // The header is complete, so `missing` is what the body still lacks.
                let remaining = (buf.len() + missing).saturating_sub(header_len);
                check_fixed_size(packet_type, remaining)?;
            }
            return Ok(None);
        }
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(size)) => {
            return Err(ProtocolError::TooLarge {
                size,
                max: max_packet_size,
            })
        }
        Err(mqttbytes::Error::MalformedRemainingLength) => {
            return Err(ProtocolError::MalformedLength)
        }
        Err(_) => return Err(ProtocolError::Malformed("fixed header")),
    };
    let header_len = header_len(buf).ok_or(ProtocolError::MalformedLength)?;
    check_fixed_size(packet_type, frame_len.saturating_sub(header_len))?;
    Ok(Some((header_len, frame_len)))
}

/// Length of the fixed header (type byte plus 1-4 length bytes), once it is complete.
fn header_len(buf: &[u8]) -> Option<usize> {
    buf.iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map(|i| i + 2)
}

/// Packet type and fixed-header flags, from the first byte alone [MQTT-2.2.2-1, -2].
fn check_type_and_flags(packet_type: u8, flags: u8) -> Result<(), ProtocolError> {
    let expected = match packet_type {
        CONNACK | SUBACK | UNSUBACK | PINGRESP => {
            return Err(ProtocolError::ServerOnlyPacket(packet_type))
        }
        PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                // [MQTT-3.3.1-4]
                return Err(ProtocolError::PublishQoS3);
            }
            if flags & 0b1000 != 0 && qos == 0 {
                // [MQTT-3.3.1-2]
                return Err(ProtocolError::DupWithQoS0);
            }
            return Ok(());
        }
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        CONNECT | PUBACK | PUBREC | PUBCOMP | PINGREQ | DISCONNECT => 0,
        _ => return Err(ProtocolError::ReservedPacketType(packet_type)),
    };
    if flags == expected {
        Ok(())
    } else {
        Err(ProtocolError::BadFlags { packet_type, flags })
    }
}

/// Packets whose Remaining Length is fixed by the standard must have exactly that length.
fn check_fixed_size(packet_type: u8, len: usize) -> Result<(), ProtocolError> {
    let expected = match packet_type {
        PUBACK | PUBREC | PUBREL | PUBCOMP => 2,
        PINGREQ | DISCONNECT => 0,
        _ => return Ok(()),
    };
    if len == expected {
        Ok(())
    } else {
        Err(ProtocolError::WrongRemainingLength {
            packet_type,
            expected,
            len,
        })
    }
}

/// Decodes the body of a complete frame whose type, flags and length were checked.
fn decode_body(packet_type: u8, flags: u8, mut r: Reader<'_>) -> Result<Packet, ProtocolError> {
    match packet_type {
        CONNECT => decode_connect(r).map(Packet::Connect),
        PUBLISH => decode_publish(flags, r).map(Packet::Publish),
        PUBACK => r.packet_id().map(Packet::PubAck),
        PUBREC => r.packet_id().map(Packet::PubRec),
        PUBREL => r.packet_id().map(Packet::PubRel),
        PUBCOMP => r.packet_id().map(Packet::PubComp),
        SUBSCRIBE => decode_subscribe(r).map(Packet::Subscribe),
        UNSUBSCRIBE => decode_unsubscribe(r).map(Packet::Unsubscribe),
        PINGREQ => Ok(Packet::PingReq),
        DISCONNECT => Ok(Packet::Disconnect),
        // Refused earlier by `check_type_and_flags`.
        _ => Err(ProtocolError::ReservedPacketType(packet_type)),
    }
}

/// CONNECT variable header and payload (3.1.1 and 3.1 share the layout).
fn decode_connect(mut r: Reader<'_>) -> Result<Connect, ProtocolError> {
    let name = r.binary("truncated protocol name")?;
    let level = r.u8("missing protocol level")?;
    // Mosquitto's bridges (try_private, its default) set bit 0x80 of the level: accepted as
    // that level, and the client is then treated as a bridge (no echo, retain as published).
    let raw = level;
    let (level, bridge) = match level {
        0x83 | 0x84 => (level & 0x7f, true),
        _ => (level, false),
    };
    match (name, level) {
        (b"MQTT", 4) | (b"MQIsdp", 3) => {}
        // [MQTT-3.1.2-2] returned before the rest is parsed: a newer client's layout may differ.
        (b"MQTT" | b"MQIsdp", _) => return Err(ProtocolError::UnsupportedProtocolLevel(raw)),
        _ => return Err(ProtocolError::BadProtocolName), // [MQTT-3.1.2-1]
    }
    let flags = r.u8("missing connect flags")?;
    if flags & 0x01 != 0 {
        return Err(ProtocolError::ConnectReservedFlag); // [MQTT-3.1.2-3]
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        // [MQTT-3.1.2-11, -13, -15]
        return Err(ProtocolError::WillFieldsWithoutWill);
    }
    let will_qos = qos_from_u8(will_qos).ok_or(ProtocolError::WillQoS3)?; // [MQTT-3.1.2-14]
    if password_flag && !username_flag {
        return Err(ProtocolError::PasswordWithoutUsername); // [MQTT-3.1.2-22]
    }
    let keep_alive = r.u16("missing keep alive")?;
    let client_id = policy_string(r.string("missing client identifier")?, "client identifier")?;
    let will = if will_flag {
        Some(Will {
            topic: TopicName::parse(r.string("missing will topic")?)?,
            payload: Bytes::copy_from_slice(r.binary("missing will message")?),
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = match username_flag {
        true => Some(policy_string(r.string("missing user name")?, "user name")?),
        false => None,
    };
    let password = match password_flag {
        true => Some(Bytes::copy_from_slice(r.binary("missing password")?)),
        false => None,
    };
    if !r.is_empty() {
        return Err(ProtocolError::Malformed(
            "trailing bytes after the CONNECT payload",
        ));
    }
    Ok(Connect {
        protocol_level: level,
        bridge,
        clean_session: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

/// PUBLISH body; `flags` were checked (no QoS 3, no DUP with QoS 0).
fn decode_publish(flags: u8, mut r: Reader<'_>) -> Result<Publish, ProtocolError> {
    let qos = qos_from_u8((flags >> 1) & 0b11).ok_or(ProtocolError::PublishQoS3)?;
    // [MQTT-3.3.2-2] no wildcards; empty and control characters refused too.
    let topic = TopicName::parse(r.string("missing topic name")?)?;
    let pkid = match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce | QoS::ExactlyOnce => r.packet_id()?,
    };
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        pkid,
        // Copied: a slice would pin the whole read buffer while it waits in subscriber queues.
        payload: Bytes::copy_from_slice(r.rest()),
    })
}

/// SUBSCRIBE body: packet id, then (filter, requested QoS) pairs.
fn decode_subscribe(mut r: Reader<'_>) -> Result<Subscribe, ProtocolError> {
    let pkid = r.packet_id()?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = parse_filter(r.string("truncated topic filter")?)?;
        let options = r.u8("topic filter without requested QoS")?;
        // [MQTT-3.8.3-4] bits 7-2 reserved, QoS 3 invalid.
        let qos = match options & 0xFC {
            0 => qos_from_u8(options),
            _ => None,
        };
        let qos = qos.ok_or(ProtocolError::BadSubscribeOptions(options))?;
        filters.push((filter, qos));
    }
    if filters.is_empty() {
        return Err(ProtocolError::EmptySubscribe); // [MQTT-3.8.3-3]
    }
    Ok(Subscribe { pkid, filters })
}

/// UNSUBSCRIBE body: packet id, then filters.
fn decode_unsubscribe(mut r: Reader<'_>) -> Result<Unsubscribe, ProtocolError> {
    let pkid = r.packet_id()?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(parse_filter(r.string("truncated topic filter")?)?);
    }
    if filters.is_empty() {
        return Err(ProtocolError::EmptyUnsubscribe); // [MQTT-3.10.3-2]
    }
    Ok(Unsubscribe { pkid, filters })
}

/// How much of an invalid filter its error keeps (for the log line).
const FILTER_EXCERPT: usize = 256;

/// [MQTT-4.7.1-1..-3] [MQTT-4.7.3-1] an invalid filter refuses the whole packet, so none of its
/// filters is applied, and the connection closes ([MQTT-4.8.0-1], as Mosquitto does).
fn parse_filter(s: &str) -> Result<TopicFilter, ProtocolError> {
    TopicFilter::parse(s).map_err(|error| {
        let mut end = s.len().min(FILTER_EXCERPT);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        ProtocolError::TopicFilter {
            error,
            filter: s[..end].to_owned(),
        }
    })
}

/// Our policy for client ids and user names: no control characters nor U+FFFF (as mosquitto).
fn policy_string(s: &str, field: &'static str) -> Result<String, ProtocolError> {
    if has_forbidden_char(s) {
        return Err(ProtocolError::ForbiddenChar(field));
    }
    Ok(s.to_owned())
}

/// A cursor over the body of one complete frame; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        let (&b, rest) = self.0.split_first().ok_or(ProtocolError::Malformed(what))?;
        self.0 = rest;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        match self.0 {
            [hi, lo, rest @ ..] => {
                self.0 = rest;
                Ok(u16::from_be_bytes([*hi, *lo]))
            }
            _ => Err(ProtocolError::Malformed(what)),
        }
    }

    /// [MQTT-2.3.1-1] a packet id from a client is never 0.
    fn packet_id(&mut self) -> Result<u16, ProtocolError> {
        match self.u16("missing packet identifier")? {
            0 => Err(ProtocolError::ZeroPacketId),
            id => Ok(id),
        }
    }

    /// Binary data with a 2-byte length prefix.
    fn binary(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let len = usize::from(self.u16(what)?);
        if len > self.0.len() {
            return Err(ProtocolError::Malformed(what));
        }
        let (data, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(data)
    }

    /// A UTF-8 encoded string [MQTT-1.5.3-1, -2]; a BOM is kept [MQTT-1.5.3-3].
    fn string(&mut self, what: &'static str) -> Result<&'a str, ProtocolError> {
        // `from_utf8` also rejects encoded surrogates (U+D800-U+DFFF).
        let s = std::str::from_utf8(self.binary(what)?).map_err(|_| ProtocolError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(ProtocolError::NullChar);
        }
        Ok(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a server packet could not be encoded; `out` is left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EncodeError {
    /// mqttbytes would silently truncate the length prefix; we refuse.
    #[error("[MQTT-4.7.3-3] topic of {0} bytes is longer than 65535")]
    TopicTooLong(usize),
    /// mqttbytes would write a QoS>0 PUBLISH without its id; we refuse.
    #[error("[MQTT-2.3.1-1] QoS>0 PUBLISH with packet identifier 0")]
    ZeroPacketId,
    /// The remaining length does not fit the 4-byte Remaining Length field.
    #[error("[MQTT-2.2.3] remaining length {0} exceeds 268435455")]
    TooLarge(usize),
}

/// Appends a PUBLISH to `out` with one exact reservation. `pkid` is written only for QoS>0, where
/// it must be non-zero. DUP is forced to 0 for QoS 0 [MQTT-3.3.1-2]. On error `out` is unchanged.
pub(crate) fn encode_publish(
    out: &mut BytesMut,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: u16,
) -> Result<(), EncodeError> {
    let topic_len =
        u16::try_from(topic.len()).map_err(|_| EncodeError::TopicTooLong(topic.len()))?;
    let has_id = qos != QoS::AtMostOnce;
    if has_id && pkid == 0 {
        return Err(EncodeError::ZeroPacketId);
    }
    let remaining = (2 + topic.len() + if has_id { 2 } else { 0 }).saturating_add(payload.len());
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::TooLarge(remaining));
    }
    let byte1 = 0x30 | u8::from(dup && has_id) << 3 | (qos as u8) << 1 | u8::from(retain);
    out.reserve(1 + remaining_length_len(remaining) + remaining);
    out.put_u8(byte1);
    put_remaining_length(out, remaining);
    out.put_u16(topic_len);
    out.extend_from_slice(topic.as_bytes());
    if has_id {
        out.put_u16(pkid);
    }
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends a CONNACK; `code` is the return code (0 accepted, 0x01-0x05 refused).
pub(crate) fn encode_connack(out: &mut BytesMut, session_present: bool, code: u8) {
    out.extend_from_slice(&[0x20, 0x02, u8::from(session_present), code]);
}

/// Appends a PUBACK.
pub(crate) fn encode_puback(out: &mut BytesMut, pkid: u16) {
    encode_ack(out, 0x40, pkid);
}

/// Appends a PUBREC.
pub(crate) fn encode_pubrec(out: &mut BytesMut, pkid: u16) {
    encode_ack(out, 0x50, pkid);
}

/// Appends a PUBREL (fixed-header flags 0b0010).
pub(crate) fn encode_pubrel(out: &mut BytesMut, pkid: u16) {
    encode_ack(out, 0x62, pkid);
}

/// Appends a PUBCOMP.
pub(crate) fn encode_pubcomp(out: &mut BytesMut, pkid: u16) {
    encode_ack(out, 0x70, pkid);
}

/// Appends an UNSUBACK.
pub(crate) fn encode_unsuback(out: &mut BytesMut, pkid: u16) {
    encode_ack(out, 0xB0, pkid);
}

/// Appends a SUBACK with one return code per filter, in order [MQTT-3.8.4-5]. `codes` comes from
/// a decoded SUBSCRIBE (at least 3 bytes per filter), so its length always fits the field.
pub(crate) fn encode_suback(out: &mut BytesMut, pkid: u16, codes: &[u8]) {
    let remaining = 2 + codes.len();
    out.reserve(1 + remaining_length_len(remaining) + remaining);
    out.put_u8(0x90);
    put_remaining_length(out, remaining);
    out.put_u16(pkid);
    out.extend_from_slice(codes);
}

/// Appends a PINGRESP [MQTT-3.12.4-1].
pub(crate) fn encode_pingresp(out: &mut BytesMut) {
    out.extend_from_slice(&[0xD0, 0x00]);
}

/// A 4-byte packet: fixed header with remaining length 2, then the packet id.
fn encode_ack(out: &mut BytesMut, byte1: u8, pkid: u16) {
    let [hi, lo] = pkid.to_be_bytes();
    out.extend_from_slice(&[byte1, 0x02, hi, lo]);
}

/// Number of bytes the Remaining Length field takes for `len`.
fn remaining_length_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `len` as the variable-length Remaining Length field (7 bits per byte, low first).
fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        if len == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicError;

    const MAX: usize = 1 << 22;

    /// A frame: first byte, Remaining Length, body.
    fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_u8(byte1);
        put_remaining_length(&mut out, body.len());
        out.extend_from_slice(body);
        out.to_vec()
    }

    /// A field with a 2-byte length prefix (string or binary).
    fn s(data: impl AsRef<[u8]>) -> Vec<u8> {
        let data = data.as_ref();
        let mut v = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }

    fn connect_with(name: &str, level: u8, flags: u8, payload: &[Vec<u8>]) -> Vec<u8> {
        let mut body = s(name);
        body.extend_from_slice(&[level, flags, 0, 60]);
        body.extend(payload.concat());
        frame(0x10, &body)
    }

    fn connect(flags: u8, payload: &[Vec<u8>]) -> Vec<u8> {
        connect_with("MQTT", 4, flags, payload)
    }

    fn publish(byte1: u8, topic: impl AsRef<[u8]>, pkid: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let mut body = s(topic);
        if let Some(id) = pkid {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.extend_from_slice(payload);
        frame(byte1, &body)
    }

    fn subscribe(pkid: u16, pairs: &[(&[u8], u8)]) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        for (filter, options) in pairs {
            body.extend(s(filter));
            body.push(*options);
        }
        frame(0x82, &body)
    }

    fn unsubscribe(pkid: u16, filters: &[&[u8]]) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        for filter in filters {
            body.extend(s(filter));
        }
        frame(0xA2, &body)
    }

    /// Decodes a buffer holding exactly one valid packet.
    fn one(bytes: &[u8]) -> Packet {
        let mut buf = BytesMut::from(bytes);
        let packet = decode(&mut buf, MAX).unwrap().expect("a complete packet");
        assert!(buf.is_empty(), "frame not fully consumed");
        packet
    }

    /// Decodes a buffer that must be refused.
    fn err(bytes: &[u8]) -> ProtocolError {
        match decode(&mut BytesMut::from(bytes), MAX) {
            Err(e) => e,
            Ok(p) => panic!("expected an error for {bytes:02x?}, got {p:?}"),
        }
    }

    fn one_connect(bytes: &[u8]) -> Connect {
        match one(bytes) {
            Packet::Connect(c) => c,
            p => panic!("not a CONNECT: {p:?}"),
        }
    }

    fn one_publish(bytes: &[u8]) -> Publish {
        match one(bytes) {
            Packet::Publish(p) => p,
            p => panic!("not a PUBLISH: {p:?}"),
        }
    }

    fn topic(s: &str) -> TopicName {
        TopicName::parse(s).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    /// Asserts `bytes` is refused for the invalid filter `bad`, with `want`.
    fn refused_for(bytes: &[u8], bad: &str, want: TopicError) {
        match err(bytes) {
            ProtocolError::TopicFilter { error, filter } => {
                assert_eq!((error, filter.as_str()), (want, bad), "{bytes:02x?}")
            }
            other => panic!("{bad:?}: expected TopicFilter, got {other:?}"),
        }
    }

    /// One valid packet of every type a client sends, PUBLISH aside.
    fn valid_non_publish() -> Vec<Vec<u8>> {
        vec![
            connect(0x02, &[s("c")]),
            vec![0x40, 2, 0, 1],
            vec![0x50, 2, 0, 1],
            vec![0x62, 2, 0, 1],
            vec![0x70, 2, 0, 1],
            subscribe(1, &[(b"a", 0)]),
            unsubscribe(1, &[b"a"]),
            vec![0xC0, 0],
            vec![0xE0, 0],
        ]
    }

    /// Valid packets of every client type, including a PUBLISH with a 2-byte Remaining Length.
    fn corpus() -> Vec<Vec<u8>> {
        let mut packets = vec![
            connect(
                0xF6,
                &[
                    s("client"),
                    s("will/t"),
                    s(b"bye"),
                    s("user"),
                    s([0u8, 0xFF]),
                ],
            ),
            publish(0x30, "a/b", None, b"hello"),
            publish(0x33, "a", Some(7), b""),
            publish(0x3D, "x/y/z", Some(0xFFFF), &[0xAB; 300]),
            subscribe(9, &[(b"a/+", 1), (b"+/b", 2), (b"#", 0)]),
            unsubscribe(10, &[b"a/+", b"sport/+/x/#"]),
        ];
        packets.extend(valid_non_publish());
        packets
    }

    /// [MQTT-2.2] packet types 0 and 15 are reserved; refused from the first byte alone.
    #[test]
    fn reserved_packet_types_0_and_15_close() {
        for b in [0x00u8, 0x0F, 0xF0, 0xFF] {
            assert!(matches!(err(&[b]), ProtocolError::ReservedPacketType(t) if t == b >> 4));
            assert!(matches!(err(&[b, 0]), ProtocolError::ReservedPacketType(t) if t == b >> 4));
        }
    }

    /// [MQTT-3.1.0-1] CONNACK, SUBACK, UNSUBACK and PINGRESP are sent only by a server.
    #[test]
    fn server_only_packet_types_close() {
        for bytes in [
            &[0x20u8, 2, 0, 0][..],
            &[0x90, 3, 0, 1, 0],
            &[0xB0, 2, 0, 1],
            &[0xD0, 0],
        ] {
            assert!(
                matches!(err(bytes), ProtocolError::ServerOnlyPacket(t) if t == bytes[0] >> 4),
                "{bytes:02x?}"
            );
        }
    }

    /// [MQTT-2.2.2-1, -2] every wrong flag value of every non-PUBLISH client packet closes.
    #[test]
    fn wrong_fixed_header_flags_close_for_every_type() {
        for packet in valid_non_publish() {
            let (packet_type, good) = (packet[0] >> 4, packet[0] & 0x0F);
            one(&packet);
            for flags in (0..16u8).filter(|&f| f != good) {
                let mut bad = packet.clone();
                bad[0] = packet_type << 4 | flags;
                assert!(
                    matches!(err(&bad), ProtocolError::BadFlags { packet_type: t, flags: f }
                        if t == packet_type && f == flags),
                    "type {packet_type} flags {flags:#06b}"
                );
                // Refused from the first byte, before the rest arrives.
                assert!(matches!(err(&bad[..1]), ProtocolError::BadFlags { .. }));
            }
        }
    }

    /// [MQTT-3.3.1-4] a PUBLISH with QoS 3 closes, with or without DUP and RETAIN.
    #[test]
    fn publish_with_qos_3_closes() {
        for byte1 in [0x36, 0x37, 0x3E, 0x3F] {
            assert!(matches!(
                err(&publish(byte1, "a", Some(1), b"x")),
                ProtocolError::PublishQoS3
            ));
        }
    }

    /// [MQTT-3.3.1-2] DUP=1 with QoS 0 closes.
    #[test]
    fn publish_dup_with_qos_0_closes() {
        for byte1 in [0x38, 0x39] {
            assert!(matches!(
                err(&publish(byte1, "a", None, b"x")),
                ProtocolError::DupWithQoS0
            ));
        }
    }

    /// [MQTT-2.2.2-1] every valid DUP/QoS/RETAIN combination of PUBLISH decodes to its flags.
    #[test]
    fn publish_flags_decode() {
        for flags in 0..16u8 {
            let qos = (flags >> 1) & 3;
            let dup = flags & 8 != 0;
            if qos == 3 || (dup && qos == 0) {
                continue;
            }
            let pkid = (qos > 0).then_some(42);
            let p = one_publish(&publish(0x30 | flags, "a/b", pkid, b"payload"));
            assert_eq!(p.dup, dup);
            assert_eq!(p.qos as u8, qos);
            assert_eq!(p.retain, flags & 1 != 0);
            assert_eq!(p.pkid, pkid.unwrap_or(0));
            assert_eq!(p.topic, topic("a/b"));
            assert_eq!(&p.payload[..], b"payload");
        }
    }

    /// [MQTT-3.3.2-2] a topic name with '+' or '#' closes; so does an empty one (our choice).
    #[test]
    fn publish_topic_with_wildcard_or_empty_closes() {
        for (name, want) in [
            ("+", TopicError::WildcardInName),
            ("#", TopicError::WildcardInName),
            ("a/+/b", TopicError::WildcardInName),
            ("a/#", TopicError::WildcardInName),
            ("", TopicError::Empty),
        ] {
            assert!(
                matches!(err(&publish(0x30, name, None, b"")), ProtocolError::Topic(e) if e == want),
                "{name:?}"
            );
        }
    }

    /// [MQTT-2.3.1-1] a QoS 1 or 2 PUBLISH with packet id 0 closes.
    #[test]
    fn publish_qos_1_and_2_with_packet_id_0_close() {
        for byte1 in [0x32, 0x34] {
            assert!(matches!(
                err(&publish(byte1, "a", Some(0), b"x")),
                ProtocolError::ZeroPacketId
            ));
        }
    }

    /// [MQTT-3.3.2-1] QoS>0 PUBLISH without room for its packet id closes; QoS 0 may be empty.
    #[test]
    fn publish_missing_packet_id_closes_and_empty_payload_is_kept() {
        assert!(matches!(
            err(&publish(0x32, "a", None, b"")),
            ProtocolError::Malformed(_)
        ));
        let p = one_publish(&publish(0x30, "a", None, b""));
        assert!(p.payload.is_empty());
        assert_eq!(p.pkid, 0);
    }

    /// [MQTT-1.5.3] a string length prefix longer than the packet closes.
    #[test]
    fn string_length_beyond_packet_closes() {
        assert!(matches!(
            err(&[0x30, 4, 0, 9, b'a', b'b']),
            ProtocolError::Malformed(_)
        ));
        assert!(matches!(
            err(&connect(0x02, &[vec![0, 10, b'c']])),
            ProtocolError::Malformed(_)
        ));
        assert!(matches!(err(&[0x30, 1, 0]), ProtocolError::Malformed(_)));
    }

    /// [MQTT-4.8.0-1] PUBACK, PUBREC, PUBREL, PUBCOMP must have Remaining Length 2, checked from
    /// the fixed header alone.
    #[test]
    fn acks_with_wrong_length_close() {
        for (packet_type, byte1) in [(4u8, 0x40u8), (5, 0x50), (6, 0x62), (7, 0x70)] {
            for len in [0usize, 1, 3, 4] {
                let mut bytes = vec![byte1, len as u8];
                bytes.extend(std::iter::repeat_n(1, len));
                assert!(
                    matches!(err(&bytes), ProtocolError::WrongRemainingLength { packet_type: t, expected: 2, len: l }
                        if t == packet_type && l == len),
                    "{bytes:02x?}"
                );
            }
            assert!(matches!(
                err(&[byte1, 100]),
                ProtocolError::WrongRemainingLength { len: 100, .. }
            ));
        }
    }

    /// [MQTT-2.3.1-1] acknowledgements decode their id; id 0 closes.
    #[test]
    fn acks_decode_and_packet_id_0_closes() {
        assert_eq!(one(&[0x40, 2, 0x12, 0x34]), Packet::PubAck(0x1234));
        assert_eq!(one(&[0x50, 2, 0, 1]), Packet::PubRec(1));
        assert_eq!(one(&[0x62, 2, 0xFF, 0xFF]), Packet::PubRel(0xFFFF));
        assert_eq!(one(&[0x70, 2, 1, 0]), Packet::PubComp(0x100));
        for byte1 in [0x40, 0x50, 0x62, 0x70] {
            assert!(matches!(
                err(&[byte1, 2, 0, 0]),
                ProtocolError::ZeroPacketId
            ));
        }
    }

    /// [MQTT-3.12.4-1] [MQTT-3.14.1-1] PINGREQ and DISCONNECT carry nothing; a payload closes.
    #[test]
    fn pingreq_and_disconnect_with_payload_or_flags_close() {
        assert_eq!(one(&[0xC0, 0]), Packet::PingReq);
        assert_eq!(one(&[0xE0, 0]), Packet::Disconnect);
        for byte1 in [0xC0u8, 0xE0] {
            assert!(matches!(
                err(&[byte1, 1, 0]),
                ProtocolError::WrongRemainingLength {
                    expected: 0,
                    len: 1,
                    ..
                }
            ));
            assert!(matches!(
                err(&[byte1, 5]),
                ProtocolError::WrongRemainingLength { len: 5, .. }
            ));
        }
        assert!(matches!(
            err(&[0xE1, 0]),
            ProtocolError::BadFlags {
                packet_type: 14,
                ..
            }
        ));
        assert!(matches!(
            err(&[0xE8, 0]),
            ProtocolError::BadFlags {
                packet_type: 14,
                ..
            }
        ));
    }

    /// [MQTT-2.2.3] a Remaining Length with a 5th byte closes, as soon as the 4th continues.
    #[test]
    fn five_byte_remaining_length_closes() {
        assert!(matches!(
            err(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            ProtocolError::MalformedLength
        ));
        assert!(matches!(
            err(&[0x30, 0x80, 0x80, 0x80, 0x80]),
            ProtocolError::MalformedLength
        ));
        // Three continuation bytes may still be followed by a valid 4th.
        assert!(
            decode(&mut BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF][..]), MAX)
                .unwrap()
                .is_none()
        );
    }

    /// An oversize packet is refused from its fixed header alone, before its body is buffered;
    /// the limit applies to the Remaining Length (ours; checklist "Framing").
    #[test]
    fn oversize_packet_is_refused_from_the_header_alone() {
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0x7F][..]);
        assert!(matches!(
            decode(&mut buf, 1024),
            Err(ProtocolError::TooLarge {
                size: 2_097_151,
                max: 1024
            })
        ));
        let mut buf = BytesMut::from(&[0x30, 0x81, 0x08][..]);
        assert!(matches!(
            decode(&mut buf, 1024),
            Err(ProtocolError::TooLarge {
                size: 1025,
                max: 1024
            })
        ));
        // Exactly the limit is fine: 3 bytes of topic + 1021 of payload.
        let at_limit = publish(0x30, "t", None, &[7; 1021]);
        let mut buf = BytesMut::from(&at_limit[..]);
        assert!(matches!(
            decode(&mut buf, 1024),
            Ok(Some(Packet::Publish(_)))
        ));
    }

    /// [MQTT-2.2.3] `Ok(None)` leaves the buffer untouched at every split point of a valid
    /// multi-packet stream, which then decodes to the same packets.
    #[test]
    fn partial_packets_wait_at_every_split_point() {
        let packets = corpus();
        let stream = packets.concat();
        let expected: Vec<Packet> = packets.iter().map(|p| one(p)).collect();
        let drain = |buf: &mut BytesMut, got: &mut Vec<Packet>| loop {
            let before = buf.clone();
            match decode(buf, MAX).unwrap() {
                Some(p) => got.push(p),
                None => {
                    assert_eq!(*buf, before);
                    return;
                }
            }
        };
        for split in 0..=stream.len() {
            let mut buf = BytesMut::from(&stream[..split]);
            let mut got = Vec::new();
            drain(&mut buf, &mut got);
            buf.extend_from_slice(&stream[split..]);
            drain(&mut buf, &mut got);
            assert!(buf.is_empty(), "split {split}");
            assert_eq!(got, expected, "split {split}");
        }
    }

    /// Payloads, will messages and passwords own their bytes: they never pin the read buffer.
    #[test]
    fn decoded_payloads_do_not_share_the_read_buffer() {
        let mut buf = BytesMut::with_capacity(4096);
        buf.extend_from_slice(&corpus().concat());
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.capacity();
        let inside = |b: &Bytes| range.contains(&(b.as_ptr() as usize));
        let mut checked = 0;
        while let Some(p) = decode(&mut buf, MAX).unwrap() {
            let owned: Vec<Bytes> = match p {
                Packet::Publish(p) => vec![p.payload],
                Packet::Connect(c) => {
                    let will = c.will.map(|w| w.payload);
                    will.into_iter().chain(c.password).collect()
                }
                _ => continue,
            };
            for b in owned.iter().filter(|b| !b.is_empty()) {
                assert!(!inside(b), "a decoded buffer points into the read buffer");
                checked += 1;
            }
        }
        assert!(checked >= 4);
        assert!(buf.is_empty());
    }

    /// [MQTT-3.1.2-1..-24] a CONNECT with every field decodes each of them.
    #[test]
    fn connect_decodes_every_field() {
        let c = one_connect(&connect(
            0xF6,
            &[s("client"), s("will/t"), s(b"bye"), s("user"), s(b"pass")],
        ));
        assert_eq!(c.protocol_level, 4);
        assert!(c.clean_session);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(c.client_id, "client");
        assert_eq!(
            c.will,
            Some(Will {
                topic: topic("will/t"),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::ExactlyOnce,
                retain: true,
            })
        );
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password.as_deref(), Some(&b"pass"[..]));
        assert!(
            !format!("{c:?}").contains("pass\""),
            "Debug must redact the password"
        );
    }

    /// [MQTT-3.1.3-6] an empty client id and no flags decode (the session decides about it).
    #[test]
    fn connect_with_empty_client_id_decodes() {
        let c = one_connect(&connect(0x00, &[s("")]));
        assert_eq!(c.client_id, "");
        assert!(!c.clean_session);
        assert_eq!((c.will, c.username, c.password), (None, None, None));
    }

    /// MQTT 3.1 ("MQIsdp", level 3) is accepted, as mosquitto does (checklist "CONNECT").
    #[test]
    fn mqisdp_level_3_is_accepted() {
        let c = one_connect(&connect_with("MQIsdp", 3, 0xC2, &[s("c"), s("u"), s("p")]));
        assert_eq!(c.protocol_level, 3);
        assert_eq!(c.username.as_deref(), Some("u"));
    }

    /// issue #11 item 3: Mosquitto's bridge levels 0x84 ("MQTT") and 0x83 ("MQIsdp") are
    /// accepted as 4 and 3 with the bridge mark; a plain level is not a bridge.
    #[test]
    fn bridge_protocol_levels_are_accepted_as_bridges() {
        let c = one_connect(&connect_with("MQTT", 0x84, 0x02, &[s("b")]));
        assert_eq!((c.protocol_level, c.bridge), (4, true));
        let c = one_connect(&connect_with("MQIsdp", 0x83, 0x02, &[s("b")]));
        assert_eq!((c.protocol_level, c.bridge), (3, true));
        let c = one_connect(&connect_with("MQTT", 4, 0x02, &[s("b")]));
        assert!(!c.bridge);
        for (name, level) in [
            ("MQTT", 0x83),
            ("MQIsdp", 0x84),
            ("MQTT", 0x85),
            ("MQTT", 0x80),
        ] {
            let bytes = connect_with(name, level, 0x02, &[s("c")]);
            assert!(
                matches!(err(&bytes), ProtocolError::UnsupportedProtocolLevel(l) if l == level),
                "{name} {level}"
            );
        }
    }

    /// [MQTT-3.1.2-2] a known name with another level gives UnsupportedProtocolLevel (CONNACK
    /// 0x01), without parsing the rest (an MQTT 5 CONNECT has properties after keep alive).
    #[test]
    fn other_protocol_levels_are_unsupported() {
        for (name, level) in [
            ("MQTT", 5),
            ("MQTT", 3),
            ("MQTT", 0),
            ("MQIsdp", 4),
            ("MQIsdp", 5),
        ] {
            let bytes = connect_with(name, level, 0x02, &[vec![0], s("c")]);
            assert!(
                matches!(err(&bytes), ProtocolError::UnsupportedProtocolLevel(l) if l == level),
                "{name} {level}"
            );
        }
    }

    /// [MQTT-3.1.2-1] any other protocol name closes.
    #[test]
    fn other_protocol_names_close() {
        for name in ["MQTS", "mqtt", "", "MQIsdpX", "MQ"] {
            assert!(
                matches!(
                    err(&connect_with(name, 4, 0x02, &[s("c")])),
                    ProtocolError::BadProtocolName
                ),
                "{name:?}"
            );
        }
    }

    /// [MQTT-3.1.2-3] the reserved connect flag must be 0.
    #[test]
    fn connect_reserved_flag_closes() {
        for flags in [0x01, 0x03, 0xC3] {
            let bytes = connect(flags, &[s("c"), s("u"), s("p")]);
            assert!(matches!(err(&bytes), ProtocolError::ConnectReservedFlag));
        }
    }

    /// [MQTT-3.1.2-11, -13, -15] will QoS and will retain must be 0 without the will flag.
    #[test]
    fn will_qos_or_retain_without_will_flag_closes() {
        for flags in [0x08, 0x10, 0x18, 0x20, 0x2A] {
            assert!(matches!(
                err(&connect(flags, &[s("c")])),
                ProtocolError::WillFieldsWithoutWill
            ));
        }
    }

    /// [MQTT-3.1.2-14] will QoS 3 closes.
    #[test]
    fn will_qos_3_closes() {
        let bytes = connect(0x1E, &[s("c"), s("t"), s("m")]);
        assert!(matches!(err(&bytes), ProtocolError::WillQoS3));
    }

    /// [MQTT-3.1.2-22] the password flag needs the user name flag.
    #[test]
    fn password_without_username_closes() {
        assert!(matches!(
            err(&connect(0x42, &[s("c"), s("p")])),
            ProtocolError::PasswordWithoutUsername
        ));
    }

    /// [MQTT-3.1.3-11] the password is binary (0x00, 0xFF kept); an empty user name is allowed.
    #[test]
    fn binary_password_and_empty_username_are_accepted() {
        let password = [0x00u8, 0xFF, 0xFE, 0x80, 0x00];
        let c = one_connect(&connect(0xC2, &[s("c"), s(""), s(password)]));
        assert_eq!(c.username.as_deref(), Some(""));
        assert_eq!(c.password.as_deref(), Some(&password[..]));
    }

    /// [MQTT-3.1.3-1] payload fields present exactly as the flags say: trailing or missing close.
    #[test]
    fn connect_with_trailing_bytes_or_missing_fields_closes() {
        let cases: [(u8, Vec<Vec<u8>>); 7] = [
            (0x02, vec![s("c"), vec![0]]),
            (0x02, vec![s("c"), s("extra")]),
            (0x02, vec![]),
            (0x82, vec![s("c")]),
            (0xC2, vec![s("c"), s("u")]),
            (0x06, vec![s("c"), s("t")]),
            (0x06, vec![s("c")]),
        ];
        for (flags, payload) in cases {
            assert!(
                matches!(err(&connect(flags, &payload)), ProtocolError::Malformed(_)),
                "{flags:#04x} {payload:?}"
            );
        }
        // Truncated variable header.
        for body in [
            &[][..],
            &[0, 4, b'M', b'Q', b'T', b'T'],
            &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0],
        ] {
            assert!(matches!(
                err(&frame(0x10, body)),
                ProtocolError::Malformed(_)
            ));
        }
    }

    /// [MQTT-3.1.3-10] an empty will topic closes; so does a will topic with wildcards.
    #[test]
    fn invalid_will_topic_closes() {
        for (name, want) in [
            ("", TopicError::Empty),
            ("a/#", TopicError::WildcardInName),
            ("+", TopicError::WildcardInName),
            ("a\u{85}", TopicError::ControlChar),
        ] {
            let bytes = connect(0x06, &[s("c"), s(name), s("m")]);
            assert!(
                matches!(err(&bytes), ProtocolError::Topic(e) if e == want),
                "{name:?}"
            );
        }
    }

    /// [MQTT-1.5.3-2] U+0000 in a client id, user name, topic name or filter closes.
    #[test]
    fn null_char_in_strings_closes() {
        let cases = [
            connect(0x02, &[s("c\0")]),
            connect(0x82, &[s("c"), s("\0")]),
            connect(0x06, &[s("c"), s("a\0"), s("m")]),
            publish(0x30, "a\0b", None, b""),
            subscribe(1, &[(b"a", 0), (b"a/\0", 0)]),
            unsubscribe(1, &[b"\0"]),
        ];
        for bytes in cases {
            assert!(
                matches!(err(&bytes), ProtocolError::NullChar),
                "{bytes:02x?}"
            );
        }
    }

    /// [MQTT-1.5.3-1] ill-formed UTF-8, including an encoded surrogate (ED A0 80), closes.
    #[test]
    fn invalid_utf8_and_surrogates_close() {
        for bad in [
            &[0xFFu8][..],
            &[0xC3, 0x28],
            &[0xED, 0xA0, 0x80],
            &[0xC0, 0x80],
            &[0xE2, 0x82],
        ] {
            let cases = [
                connect(0x02, &[s(bad)]),
                connect(0x82, &[s("c"), s(bad)]),
                publish(0x30, bad, None, b""),
                subscribe(1, &[(bad, 0)]),
                unsubscribe(1, &[bad]),
            ];
            for bytes in cases {
                assert!(
                    matches!(err(&bytes), ProtocolError::InvalidUtf8),
                    "{bytes:02x?}"
                );
            }
        }
    }

    /// [MQTT-1.5.3-3] a BOM (U+FEFF) is kept, not stripped; supplementary characters are fine.
    #[test]
    fn bom_is_kept() {
        let p = one_publish(&publish(0x30, "\u{FEFF}a/😀", None, b""));
        assert_eq!(p.topic.as_str(), "\u{FEFF}a/😀");
        let c = one_connect(&connect(0x02, &[s("\u{FEFF}id")]));
        assert_eq!(c.client_id, "\u{FEFF}id");
    }

    /// Control characters U+0001-U+001F, U+007F-U+009F and U+FFFF close in client id, user
    /// name, will topic, topic names and filters (our choice, as mosquitto; [MQTT-1.5.3]).
    #[test]
    fn control_chars_close() {
        for ch in ['\u{1}', '\u{1F}', '\u{7F}', '\u{85}', '\u{9F}', '\u{FFFF}'] {
            let bad = format!("a{ch}b");
            assert!(matches!(
                err(&connect(0x02, &[s(&bad)])),
                ProtocolError::ForbiddenChar("client identifier")
            ));
            assert!(matches!(
                err(&connect(0x82, &[s("c"), s(&bad)])),
                ProtocolError::ForbiddenChar("user name")
            ));
            for bytes in [
                connect(0x06, &[s("c"), s(&bad), s("m")]),
                publish(0x30, &bad, None, b""),
            ] {
                assert!(
                    matches!(err(&bytes), ProtocolError::Topic(TopicError::ControlChar)),
                    "{bad:?}"
                );
            }
            refused_for(
                &subscribe(1, &[(bad.as_bytes(), 0)]),
                &bad,
                TopicError::ControlChar,
            );
            refused_for(
                &unsubscribe(1, &[bad.as_bytes()]),
                &bad,
                TopicError::ControlChar,
            );
        }
        // Other characters are fine in a user name (the password is binary).
        one_connect(&connect(0xC2, &[s("c"), s("é\u{A0}"), s([1u8, 0x1F])]));
    }

    /// [MQTT-3.8.3-1] SUBSCRIBE decodes its (filter, QoS) pairs in order.
    #[test]
    fn subscribe_decodes_its_pairs_in_order() {
        let bytes = subscribe(
            0x0102,
            &[(b"a/+", 1), (b"sport/#", 0), (b"+", 2), (b"$SYS/#", 2)],
        );
        let want = Subscribe {
            pkid: 0x0102,
            filters: vec![
                (filter("a/+"), QoS::AtLeastOnce),
                (filter("sport/#"), QoS::AtMostOnce),
                (filter("+"), QoS::ExactlyOnce),
                (filter("$SYS/#"), QoS::ExactlyOnce),
            ],
        };
        assert_eq!(one(&bytes), Packet::Subscribe(want));
    }

    /// Invalid filters with the error each gets ([MQTT-4.7.1-1..-3], [MQTT-4.7.3-1]).
    const INVALID_FILTERS: [(&str, TopicError); 7] = [
        ("", TopicError::Empty),
        ("a+", TopicError::BadSingleLevel),
        ("+a", TopicError::BadSingleLevel),
        ("sport/#/x", TopicError::BadMultiLevel),
        ("a#", TopicError::BadMultiLevel),
        ("##", TopicError::BadMultiLevel),
        ("a/\u{85}", TopicError::ControlChar),
    ];

    /// issue #8 item 2 [MQTT-4.7.1-1..-3] [MQTT-4.7.3-1] [MQTT-4.8.0-1]: an invalid filter
    /// refuses the whole SUBSCRIBE (the connection closes, no filter of it is applied), wherever
    /// it stands among valid ones; the error names the filter.
    #[test]
    fn subscribe_with_an_invalid_filter_is_refused() {
        for (bad, want) in INVALID_FILTERS {
            for pairs in [
                vec![(bad.as_bytes(), 1)],
                vec![(&b"a/+"[..], 1), (bad.as_bytes(), 2), (b"$SYS/#", 0)],
                vec![(&b"a/+"[..], 1), (bad.as_bytes(), 2)],
            ] {
                refused_for(&subscribe(0x0102, &pairs), bad, want);
            }
        }
        // The error keeps at most 256 bytes of the filter, cut at a character boundary.
        let long = format!("{}+", "é".repeat(200));
        match err(&subscribe(1, &[(long.as_bytes(), 0)])) {
            ProtocolError::TopicFilter { filter, .. } => assert_eq!(filter, "é".repeat(128)),
            other => panic!("expected TopicFilter, got {other:?}"),
        }
    }

    /// [MQTT-3.8.3-3] a SUBSCRIBE without a filter closes; [MQTT-2.3.1-1] so does packet id 0.
    #[test]
    fn subscribe_without_filters_or_with_packet_id_0_closes() {
        assert!(matches!(
            err(&subscribe(1, &[])),
            ProtocolError::EmptySubscribe
        ));
        assert!(matches!(
            err(&subscribe(0, &[(b"a", 0)])),
            ProtocolError::ZeroPacketId
        ));
        assert!(matches!(err(&[0x82, 0]), ProtocolError::Malformed(_)));
        assert!(matches!(err(&[0x82, 1, 0]), ProtocolError::Malformed(_)));
    }

    /// [MQTT-3.8.3-4] requested QoS byte with reserved bits 7-2 set, or QoS 3, closes.
    #[test]
    fn subscribe_options_with_reserved_bits_or_qos_3_close() {
        for options in [0x03u8, 0x04, 0x08, 0x80, 0xFC, 0xFF, 0x41] {
            assert!(
                matches!(err(&subscribe(1, &[(b"a", options)])), ProtocolError::BadSubscribeOptions(o) if o == options),
                "{options:#04x}"
            );
        }
    }

    /// [MQTT-3.8.3-1] a filter without its requested QoS byte, or a truncated filter, closes.
    #[test]
    fn subscribe_truncated_pair_closes() {
        let mut body = vec![0, 1];
        body.extend(s("a/b"));
        assert!(matches!(
            err(&frame(0x82, &body)),
            ProtocolError::Malformed(_)
        ));
        body.push(1);
        body.extend_from_slice(&[0, 5, b'x']);
        assert!(matches!(
            err(&frame(0x82, &body)),
            ProtocolError::Malformed(_)
        ));
    }

    /// [MQTT-3.10.3-1] UNSUBSCRIBE decodes its filters in order.
    #[test]
    fn unsubscribe_decodes_its_filters_in_order() {
        let want = Unsubscribe {
            pkid: 7,
            filters: vec![filter("a/#"), filter("a/+/b"), filter("+")],
        };
        assert_eq!(
            one(&unsubscribe(7, &[b"a/#", b"a/+/b", b"+"])),
            Packet::Unsubscribe(want)
        );
    }

    /// issue #8 item 2 [MQTT-4.7.1-1..-3] [MQTT-4.7.3-1] [MQTT-4.8.0-1]: an invalid filter
    /// refuses the whole UNSUBSCRIBE, wherever it stands; the error names the filter.
    #[test]
    fn unsubscribe_with_an_invalid_filter_is_refused() {
        for (bad, want) in INVALID_FILTERS {
            for filters in [
                vec![bad.as_bytes()],
                vec![&b"a/#"[..], bad.as_bytes(), b"+"],
                vec![&b"a/#"[..], bad.as_bytes()],
            ] {
                refused_for(&unsubscribe(7, &filters), bad, want);
            }
        }
    }

    /// [MQTT-3.10.3-2] an UNSUBSCRIBE without a filter closes; [MQTT-2.3.1-1] so does id 0.
    #[test]
    fn unsubscribe_without_filters_or_with_packet_id_0_closes() {
        assert!(matches!(
            err(&unsubscribe(1, &[])),
            ProtocolError::EmptyUnsubscribe
        ));
        assert!(matches!(
            err(&unsubscribe(0, &[b"a"])),
            ProtocolError::ZeroPacketId
        ));
        assert!(matches!(
            err(&[0xA2, 3, 0, 1, 0]),
            ProtocolError::Malformed(_)
        ));
    }

    /// [MQTT-3.3.1-1..-3] encoded PUBLISHes round-trip through the decoder and match mqttbytes.
    #[test]
    fn publish_round_trips_through_the_decoder() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for retain in [false, true] {
                for dup in [false, true] {
                    let pkid = if qos == QoS::AtMostOnce { 0 } else { 0xBEEF };
                    let mut out = BytesMut::new();
                    encode_publish(&mut out, "a/b", b"payload", qos, retain, dup, pkid).unwrap();
                    let p = one_publish(&out);
                    let dup = dup && qos != QoS::AtMostOnce; // [MQTT-3.3.1-2]
                    assert_eq!((p.qos, p.retain, p.dup, p.pkid), (qos, retain, dup, pkid));
                    assert_eq!((p.topic.as_str(), &p.payload[..]), ("a/b", &b"payload"[..]));
                    let mut theirs = mqttbytes::v4::Publish::new("a/b", qos, &b"payload"[..]);
                    (theirs.retain, theirs.dup, theirs.pkid) = (retain, dup, pkid);
                    let mut reference = BytesMut::new();
                    theirs.write(&mut reference).unwrap();
                    assert_eq!(out, reference);
                }
            }
        }
    }

    /// [MQTT-2.2.3] Remaining Length boundaries (1-4 bytes) encode as mqttbytes does and decode.
    #[test]
    fn publish_remaining_length_boundaries_round_trip() {
        for remaining in [127usize, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let payload = vec![0x5A; remaining - 3];
            let mut out = BytesMut::from(&b"prefix"[..]);
            encode_publish(&mut out, "t", &payload, QoS::AtMostOnce, false, false, 0).unwrap();
            let mut reference = BytesMut::from(&b"prefix"[..]);
            mqttbytes::v4::Publish::new("t", QoS::AtMostOnce, payload.clone())
                .write(&mut reference)
                .unwrap();
            assert_eq!(out, reference, "remaining {remaining}");
            assert_eq!(one_publish(&out[6..]).payload.len(), remaining - 3);
        }
    }

    /// issue #8 item 1: `frame` says from the fixed header alone whether `decode` would act:
    /// None while a frame is partial, its lengths once whole, the error as soon as it is refused.
    #[test]
    fn frame_reads_only_the_fixed_header() {
        let pingreq = [0xC0, 0x00];
        let publish = frame(0x32, &[0, 1, b'a', 0, 7, b'x', b'y']);
        assert_eq!(super::frame(&[], MAX).unwrap(), None);
        assert_eq!(super::frame(&publish[..1], MAX).unwrap(), None);
        assert_eq!(super::frame(&publish[..8], MAX).unwrap(), None);
        assert_eq!(super::frame(&publish, MAX).unwrap(), Some((2, 9)));
        let mut two = publish.clone();
        two.extend_from_slice(&pingreq);
        assert_eq!(super::frame(&two, MAX).unwrap(), Some((2, 9)));
        assert_eq!(super::frame(&pingreq, MAX).unwrap(), Some((2, 2)));
        // Refused before the body is in: reserved type, too large, wrong fixed length.
        assert!(matches!(
            super::frame(&[0xF0], MAX),
            Err(ProtocolError::ReservedPacketType(15))
        ));
        assert!(matches!(
            super::frame(&[0x30, 0xFF, 0x7F], 100),
            Err(ProtocolError::TooLarge { .. })
        ));
        assert!(matches!(
            super::frame(&[0x40, 0x03], MAX),
            Err(ProtocolError::WrongRemainingLength { .. })
        ));
    }

    /// Several packets append to one buffer (batched writes) and decode back in order.
    #[test]
    fn encodes_append_to_the_buffer() {
        let mut out = BytesMut::new();
        encode_publish(&mut out, "a", b"1", QoS::AtLeastOnce, false, false, 1).unwrap();
        encode_publish(&mut out, "b", b"", QoS::AtMostOnce, true, false, 0).unwrap();
        let first = decode(&mut out, MAX).unwrap();
        let second = decode(&mut out, MAX).unwrap();
        assert!(
            matches!(first, Some(Packet::Publish(p)) if p.topic.as_str() == "a" && p.pkid == 1)
        );
        assert!(matches!(second, Some(Packet::Publish(p)) if p.topic.as_str() == "b" && p.retain));
        assert!(out.is_empty());
    }

    /// [MQTT-4.7.3-3] a topic over 65,535 bytes is refused (mqttbytes would truncate it); `out`
    /// is unchanged.
    #[test]
    fn encode_publish_refuses_a_topic_too_long() {
        let mut out = BytesMut::from(&b"queued"[..]);
        let long = "x".repeat(65_536);
        assert_eq!(
            encode_publish(&mut out, &long, b"p", QoS::AtMostOnce, false, false, 0),
            Err(EncodeError::TopicTooLong(65_536))
        );
        assert_eq!(&out[..], b"queued");
        encode_publish(&mut out, &long[1..], b"p", QoS::AtMostOnce, false, false, 0).unwrap();
    }

    /// [MQTT-2.3.1-1] a QoS>0 PUBLISH with packet id 0 is refused; `out` is unchanged.
    #[test]
    fn encode_publish_refuses_packet_id_0_for_qos_1_and_2() {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut out = BytesMut::from(&b"queued"[..]);
            assert_eq!(
                encode_publish(&mut out, "a", b"p", qos, false, false, 0),
                Err(EncodeError::ZeroPacketId)
            );
            assert_eq!(&out[..], b"queued");
        }
        // QoS 0 carries no packet id, whatever is passed.
        let mut out = BytesMut::new();
        encode_publish(&mut out, "a", b"p", QoS::AtMostOnce, false, false, 9).unwrap();
        assert_eq!(&out[..], &[0x30, 4, 0, 1, b'a', b'p']);
    }

    /// [MQTT-2.2.3] a Remaining Length over 268,435,455 is refused; `out` is unchanged.
    #[test]
    fn encode_publish_refuses_too_large() {
        // Zeroed allocation: the pages are never touched, since encoding fails first.
        let payload = vec![0u8; MAX_REMAINING_LENGTH - 2];
        let mut out = BytesMut::from(&b"queued"[..]);
        let capacity = out.capacity();
        assert_eq!(
            encode_publish(&mut out, "a", &payload, QoS::AtMostOnce, false, false, 0),
            Err(EncodeError::TooLarge(MAX_REMAINING_LENGTH + 1))
        );
        assert_eq!((&out[..], out.capacity()), (&b"queued"[..], capacity));
    }

    /// [MQTT-3.2.1] [MQTT-3.4.1] .. [MQTT-3.13.1] every acknowledgement encodes to the exact
    /// bytes of the standard; PUBREL has flags 0b0010 [MQTT-3.6.1-1].
    #[test]
    fn acks_encode_to_the_standard_bytes() {
        let check = |f: &dyn Fn(&mut BytesMut), want: &[u8]| {
            let mut out = BytesMut::from(&[0xAAu8][..]);
            f(&mut out);
            assert_eq!(&out[1..], want);
        };
        check(&|o| encode_connack(o, false, 0), &[0x20, 0x02, 0x00, 0x00]);
        check(&|o| encode_connack(o, true, 0), &[0x20, 0x02, 0x01, 0x00]);
        check(
            &|o| encode_connack(o, false, 0x05),
            &[0x20, 0x02, 0x00, 0x05],
        );
        check(&|o| encode_puback(o, 0x1234), &[0x40, 0x02, 0x12, 0x34]);
        check(&|o| encode_pubrec(o, 0x1234), &[0x50, 0x02, 0x12, 0x34]);
        check(&|o| encode_pubrel(o, 0x1234), &[0x62, 0x02, 0x12, 0x34]);
        check(&|o| encode_pubcomp(o, 0x1234), &[0x70, 0x02, 0x12, 0x34]);
        check(&|o| encode_unsuback(o, 0x1234), &[0xB0, 0x02, 0x12, 0x34]);
        check(
            &|o| encode_suback(o, 10, &[0, 1, 2, 0x80]),
            &[0x90, 6, 0, 10, 0, 1, 2, 0x80],
        );
        check(&encode_pingresp, &[0xD0, 0x00]);
        let mut out = BytesMut::new();
        encode_suback(&mut out, 1, &[1; 200]);
        assert_eq!(&out[..5], &[0x90, 0xCA, 0x01, 0, 1]);
        assert_eq!(out.len(), 205);
    }

    /// A tiny xorshift PRNG, so the fuzz test needs no crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// [MQTT-4.8.0-1] decode never panics on 200k random and mutated inputs: it consumes bytes,
    /// waits with the buffer untouched, or refuses; issue #9 item 6: every packet it accepts
    /// re-encodes to exactly the bytes it consumed.
    #[test]
    fn decode_never_panics_on_random_or_mutated_input() {
        let mut seeds = corpus();
        seeds.push(seeds.concat());
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let (mut decoded, mut waiting, mut refused) = (0, 0, 0);
        for i in 0..200_000 {
            let data: Vec<u8> = if i % 2 == 0 {
                let len = rng.below(65);
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                let mut p = seeds[rng.below(seeds.len())].clone();
                for _ in 0..=rng.below(4) {
                    let j = rng.below(p.len() + 1);
                    match rng.below(4) {
                        0 if j < p.len() => p[j] = rng.next() as u8,
                        1 if j < p.len() => p[j] ^= 1 << rng.below(8),
                        2 => p.truncate(j),
                        _ => p.insert(j, rng.next() as u8),
                    }
                }
                p
            };
            // Each accepted packet must also re-encode to exactly the bytes it was decoded from.
            let outcome = fuzz::check_decode(&data, 1024).unwrap_or_else(|e| panic!("{e}"));
            decoded += outcome.decoded;
            waiting += usize::from(outcome.waiting);
            refused += usize::from(outcome.refused);
        }
        // The mutations reach past the fixed header: all three outcomes are common.
        assert!(
            decoded > 20_000 && waiting > 20_000 && refused > 20_000,
            "{decoded} {waiting} {refused}"
        );
    }
}
