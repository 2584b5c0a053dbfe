//! Issue #10 item 1: MQTT over WebSocket, through the real binary with a WebSocket client
//! written here (frames by hand, so that every boundary and every violation can be sent).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use common::*;

/// RFC 6455 1.3's example key and the accept value it must produce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

const BINARY: u8 = 0x2;
const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

const WS: &str = "[websocket]\nenabled = true\nbind = \"127.0.0.1:0\"\n";

/// An upgrade request for `path` with `extra` header lines (each ending in \r\n).
fn request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends `req` and reads the response head (up to the empty line).
fn http(addr: SocketAddr, req: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    let _ = s.write_all(req);
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// The status code of a response head.
fn status(head: &str) -> Option<u16> {
    head.split(' ').nth(1)?.parse().ok()
}

/// A WebSocket client after a successful upgrade.
struct WsClient {
    s: TcpStream,
    /// MQTT bytes received but not yet returned as packets.
    pending: Vec<u8>,
}

impl WsClient {
    /// Upgrades with `extra` headers; asserts 101 and the accept key.
    fn open(addr: SocketAddr, extra: &str) -> (WsClient, String) {
        let (s, head) = http(addr, request("/mqtt", extra).as_bytes());
        assert_eq!(status(&head), Some(101), "{head}");
        assert!(
            head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
            "{head}"
        );
        (
            WsClient {
                s,
                pending: Vec::new(),
            },
            head,
        )
    }

    fn new(addr: SocketAddr) -> WsClient {
        let (c, head) = WsClient::open(addr, "Sec-WebSocket-Protocol: mqtt\r\n");
        assert!(head.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{head}");
        c
    }

    /// Upgrades and completes CONNECT/CONNACK (one frame).
    fn connected(addr: SocketAddr, c: &RawConnect) -> WsClient {
        let mut ws = WsClient::new(addr);
        ws.send(&c.encode());
        assert_eq!(ws.packet().expect("CONNACK"), vec![0x20, 2, 0, 0]);
        ws
    }

    /// Sends one frame; masked as clients must unless `masked` is false.
    fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let _ = self
            .s
            .write_all(&encode_frame(fin, opcode, payload, masked));
    }

    /// Sends `bytes` as one binary frame.
    fn send(&mut self, bytes: &[u8]) {
        self.frame(true, BINARY, bytes, true);
    }

    /// Reads one frame: (fin, opcode, payload); None on EOF, reset or timeout.
    fn read_frame(&mut self) -> Option<(bool, u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).ok()?;
        assert_eq!(h[1] & 0x80, 0, "server frames are never masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.s.read_exact(&mut b).ok()?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                self.s.read_exact(&mut b).ok()?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        self.s.read_exact(&mut payload).ok()?;
        Some((h[0] & 0x80 != 0, h[0] & 0x0f, payload))
    }

    /// The next whole MQTT packet from binary frames (a frame may hold several, or part of
    /// one); None if the connection ends first. Other frames are a test failure.
    fn packet(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(len) = whole_packet_len(&self.pending) {
                return Some(self.pending.drain(..len).collect());
            }
            let (_, opcode, payload) = self.read_frame()?;
            assert_eq!(
                opcode, BINARY,
                "expected a binary frame, got {payload:02x?}"
            );
            self.pending.extend(payload);
        }
    }

    /// Expects a close frame with `code`, then the end of the TCP connection.
    fn expect_close(&mut self, code: u16) {
        let (fin, opcode, payload) = self.read_frame().expect("a close frame");
        assert!(fin);
        assert_eq!(opcode, CLOSE, "payload {payload:02x?}");
        assert!(payload.len() >= 2, "close without a status");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
        let mut rest = [0u8; 16];
        match self.s.read(&mut rest) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection closed after the close frame: {other:?}"),
        }
    }
}

