//! Test harness shared by the integration tests: the real `brokerd` binary on 127.0.0.1 port 0,
//! rumqttc clients, and a raw-bytes client for malformed input. Every wait has a timeout.
#![allow(dead_code)] // each test file uses a different subset of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc as tmpsc;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running `brokerd` process, killed on drop.
pub struct BrokerProc {
    pub child: Child,
    pub addr: SocketAddr,
    /// The TLS listener (`listening tls on ADDR`), when the config enables `[tls]`.
    pub tls_addr: Option<SocketAddr>,
    /// The admin HTTP port (`listening http on ADDR`); 127.0.0.1:0 unless the test sets [http].
    pub http_addr: Option<SocketAddr>,
    /// The WebSocket listener (`listening ws on ADDR`), when the config enables `[websocket]`.
    pub ws_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    stderr_path: PathBuf,
}

impl BrokerProc {
    /// Starts brokerd with `bind = "127.0.0.1:0"` plus `extra` TOML (sections other than
    /// `[listener]`, or a `[listener]` without `bind`), and waits for `listening on ADDR`.
    pub fn start(extra: &str) -> BrokerProc {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra)
    }

    /// Like `start`, in a given directory (to restart on the same data directory).
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> BrokerProc {
        Self::start_with(dir, extra, |_| {})
    }

    /// Like `start_in`, with `tweak` applied to the command last (environment, uid, ...).
    pub fn start_with(
        dir: tempfile::TempDir,
        extra: &str,
        tweak: impl FnOnce(&mut Command),
    ) -> BrokerProc {
        let config_path = dir.path().join("broker.toml");
        let listener_extra = if extra.contains("[listener]") {
            String::new()
        } else {
            "[listener]\nbind = \"127.0.0.1:0\"\n".to_owned()
        };
        let extra = extra.replace("[listener]\n", "[listener]\nbind = \"127.0.0.1:0\"\n");
        let http_extra = if extra.contains("[http]") {
            ""
        } else {
            "\n[http]\nbind = \"127.0.0.1:0\"\n"
        };
        let config_text = format!("{listener_extra}{extra}\n{http_extra}");
        std::fs::write(&config_path, &config_text).expect("write config");
        let parsed = brokerd::Config::parse(&config_text, &config_path).ok();
        let tls = parsed.as_ref().is_some_and(|c| c.tls.enabled);
        let http = parsed.as_ref().is_some_and(|c| c.http.enabled);
        let ws = parsed.as_ref().is_some_and(|c| c.websocket.enabled);
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_brokerd"));
        cmd.arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("RUST_LOG", "brokerd=debug")
            .stdout(Stdio::piped())
            .stderr(stderr);
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn brokerd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Every line goes to the test (stdout carries only the `listening` lines); the
            // thread keeps draining so the broker never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut next_line = |what: &str| match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("brokerd did not print `{what}` in time; stderr:\n{log}");
            }
        };
        let line = next_line("listening on");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first stdout line {line:?}"))
            .parse()
            .expect("address");
        let tls_addr = tls.then(|| {
            let line = next_line("listening tls on");
            line.strip_prefix("listening tls on ")
                .unwrap_or_else(|| panic!("unexpected second stdout line {line:?}"))
                .parse()
                .expect("TLS address")
        });
        let http_addr = http.then(|| {
            let line = next_line("listening http on");
            line.strip_prefix("listening http on ")
                .unwrap_or_else(|| panic!("unexpected stdout line {line:?}"))
                .parse()
                .expect("HTTP address")
        });
        let ws_addr = ws.then(|| {
            let line = next_line("listening ws on");
            line.strip_prefix("listening ws on ")
                .unwrap_or_else(|| panic!("unexpected stdout line {line:?}"))
                .parse()
                .expect("WebSocket address")
        });
        BrokerProc {
            child,
            addr,
            tls_addr,
            http_addr,
            ws_addr,
            dir,
            config_path,
            stderr_path,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() > deadline {
                panic!("log never contained {needle:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (e.g. "TERM", "INT", "KILL") to the broker.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process with SIGKILL and returns its directory (to restart on the same data).
    pub fn kill9(mut self) -> tempfile::TempDir {
        self.signal("KILL");
        let _ = self.wait_exit(WAIT);
        self.take_dir()
    }

    /// Stops with SIGTERM, asserts a clean exit, and returns the directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.signal("TERM");
        let status = self
            .wait_exit(WAIT)
            .expect("brokerd did not exit after SIGTERM");
        assert!(
            status.success(),
            "brokerd exited with {status}; log:\n{}",
            self.log()
        );
        self.take_dir()
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// Resident memory of the broker process in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rumqttc client whose event loop runs in a task; incoming events arrive on `events`.
pub struct Client {
    pub client: AsyncClient,
    pub events: tmpsc::Receiver<Result<Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options for a client of `broker` with id `id` (clean session, keep-alive 30 s).
pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Connects with `opts` and waits for CONNACK; returns the client and the CONNACK.
pub async fn connect_with(opts: MqttOptions) -> (Client, rumqttc::ConnAck) {
    let (client, mut eventloop): (AsyncClient, EventLoop) = AsyncClient::new(opts, 1000);
    // Bounded like every queue: a test that stops reading slows its event loop, no more.
    let (tx, mut rx) = tmpsc::channel(10_000);
    let task = tokio::spawn(async move {
        loop {
            let ev = eventloop.poll().await;
            let stop = ev.is_err();
            if tx.send(ev.map_err(|e| e.to_string())).await.is_err() || stop {
                return;
            }
        }
    });
    let connack = tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Some(Ok(Event::Incoming(Packet::ConnAck(c)))) => return c,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connect failed: {e}"),
                None => panic!("event loop ended before CONNACK"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    (
        Client {
            client,
            events: rx,
            task,
        },
        connack,
    )
}

/// Connects a clean-session client.
pub async fn connect(addr: SocketAddr, id: &str) -> Client {
    connect_with(options(addr, id)).await.0
}

impl Client {
    /// Waits for the next incoming PUBLISH.
    pub async fn next_publish(&mut self) -> Publish {
        self.next_publish_within(WAIT)
            .await
            .expect("expected a PUBLISH in time")
    }

    /// The next incoming PUBLISH within `limit`, or None.
    pub async fn next_publish_within(&mut self, limit: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return None,
                Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) => return Some(p),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection error while waiting for PUBLISH: {e}"),
                Ok(None) => panic!("event loop ended"),
            }
        }
    }

    /// Waits for an incoming packet for which `pred` holds.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Packet) -> bool) -> Packet {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(Event::Incoming(p))) if pred(&p) => return p,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("connection error while waiting for {what}: {e}"),
                    None => panic!("event loop ended while waiting for {what}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// Subscribes and waits for the SUBACK; returns its return codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        match self
            .wait_for("SUBACK", |p| matches!(p, Packet::SubAck(_)))
            .await
        {
            Packet::SubAck(s) => s.return_codes,
            _ => unreachable!(),
        }
    }

    /// Publishes (does not wait for the acknowledgement).
    pub async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .expect("publish");
    }

    /// Sends DISCONNECT and waits until the event loop has sent it.
    pub async fn disconnect(&mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(ev) = self.events.recv().await {
                if matches!(
                    ev,
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
                ) {
                    return;
                }
            }
        })
        .await;
    }
}

