//! The client side of the wire for a bridge link: encoding CONNECT (with Mosquitto's bridge
//! level 0x84), SUBSCRIBE, PINGREQ and DISCONNECT; PUBLISH and the acknowledgements use the
//! server codec's encoders (same format). Server packets are decoded with mqttbytes' v4 reader.
//! L1. Invariant: encoders only append whole packets; fields are length-checked first.

use bytes::{BufMut, BytesMut};

/// What a CONNECT to the remote carries.
pub(super) struct ConnectFields<'a> {
    pub(super) client_id: &'a str,
    pub(super) clean_session: bool,
    pub(super) keep_alive_s: u16,
    pub(super) username: Option<&'a str>,
    pub(super) password: Option<&'a str>,
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    // Callers check lengths (config validation bounds them to 65535).
    out.put_u16(s.len() as u16);
    out.extend_from_slice(s);
}

fn put_remaining(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if len == 0 {
            return;
        }
    }
}

/// Appends CONNECT with protocol "MQTT" level 0x84 (3.1.1 with Mosquitto's bridge bit, its
/// `try_private`): a broker that knows it does not echo our messages back.
pub(super) fn encode_connect(out: &mut BytesMut, c: &ConnectFields<'_>) -> Result<(), String> {
    for (what, s) in [
        ("client id", Some(c.client_id)),
        ("username", c.username),
        ("password", c.password),
    ] {
        if s.is_some_and(|s| s.len() > usize::from(u16::MAX)) {
            return Err(format!("{what} longer than 65535 bytes"));
        }
    }
    let mut body = BytesMut::new();
    put_str(&mut body, b"MQTT");
    body.put_u8(0x84);
    let mut flags = u8::from(c.clean_session) << 1;
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.username.is_some() && c.password.is_some() {
        flags |= 0x40;
    }
    body.put_u8(flags);
    body.put_u16(c.keep_alive_s);
    put_str(&mut body, c.client_id.as_bytes());
    if let Some(u) = c.username {
        put_str(&mut body, u.as_bytes());
        if let Some(p) = c.password {
            put_str(&mut body, p.as_bytes());
        }
    }
    out.put_u8(0x10);
    put_remaining(out, body.len());
    out.extend_from_slice(&body);
    Ok(())
}

/// Appends one SUBSCRIBE for `filters` (each with its QoS).
pub(super) fn encode_subscribe(out: &mut BytesMut, pkid: u16, filters: &[(&str, u8)]) {
    let len = 2 + filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
    out.put_u8(0x82);
    put_remaining(out, len);
    out.put_u16(pkid);
    for (f, q) in filters {
        put_str(out, f.as_bytes());
        out.put_u8(*q);
    }
}

pub(super) fn encode_pingreq(out: &mut BytesMut) {
    out.extend_from_slice(&[0xc0, 0x00]);
}

pub(super) fn encode_disconnect(out: &mut BytesMut) {
    out.extend_from_slice(&[0xe0, 0x00]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue #11 item 3: our bridge CONNECT is what Mosquitto's bridge sends: "MQTT", 0x84, and
    /// mqttbytes' reader (which knows only level 4) sees everything else as written.
    #[test]
    fn connect_carries_the_bridge_level() {
        let mut out = BytesMut::new();
        let c = ConnectFields {
            client_id: "gw-1",
            clean_session: false,
            keep_alive_s: 60,
            username: Some("u"),
            password: Some("p"),
        };
        encode_connect(&mut out, &c).expect("encode");
        assert_eq!(&out[2..9], b"\x00\x04MQTT\x84");
        assert_eq!(
            out[9], 0xc0,
            "username and password flags, clean session off"
        );
        out[8] = 4;
        match mqttbytes::v4::read(&mut out, 1024) {
            Ok(mqttbytes::v4::Packet::Connect(c)) => {
                assert_eq!(
                    (c.client_id.as_str(), c.keep_alive, c.clean_session),
                    ("gw-1", 60, false)
                );
                let login = c.login.expect("login");
                assert_eq!(
                    (login.username.as_str(), login.password.as_str()),
                    ("u", "p")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// issue #11 item 1: SUBSCRIBE with several filters decodes as written.
    #[test]
    fn subscribe_round_trips() {
        let mut out = BytesMut::new();
        encode_subscribe(&mut out, 7, &[("a/#", 1), ("b", 2)]);
        match mqttbytes::v4::read(&mut out, 1024) {
            Ok(mqttbytes::v4::Packet::Subscribe(s)) => {
                assert_eq!(s.pkid, 7);
                let f: Vec<(String, u8)> = s
                    .filters
                    .iter()
                    .map(|f| (f.path.clone(), f.qos as u8))
                    .collect();
                assert_eq!(f, vec![("a/#".to_owned(), 1), ("b".to_owned(), 2)]);
            }
            other => panic!("{other:?}"),
        }
    }
}