fn encode_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0xa1, 0x07, 0x5c, 0xe3];
    let m = if masked { 0x80 } else { 0 };
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend(mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The length of the first MQTT packet in `buf` if it is all there.
fn whole_packet_len(buf: &[u8]) -> Option<usize> {
    let (mut len, mut shift) = (0usize, 0);
    for (i, b) in buf.iter().enumerate().skip(1).take(4) {
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            let total = i + 1 + len;
            return (buf.len() >= total).then_some(total);
        }
    }
    None
}

/// issue #10 item 1: MQTT packets split or joined at any frame boundary: CONNECT split over
/// three frames is answered; SUBSCRIBE, a QoS 1 PUBLISH and PINGREQ in one frame are all
/// answered (SUBACK, PUBACK, the delivery, PINGRESP).
#[test]
fn packets_split_over_frames_and_joined_in_one_frame() {
    let b = BrokerProc::start(WS);
    let ws_addr = b.ws_addr.expect("listening ws on");
    let mut ws = WsClient::new(ws_addr);
    let connect = RawConnect::new("ws-split").encode();
    ws.send(&connect[..1]);
    ws.send(&connect[1..5]);
    ws.send(&connect[5..]);
    assert_eq!(ws.packet().expect("CONNACK"), vec![0x20, 2, 0, 0]);
    let mut three = subscribe_packet(1, &[("ws/t", 1)]);
    three.extend(publish_packet("ws/t", 1, false, false, 9, b"joined"));
    three.extend(pingreq_packet());
    ws.send(&three);
    assert_eq!(ws.packet().expect("SUBACK"), vec![0x90, 3, 0, 1, 1]);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(ws.packet().expect("PUBACK, PUBLISH and PINGRESP"));
    }
    assert!(got.contains(&ack_packet(0x40, 9)), "{got:02x?}");
    assert!(got.contains(&vec![0xd0, 0]), "{got:02x?}");
    let publish = got
        .iter()
        .find(|p| p[0] & 0xf0 == 0x30)
        .expect("the delivery");
    let (_, qos, _, topic, _, payload) = parse_publish(publish);
    assert_eq!(
        (qos, topic.as_str(), &payload[..]),
        (1, "ws/t", &b"joined"[..])
    );
}

/// issue #10 item 1: a PUBLISH in a fragmented message (binary, continuations, a ping between
/// the fragments) reaches a TCP subscriber; the ping is answered with a pong carrying its
/// payload.
#[test]
fn fragmented_message_with_a_ping_inside_is_delivered() {
    let b = BrokerProc::start(WS);
    let mut sub = Raw::connected(b.addr, "tcp-sub");
    sub.subscribe(1, "frag/#", 0);
    let mut ws = WsClient::connected(b.ws_addr.unwrap(), &RawConnect::new("ws-frag"));
    let publish = publish_packet("frag/x", 0, false, false, 0, &[7u8; 300]);
    ws.frame(false, BINARY, &publish[..10], true);
    ws.frame(true, PING, b"are you there", true);
    assert_eq!(
        ws.read_frame(),
        Some((true, PONG, b"are you there".to_vec()))
    );
    ws.frame(false, CONTINUATION, &publish[10..200], true);
    ws.frame(true, CONTINUATION, &publish[200..], true);
    let (_, _, _, topic, _, payload) = parse_publish(&sub.expect_packet("PUBLISH"));
    assert_eq!((topic.as_str(), payload), ("frag/x", vec![7u8; 300]));
}

/// issue #10 item 1: the close handshake: a client's close (1000) is answered with a close
/// echoing its status, the TCP connection then ends, and the will is published (no MQTT
/// DISCONNECT was sent).
#[test]
fn close_handshake_is_answered_and_ends_the_session() {
    let b = BrokerProc::start(WS);
    let mut sub = Raw::connected(b.addr, "will-sub");
    sub.subscribe(1, "wills/#", 0);
    let mut ws = WsClient::connected(
        b.ws_addr.unwrap(),
        &RawConnect::new("ws-close").will("wills/ws", b"gone", 0, false),
    );
    ws.frame(true, CLOSE, &1000u16.to_be_bytes(), true);
    ws.expect_close(1000);
    let (_, _, _, topic, _, _) = parse_publish(&sub.expect_packet("the will"));
    assert_eq!(topic, "wills/ws");
    b.wait_log("disconnected reason=PeerClosed");
}