/// A raw TCP client for byte-level tests.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Raw { stream }
    }

    /// Connects and completes a CONNECT/CONNACK exchange with a clean session.
    pub fn connected(addr: SocketAddr, client_id: &str) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.send(&connect_packet(client_id, true, 60));
        assert_eq!(
            raw.read_packet().expect("CONNACK"),
            vec![0x20, 0x02, 0x00, 0x00]
        );
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        // The broker may already have closed; a write error here is not the test's subject.
        let _ = self.stream.write_all(bytes);
    }

    /// Reads one whole packet (fixed header included); None on EOF or error.
    pub fn read_packet(&mut self) -> Option<Vec<u8>> {
        let mut first = [0u8; 1];
        self.stream.read_exact(&mut first).ok()?;
        let mut packet = vec![first[0]];
        let mut len: usize = 0;
        let mut shift = 0;
        loop {
            let mut b = [0u8; 1];
            self.stream.read_exact(&mut b).ok()?;
            packet.push(b[0]);
            len |= usize::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let start = packet.len();
        packet.resize(start + len, 0);
        self.stream.read_exact(&mut packet[start..]).ok()?;
        Some(packet)
    }

    /// Asserts the broker closes the connection (EOF or reset) without sending anything more.
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 64];
        match self.stream.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(n) => panic!("expected close, got {n} bytes: {:02x?}", &buf[..n]),
            Err(e) => panic!(
                "expected close, got error {e} (timeout means the broker kept the connection)"
            ),
        }
    }
}

/// Encodes a remaining length.
pub fn remaining_length(mut len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            return out;
        }
    }
}

/// A packet from its first byte and body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    p.extend(remaining_length(body.len()));
    p.extend_from_slice(body);
    p
}

/// A length-prefixed string/binary field.
pub fn field(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// A 3.1.1 CONNECT with no will and no credentials.
pub fn connect_packet(client_id: &str, clean: bool, keep_alive: u16) -> Vec<u8> {
    let mut body = field(b"MQTT");
    body.push(4);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend(keep_alive.to_be_bytes());
    body.extend(field(client_id.as_bytes()));
    packet(0x10, &body)
}

/// A PUBLISH from the client.
pub fn publish_packet(
    topic: &str,
    qos: u8,
    retain: bool,
    dup: bool,
    pkid: u16,
    payload: &[u8],
) -> Vec<u8> {
    let first = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
    let mut body = field(topic.as_bytes());
    if qos > 0 {
        body.extend(pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(first, &body)
}

/// A SUBSCRIBE with (filter, options byte) pairs.
pub fn subscribe_packet(pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for (f, q) in filters {
        body.extend(field(f.as_bytes()));
        body.push(*q);
    }
    packet(0x82, &body)
}

/// Parses a PUBLISH the broker sent: (dup, qos, retain, topic, pkid, payload).
pub fn parse_publish(p: &[u8]) -> (bool, u8, bool, String, u16, Vec<u8>) {
    assert_eq!(p[0] >> 4, 3, "not a PUBLISH: {p:02x?}");
    let (dup, qos, retain) = (p[0] & 0x08 != 0, (p[0] >> 1) & 3, p[0] & 1 != 0);
    let mut i = 1;
    while p[i] & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let tlen = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
    let topic = String::from_utf8(p[i + 2..i + 2 + tlen].to_vec()).expect("utf8 topic");
    i += 2 + tlen;
    let pkid = if qos > 0 {
        let id = u16::from_be_bytes([p[i], p[i + 1]]);
        i += 2;
        id
    } else {
        0
    };
    (dup, qos, retain, topic, pkid, p[i..].to_vec())
}

/// Polls `cond` until it holds or `WAIT` passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- Added for qos.rs, session.rs, malformed.rs, limits.rs, shutdown.rs (append-only) ----

impl BrokerProc {
    /// Waits until at least `count` log lines each contain every string in `parts`
    /// (e.g. `&["disconnected", "client_id=s1"]`); returns the log.
    pub fn wait_log_lines(&self, parts: &[&str], count: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            let n = log
                .lines()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .count();
            if n >= count {
                return log;
            }
            if Instant::now() > deadline {
                panic!("log never had {count} lines with {parts:?} (had {n}); log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Raw {
    /// Connects with a CONNECT of the given CleanSession; asserts the CONNACK is accepted and
    /// returns the client and its Session Present flag.
    pub fn connected_with(addr: SocketAddr, client_id: &str, clean: bool) -> (Raw, bool) {
        let mut raw = Raw::connect(addr);
        raw.send(&connect_packet(client_id, clean, 60));
        let ack = raw.read_packet().expect("CONNACK");
        assert_eq!(ack.len(), 4, "CONNACK {ack:02x?}");
        assert_eq!(
            (ack[0], ack[1], ack[3]),
            (0x20, 0x02, 0x00),
            "CONNACK {ack:02x?}"
        );
        assert!(ack[2] <= 1, "reserved CONNACK flags {ack:02x?}");
        (raw, ack[2] == 1)
    }

    /// One whole packet if it starts arriving within `limit`; None on silence, EOF or error.
    pub fn read_packet_within(&mut self, limit: Duration) -> Option<Vec<u8>> {
        self.stream.set_read_timeout(Some(limit)).expect("timeout");
        let mut first = [0u8; 1];
        let got = self.stream.peek(&mut first);
        self.stream.set_read_timeout(Some(WAIT)).expect("timeout");
        match got {
            Ok(1) => self.read_packet(),
            _ => None,
        }
    }

    /// Reads the next packet, failing the test if none arrives.
    pub fn expect_packet(&mut self, what: &str) -> Vec<u8> {
        self.read_packet()
            .unwrap_or_else(|| panic!("expected {what}, got EOF/timeout"))
    }

    /// Subscribes to one filter (packet id `pkid`) and asserts the SUBACK grants `qos`.
    pub fn subscribe(&mut self, pkid: u16, filter: &str, qos: u8) {
        self.send(&subscribe_packet(pkid, &[(filter, qos)]));
        let ack = self.expect_packet("SUBACK");
        let [hi, lo] = pkid.to_be_bytes();
        assert_eq!(ack, vec![0x90, 0x03, hi, lo, qos], "SUBACK for {filter}");
    }

    /// Sends PINGREQ and asserts the very next packet is PINGRESP: a barrier proving that
    /// everything the broker wrote before it has been read.
    pub fn ping(&mut self) {
        self.send(&[0xC0, 0x00]);
        let p = self.expect_packet("PINGRESP");
        assert_eq!(p, vec![0xD0, 0x00], "expected PINGRESP, got {p:02x?}");
    }

    /// Asserts nothing arrives within `limit` (use after a positive barrier).
    pub fn expect_silence(&mut self, limit: Duration) {
        if let Some(p) = self.read_packet_within(limit) {
            panic!("expected nothing, got {p:02x?}");
        }
    }

    /// Reads packets until EOF/reset; panics if the connection is still open after `limit`.
    /// Returns everything read before the close.
    pub fn drain_until_closed(&mut self, limit: Duration) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "connection still open after {limit:?}");
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("connection still open after {limit:?}")
                }
                Err(e) => panic!("unexpected read error {e}"),
            }
        }
    }
}

/// An acknowledgement-shaped packet: first byte + packet id (PUBACK 0x40, PUBREC 0x50,
/// PUBREL 0x62, PUBCOMP 0x70).
pub fn ack_packet(first: u8, pkid: u16) -> Vec<u8> {
    packet(first, &pkid.to_be_bytes())
}

/// An UNSUBSCRIBE with the given filters.
pub fn unsubscribe_packet(pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for f in filters {
        body.extend(field(f.as_bytes()));
    }
    packet(0xA2, &body)
}

/// A tiny deterministic PRNG (xorshift64*) for fuzz-style tests without extra crates.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

// ---- Helpers for connect.rs, pubsub.rs, retain.rs, will.rs, topic_matching.rs ----

/// A CONNECT spelled out field by field, for CONNECTs `connect_packet` cannot express. The
/// connect flags follow from the fields (will, username, password present), plus `extra_flags`.
#[derive(Clone, Debug)]
pub struct RawConnect {
    pub protocol_name: Vec<u8>,
    pub level: u8,
    pub clean: bool,
    pub keep_alive: u16,
    pub client_id: Vec<u8>,
    /// (topic, payload, qos, retain)
    pub will: Option<(Vec<u8>, Vec<u8>, u8, bool)>,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    /// ORed into the computed connect flags (reserved bit, stray will QoS, ...).
    pub extra_flags: u8,
}

impl RawConnect {
    /// A 3.1.1 CONNECT with a clean session and keep-alive 60 s.
    pub fn new(client_id: &str) -> RawConnect {
        RawConnect {
            protocol_name: b"MQTT".to_vec(),
            level: 4,
            clean: true,
            keep_alive: 60,
            client_id: client_id.as_bytes().to_vec(),
            will: None,
            username: None,
            password: None,
            extra_flags: 0,
        }
    }

    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> RawConnect {
        self.will = Some((topic.as_bytes().to_vec(), payload.to_vec(), qos, retain));
        self
    }

    pub fn username(mut self, username: &str) -> RawConnect {
        self.username = Some(username.as_bytes().to_vec());
        self
    }

    pub fn password(mut self, password: &[u8]) -> RawConnect {
        self.password = Some(password.to_vec());
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut flags = self.extra_flags;
        if self.clean {
            flags |= 0x02;
        }
        if let Some((_, _, qos, retain)) = &self.will {
            flags |= 0x04 | (qos << 3) | if *retain { 0x20 } else { 0 };
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        let mut body = field(&self.protocol_name);
        body.push(self.level);
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        body.extend(field(&self.client_id));
        if let Some((topic, payload, _, _)) = &self.will {
            body.extend(field(topic));
            body.extend(field(payload));
        }
        if let Some(u) = &self.username {
            body.extend(field(u));
        }
        if let Some(p) = &self.password {
            body.extend(field(p));
        }
        packet(0x10, &body)
    }
}

/// What a bounded raw read saw.
#[derive(Debug, PartialEq, Eq)]
pub enum RawRead {
    Packet(Vec<u8>),
    /// EOF or reset.
    Closed,
    /// Nothing within the limit.
    Timeout,
}

impl Raw {
    /// Connects, sends `c` and asserts CONNACK 0 (session present 0).
    pub fn connected_by(addr: SocketAddr, c: &RawConnect) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.send(&c.encode());
        assert_eq!(
            raw.read_packet().expect("CONNACK"),
            vec![0x20, 0x02, 0x00, 0x00]
        );
        raw
    }

    /// The next packet within `limit` (a packet that has started arriving is read whole).
    pub fn read_within(&mut self, limit: Duration) -> RawRead {
        self.stream
            .set_read_timeout(Some(limit.max(Duration::from_millis(1))))
            .expect("timeout");
        let mut first = [0u8; 1];
        let r = self.stream.peek(&mut first);
        self.stream.set_read_timeout(Some(WAIT)).expect("timeout");
        match r {
            Ok(0) => RawRead::Closed,
            Ok(_) => match self.read_packet() {
                Some(p) => RawRead::Packet(p),
                None => RawRead::Closed,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                RawRead::Timeout
            }
            Err(_) => RawRead::Closed,
        }
    }

    /// Reads packets until the broker closes the connection (at most `WAIT`); returns them.
    pub fn read_until_closed(&mut self) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_within(left) {
                RawRead::Packet(p) => out.push(p),
                RawRead::Closed => return out,
                RawRead::Timeout => panic!("connection still open after {WAIT:?}; got {out:02x?}"),
            }
        }
    }

    /// Sends SUBSCRIBE with several filters and asserts the SUBACK return codes are `codes`.
    pub fn subscribe_many(&mut self, pkid: u16, filters: &[(&str, u8)], codes: &[u8]) {
        self.send(&subscribe_packet(pkid, filters));
        let mut expected = vec![0x90];
        expected.extend(remaining_length(2 + codes.len()));
        expected.extend(pkid.to_be_bytes());
        expected.extend_from_slice(codes);
        assert_eq!(self.read_packet().expect("SUBACK"), expected);
    }
}