/// issue #10 item 1: frame violations get their close status and a warn line with the rule:
/// a text frame 1003, an unmasked frame 1002, a frame over limits.max_packet_size + 5 1009
/// (refused from its header, before its payload is sent).
#[test]
fn frame_violations_are_closed_with_their_status() {
    let b = BrokerProc::start(&format!("{WS}[limits]\nmax_packet_size = 1000\n"));
    let addr = b.ws_addr.unwrap();
    let cases: [(&str, Vec<u8>, u16, &str); 3] = [
        (
            "text",
            encode_frame(true, TEXT, b"{}", true),
            1003,
            "text frame",
        ),
        (
            "unmasked",
            encode_frame(true, BINARY, &[0xc0, 0], false),
            1002,
            "not masked",
        ),
        (
            "oversized",
            encode_frame(true, BINARY, &[0u8; 1006], true)[..8].to_vec(),
            1009,
            "frame of 1006 bytes over the limit of 1005",
        ),
    ];
    for (name, wire, code, reason) in cases {
        let mut ws = WsClient::connected(addr, &RawConnect::new(&format!("ws-{name}")));
        let _ = ws.s.write_all(&wire);
        ws.expect_close(code);
        let log = b.wait_log(reason);
        let line = log.lines().find(|l| l.contains(reason)).unwrap();
        assert!(
            line.contains("WARN")
                && line.contains("disconnected: protocol violation")
                && line.contains(&format!("closed with status {code}")),
            "{line}"
        );
    }
    // A message of several frames is bounded as a whole. Its bytes start a valid PUBLISH of
    // 901 bytes (within max_packet_size), so only the WebSocket bound can refuse it.
    let mut ws = WsClient::connected(addr, &RawConnect::new("ws-long-message"));
    let mut long = publish_packet("t", 0, false, false, 0, &[0u8; 895]);
    assert_eq!(long.len(), 901);
    long.resize(1201, 0);
    ws.frame(false, BINARY, &long[..600], true);
    ws.frame(true, CONTINUATION, &long[600..], true);
    ws.expect_close(1009);
    b.wait_log("message of over 1005 bytes");
}

/// issue #10 item 1: a bad handshake gets its HTTP status and a warn line with the reason:
/// another path 404, no Upgrade header 400, another version 426 (naming 13), only unknown
/// subprotocols 400, a request head over 8 KiB 431. No subprotocol offered is accepted without
/// one; mqttv3.1 alone is chosen.
#[test]
fn bad_handshakes_get_http_statuses() {
    let b = BrokerProc::start(WS);
    let addr = b.ws_addr.unwrap();
    let (_, head) = http(addr, request("/other", "").as_bytes());
    assert_eq!(status(&head), Some(404), "{head}");
    let no_upgrade = request("/mqtt", "").replace("Upgrade: websocket\r\n", "");
    let (_, head) = http(addr, no_upgrade.as_bytes());
    assert_eq!(status(&head), Some(400), "{head}");
    let v8 = request("/mqtt", "").replace("Version: 13", "Version: 8");
    let (_, head) = http(addr, v8.as_bytes());
    assert_eq!(status(&head), Some(426), "{head}");
    assert!(head.contains("Sec-WebSocket-Version: 13\r\n"), "{head}");
    let (_, head) = http(
        addr,
        request("/mqtt", "Sec-WebSocket-Protocol: chat\r\n").as_bytes(),
    );
    assert_eq!(status(&head), Some(400), "{head}");
    let huge = request("/mqtt", &format!("X-Padding: {}\r\n", "a".repeat(9000)));
    let (_, head) = http(addr, huge.as_bytes());
    assert_eq!(status(&head), Some(431), "{head}");
    for (code, reason) in [
        (404, "no WebSocket endpoint at this path"),
        (400, "not a WebSocket upgrade"),
        (426, "unsupported Sec-WebSocket-Version"),
        (400, "no supported subprotocol"),
        (431, "request head over 8 KiB"),
    ] {
        // Each connection logs after its answer went out: wait for each line.
        let log = b.wait_log(reason);
        let line = log.lines().find(|l| l.contains(reason)).unwrap();
        assert!(
            line.contains("WARN") && line.contains(&format!("status={code}")),
            "{line}"
        );
    }
    // No subprotocol offered: accepted, none chosen, MQTT works.
    let (mut ws, head) = WsClient::open(addr, "");
    assert!(!head.contains("Sec-WebSocket-Protocol"), "{head}");
    ws.send(&RawConnect::new("ws-none").encode());
    assert_eq!(ws.packet(), Some(vec![0x20, 2, 0, 0]));
    let (_, head) = WsClient::open(addr, "Sec-WebSocket-Protocol: mqttv3.1\r\n");
    assert!(
        head.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"),
        "{head}"
    );
}

/// issue #10 item 1: from a trusted proxy, X-Forwarded-For is the client: the connect line
/// shows it (with the proxy), and limits.max_connections_per_ip counts it, not the proxy (two
/// clients behind the proxy connect, a second connection of one of them gets 429, and a plain
/// connection from the proxy's own address is still admitted).
#[test]
fn forwarded_for_from_a_trusted_proxy_is_the_client() {
    let b = BrokerProc::start("[websocket]\nenabled = true\nbind = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n[limits]\nmax_connections_per_ip = 1\n");
    let addr = b.ws_addr.unwrap();
    let xff = |ip: &str| format!("Sec-WebSocket-Protocol: mqtt\r\nX-Forwarded-For: {ip}\r\n");
    let (mut first, _) = WsClient::open(addr, &xff("203.0.113.7"));
    first.send(&RawConnect::new("behind-proxy-1").encode());
    assert_eq!(first.packet(), Some(vec![0x20, 2, 0, 0]));
    let log = b.wait_log("behind-proxy-1");
    let line = log
        .lines()
        .find(|l| l.contains("client connected") && l.contains("behind-proxy-1"))
        .unwrap();
    assert!(line.contains("peer=203.0.113.7 proxy=127.0.0.1:"), "{line}");
    let (mut second, _) = WsClient::open(addr, &xff("198.51.100.1, 203.0.113.8"));
    second.send(&RawConnect::new("behind-proxy-2").encode());
    assert_eq!(second.packet(), Some(vec![0x20, 2, 0, 0]));
    let (_, head) = http(addr, request("/mqtt", &xff("203.0.113.7")).as_bytes());
    assert_eq!(status(&head), Some(429), "{head}");
    let log = b.wait_log("limit=max_connections_per_ip");
    assert!(log.contains("203.0.113.7 (via 127.0.0.1:"), "{log}");
    let _plain = Raw::connected(b.addr, "the-proxy-host");
}