pub fn pingreq_packet() -> Vec<u8> {
    vec![0xc0, 0x00]
}

pub fn disconnect_packet() -> Vec<u8> {
    vec![0xe0, 0x00]
}

impl Client {
    /// Waits until the broker has handled everything this client sent before: an UNSUBSCRIBE
    /// of a filter nobody uses is answered in order, after the earlier packets.
    pub async fn barrier(&mut self) {
        self.client
            .unsubscribe("$barrier/never/subscribed")
            .await
            .expect("unsubscribe");
        self.wait_for("UNSUBACK", |p| matches!(p, Packet::UnsubAck(_)))
            .await;
    }

    /// Publishes and waits until the broker has routed it (see `barrier`).
    pub async fn publish_routed(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.publish(topic, qos, retain, payload).await;
        self.barrier().await;
    }

    /// Waits for the next PUBLISH and asserts its topic: used as a positive barrier (nothing
    /// else was delivered first).
    pub async fn expect_publish_on(&mut self, topic: &str) -> Publish {
        let p = self.next_publish().await;
        assert_eq!(p.topic, topic, "unexpected PUBLISH {p:?}");
        p
    }

    /// Asserts no PUBLISH arrives within `limit`; meaningful only after a positive barrier.
    pub async fn expect_no_publish(&mut self, limit: Duration) {
        if let Some(p) = self.next_publish_within(limit).await {
            panic!("unexpected PUBLISH {p:?}");
        }
    }
}