/// issue #10 item 1: from a peer that is not a trusted proxy, X-Forwarded-For is ignored: the
/// connect line shows the TCP peer, and per-address limits count the TCP peer (a second
/// WebSocket connection from it is refused at accept, whatever it claims to forward).
#[test]
fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let b = BrokerProc::start("[websocket]\nenabled = true\nbind = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n[limits]\nmax_connections_per_ip = 1\n");
    let addr = b.ws_addr.unwrap();
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    let (mut ws, _) = WsClient::open(addr, &xff("203.0.113.7"));
    ws.send(&RawConnect::new("claims-forwarding").encode());
    assert_eq!(ws.packet(), Some(vec![0x20, 2, 0, 0]));
    let log = b.wait_log("claims-forwarding");
    let line = log
        .lines()
        .find(|l| l.contains("client connected") && l.contains("claims-forwarding"))
        .unwrap();
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(
        !line.contains("203.0.113.7") && !line.contains("proxy="),
        "{line}"
    );
    let (mut refused, head) = http(addr, request("/mqtt", &xff("203.0.113.9")).as_bytes());
    assert_eq!(head, "", "refused at accept, before any HTTP answer");
    let mut rest = [0u8; 8];
    assert!(matches!(refused.read(&mut rest), Ok(0) | Err(_)));
    b.wait_log("connection refused at accept: limit reached");
}

/// issue #10 item 1: the same logins and ACLs as TCP: a wrong password gets CONNACK 0x05 over
/// WebSocket; a logged-in user's SUBSCRIBE to a denied filter gets 0x80 and its denied
/// PUBLISH is acknowledged but not delivered, while an allowed one is.
#[test]
fn logins_and_acls_apply_over_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, "alice:s3cret\n").unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user alice\ntopic readwrite open/#\n").unwrap();
    for f in [&passwd, &acl] {
        // The broker refuses credential files others can read.
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let b = BrokerProc::start_in(
        dir,
        &format!(
            "{WS}[auth]\nallow_anonymous = false\npassword_format = \"plaintext\"\npassword_file = \"{}\"\nacl_file = \"{}\"\n",
            passwd.display(),
            acl.display()
        ),
    );
    let addr = b.ws_addr.unwrap();
    let mut bad = WsClient::new(addr);
    bad.send(
        &RawConnect::new("ws-bad")
            .username("alice")
            .password(b"wrong")
            .encode(),
    );
    assert_eq!(bad.packet(), Some(vec![0x20, 2, 0, 5]));
    // issue #10 item 1 (close frames): a refused login is then a policy violation (1008).
    bad.expect_close(1008);
    let alice = || {
        RawConnect::new("ws-alice")
            .username("alice")
            .password(b"s3cret")
    };
    let mut ws = WsClient::connected(addr, &alice());
    ws.send(&subscribe_packet(1, &[("open/#", 1), ("secret/#", 1)]));
    assert_eq!(ws.packet(), Some(vec![0x90, 4, 0, 1, 1, 0x80]));
    ws.send(&publish_packet("secret/x", 1, false, false, 2, b"no"));
    assert_eq!(ws.packet(), Some(ack_packet(0x40, 2)));
    ws.send(&publish_packet("open/x", 1, false, false, 3, b"yes"));
    let mut got = [ws.packet().unwrap(), ws.packet().unwrap()];
    got.sort();
    let (_, _, _, topic, _, payload) = parse_publish(&got[0]);
    assert_eq!((topic.as_str(), &payload[..]), ("open/x", &b"yes"[..]));
    assert_eq!(got[1], ack_packet(0x40, 3));
    b.wait_log("PUBLISH denied by the ACL");
}

/// issue #10 item 1: publish/subscribe between a WebSocket client and a TCP client, both ways,
/// with a payload large enough to span many frames and reads (200 KB).
#[test]
fn websocket_and_tcp_clients_exchange_messages() {
    let b = BrokerProc::start(WS);
    let mut ws = WsClient::connected(b.ws_addr.unwrap(), &RawConnect::new("ws-peer"));
    ws.send(&subscribe_packet(1, &[("to-ws", 1)]));
    assert_eq!(ws.packet(), Some(vec![0x90, 3, 0, 1, 1]));
    let mut tcp = Raw::connected(b.addr, "tcp-peer");
    tcp.subscribe(1, "to-tcp", 1);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    tcp.send(&publish_packet("to-ws", 1, false, false, 5, &big));
    assert_eq!(tcp.expect_packet("PUBACK"), ack_packet(0x40, 5));
    let (_, qos, _, topic, pkid, payload) = parse_publish(&ws.packet().expect("PUBLISH"));
    assert_eq!((qos, topic.as_str(), payload == big), (1, "to-ws", true));
    ws.send(&ack_packet(0x40, pkid));
    ws.send(&publish_packet("to-tcp", 1, false, false, 6, &big));
    assert_eq!(ws.packet(), Some(ack_packet(0x40, 6)));
    let (_, _, _, topic, _, payload) = parse_publish(&tcp.expect_packet("PUBLISH"));
    assert_eq!((topic.as_str(), payload == big), ("to-tcp", true));
}

/// issue #10 item 1: Mosquitto 2's anonymous rule looks at the WebSocket bind when it is
/// enabled (a non-loopback one refuses anonymous clients), and not when it is disabled.
#[test]
fn anonymous_rule_counts_the_websocket_bind() {
    let dir = tempfile::tempdir().unwrap();
    let check = |ws: &str| {
        let path = dir.path().join("b.toml");
        std::fs::write(&path, format!("[websocket]\n{ws}bind = \"0.0.0.0:8083\"\n")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_brokerd"))
            .arg("--check-config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let on = check("enabled = true\n");
    assert!(
        on.contains("anonymous clients refused: listener 0.0.0.0:8083 is not on loopback"),
        "{on}"
    );
    let off = check("");
    assert!(off.contains("anonymous clients allowed"), "{off}");
}

/// issue #10 item 6: `[websocket] trusted_proxies` reloads: after SIGHUP adds 127.0.0.1, a new
/// WebSocket connection's X-Forwarded-For is its client (the connect line shows it with the
/// proxy), where before the reload it was ignored; the connection made before stays up.
#[test]
fn trusted_proxies_change_on_sighup() {
    let ws_section = |proxies: &str| {
        format!(
            "[websocket]\nenabled = true\nbind = \"127.0.0.1:0\"\ntrusted_proxies = [{proxies}]\n"
        )
    };
    let b = BrokerProc::start(&ws_section("\"10.0.0.0/8\""));
    let addr = b.ws_addr.unwrap();
    let xff = |ip: &str| format!("Sec-WebSocket-Protocol: mqtt\r\nX-Forwarded-For: {ip}\r\n");
    let connect_line = |id: &str| {
        let log = b.wait_log_lines(&["client connected", id], 1);
        let line = log
            .lines()
            .find(|l| l.contains("client connected") && l.contains(id))
            .map(str::to_owned);
        line.unwrap_or_default()
    };
    let (mut before, _) = WsClient::open(addr, &xff("203.0.113.7"));
    before.send(&RawConnect::new("before-reload").encode());
    assert_eq!(before.packet(), Some(vec![0x20, 2, 0, 0]));
    let line = connect_line("before-reload");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    std::fs::write(
        &b.config_path,
        format!(
            "[listener]\nbind = \"127.0.0.1:0\"\n{}\n[http]\nbind = \"127.0.0.1:0\"\n",
            ws_section("\"127.0.0.1\"")
        ),
    )
    .unwrap();
    b.signal("HUP");
    let log = b.wait_log_lines(&["config reloaded"], 1);
    assert!(log.contains("changed=websocket.trusted_proxies"), "{log}");
    let (mut after, _) = WsClient::open(addr, &xff("203.0.113.7"));
    after.send(&RawConnect::new("after-reload").encode());
    assert_eq!(after.packet(), Some(vec![0x20, 2, 0, 0]));
    let line = connect_line("after-reload");
    assert!(line.contains("peer=203.0.113.7 proxy=127.0.0.1:"), "{line}");
    before.send(&[0xC0, 0x00]);
    assert_eq!(before.packet(), Some(vec![0xD0, 0x00]));
}

/// issue #10 item 1 (close frames): a keep-alive timeout ends the WebSocket with a close frame
/// 1000 (a normal end: the client broke no rule, it went quiet), not a bare TCP close (1006).
#[test]
fn keep_alive_timeout_sends_close_1000() {
    let b = BrokerProc::start(WS);
    let mut c = RawConnect::new("ws-quiet");
    c.keep_alive = 1;
    let mut ws = WsClient::connected(b.ws_addr.unwrap(), &c);
    // Nothing sent: 1.5 x 1 s later the broker ends the session.
    ws.expect_close(1000);
    b.wait_log("disconnected reason=KeepAliveTimeout");
}

/// issue #10 item 1 (close frames): an MQTT protocol violation (a second CONNECT,
/// [MQTT-3.1.0-2]) ends the WebSocket with a close frame 1002 (protocol error).
#[test]
fn second_connect_sends_close_1002() {
    let b = BrokerProc::start(WS);
    let c = RawConnect::new("ws-twice");
    let mut ws = WsClient::connected(b.ws_addr.unwrap(), &c);
    ws.send(&c.encode());
    ws.expect_close(1002);
    b.wait_log("second CONNECT");
}

/// issue #10 item 1 (close frames): a takeover by a new connection with the same client id
/// ends the old WebSocket with a close frame 1000, and the new one is connected.
#[test]
fn takeover_sends_close_1000() {
    let b = BrokerProc::start(WS);
    let addr = b.ws_addr.unwrap();
    let mut old = WsClient::connected(addr, &RawConnect::new("ws-taken"));
    let mut new = WsClient::connected(addr, &RawConnect::new("ws-taken"));
    old.expect_close(1000);
    new.send(&[0xC0, 0x00]);
    assert_eq!(new.packet(), Some(vec![0xD0, 0x00]));
}

/// issue #10 item 1 (close frames): no CONNECT within limits.connect_timeout_ms ends the
/// WebSocket with a close frame 1008 (policy violation: a limit).
#[test]
fn connect_timeout_sends_close_1008() {
    let b = BrokerProc::start(&format!("{WS}[limits]\nconnect_timeout_ms = 300\n"));
    let mut ws = WsClient::new(b.ws_addr.unwrap());
    ws.expect_close(1008);
    b.wait_log("no CONNECT within limits.connect_timeout_ms");
}

/// issue #10 item 1 (close frames): SIGTERM ends every WebSocket with a close frame 1001
/// (going away), connected or still before CONNECT, and the broker exits 0 within its grace.
#[test]
fn shutdown_sends_close_1001() {
    let mut b = BrokerProc::start(WS);
    let addr = b.ws_addr.unwrap();
    let mut ws = WsClient::connected(addr, &RawConnect::new("ws-shutdown"));
    let mut early = WsClient::new(addr);
    // The early connection's upgrade is done once it answers a ping: it waits for CONNECT.
    early.frame(true, PING, b"up", true);
    assert_eq!(early.read_frame(), Some((true, PONG, b"up".to_vec())));
    b.signal("TERM");
    ws.expect_close(1001);
    early.expect_close(1001);
    let status = b.wait_exit(WAIT).expect("broker exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// issue #10 item 1 (close frames): a malformed packet ([MQTT-4.8.0-1], here a PUBLISH with
/// QoS 3) and a first packet that is not CONNECT ([MQTT-3.1.0-1]) both end the WebSocket with
/// a close frame 1002 (protocol error).
#[test]
fn malformed_packets_send_close_1002() {
    let b = BrokerProc::start(WS);
    let addr = b.ws_addr.unwrap();
    let mut ws = WsClient::connected(addr, &RawConnect::new("ws-malformed"));
    ws.send(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01]);
    ws.expect_close(1002);
    let mut first = WsClient::new(addr);
    first.send(&[0xC0, 0x00]);
    first.expect_close(1002);
    b.wait_log("first packet is not CONNECT");
}