impl BrokerProc {
    /// Waits until the log shows at least `count` ends of connections of `client_id` (a
    /// "disconnected" line naming it as an event field or in the connection span).
    pub fn wait_disconnected(&self, client_id: &str, count: usize) -> String {
        let forms = [
            format!("client_id={client_id} "),
            format!("client_id={client_id}}}"),
            format!("client_id=\"{client_id}\""),
        ];
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            let n = log
                .lines()
                .filter(|l| {
                    l.contains("disconnected") && forms.iter().any(|f| l.contains(f.as_str()))
                })
                .count();
            if n >= count {
                return log;
            }
            if Instant::now() > deadline {
                panic!(
                    "log never showed {count} disconnects of {client_id:?} (saw {n}); log:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---- Added for persistence.rs (append-only) ----

impl BrokerProc {
    /// The directory of a broker whose process has already exited (see `wait_exit`), to
    /// restart on the same data; kills it first if it has not.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }
}

/// rumqttc's QoS from its number (2 and above: exactly once).
pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}
pub mod admin;
pub mod certs;
pub mod mosquitto;
pub mod persist;

// ---- Added for limits_attack.rs (append-only) ----

/// A TCP connection to `addr` from the local address `src` (bind before connect): on Linux any
/// 127.0.0.0/8 address is a loopback source, so a test can be "another host" as 127.0.0.2.
pub fn tcp_connect_from(src: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let stream = rt.block_on(async {
        let socket = match src {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(src, 0))?;
        socket.connect(addr).await
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

impl Raw {
    /// Like `connect`, from the local address `src`.
    pub fn connect_from(addr: SocketAddr, src: &str) -> Raw {
        let stream = tcp_connect_from(src.parse().expect("source address"), addr)
            .expect("tcp connect from a source address");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Raw { stream }
    }
}

/// Reads one packet from a buffered reader; None on EOF or error.
pub fn read_packet_from(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut first = [0u8; 1];
    r.read_exact(&mut first).ok()?;
    let mut p = vec![first[0]];
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).ok()?;
        p.push(b[0]);
        len |= usize::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let start = p.len();
    p.resize(start + len, 0);
    r.read_exact(&mut p[start..]).ok()?;
    Some(p)
}

/// The resident memory of process `pid` in KiB (0 if unknown).
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
