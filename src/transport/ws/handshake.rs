//! The WebSocket opening handshake (RFC 6455 4.2): the HTTP/1.1 upgrade request, read into a
//! bounded buffer and checked (path, version, key, subprotocol), the client's address behind a
//! trusted proxy (`X-Forwarded-For`), and the answer: 101, or an HTTP error with its reason.
//! L1: tokio, ring, base64, `cidr`. Invariants: at most `MAX_REQUEST` bytes are buffered; every
//! refusal is answered with a status code before the socket closes; nothing here panics on what
//! a client sends.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Ws;
use crate::cidr::IpNet;
use crate::config::WebsocketConfig;

/// The largest request head accepted (request line and headers); over it: 431.
pub(crate) const MAX_REQUEST: usize = 8 * 1024;

/// RFC 6455 1.3: appended to the client's key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The subprotocols spoken, in order of preference: MQTT 3.1.1's name, then MQTT 3.1's.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Why a WebSocket handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The request was refused with this HTTP status (already sent).
    #[error("HTTP {status}: {reason}")]
    Refused { status: u16, reason: &'static str },
    #[error("{0}")]
    Io(std::io::Error),
    #[error("connection closed during the WebSocket handshake")]
    Eof,
    /// Closed before sending anything (a port probe or a health check).
    #[error("connection closed before the WebSocket handshake")]
    Silent,
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

/// The listener's settings, shared by its connections.
#[derive(Clone)]
pub(crate) struct WsAcceptor {
    inner: Arc<Settings>,
}

struct Settings {
    path: String,
    trusted: Vec<IpNet>,
    /// The largest frame or message payload: `limits.max_packet_size` + 5 (a fixed header).
    max_len: u64,
}

/// A valid upgrade request, not answered yet: the caller admits the client's address first.
pub(crate) struct Upgrade {
    tcp: TcpStream,
    /// The client's address: the TCP peer, or what a trusted proxy forwarded.
    client: IpAddr,
    forwarded: bool,
    accept_key: String,
    protocol: Option<&'static str>,
    carry: Vec<u8>,
    max_len: u64,
}

impl WsAcceptor {
    pub(crate) fn new(config: &WebsocketConfig, max_packet_size: usize) -> WsAcceptor {
        WsAcceptor {
            inner: Arc::new(Settings {
                path: config.path.clone(),
                // validate() refused entries that do not parse.
                trusted: config
                    .trusted_proxies
                    .iter()
                    .filter_map(|p| IpNet::parse(p))
                    .collect(),
                max_len: max_packet_size as u64 + 5,
            }),
        }
    }

    /// Whether `ip` is a trusted proxy (its connections are admitted per forwarded address).
    pub(crate) fn is_trusted(&self, ip: IpAddr) -> bool {
        self.inner.trusted.iter().any(|n| n.contains(ip))
    }

    /// Reads and checks the upgrade request of a connection from `peer` (the caller bounds it
    /// in time). A refused request has been answered with its HTTP status.
    pub(crate) async fn read_request(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<Upgrade, HandshakeError> {
        let mut buf = vec![0u8; MAX_REQUEST];
        let mut len = 0;
        let head_end = loop {
            let n = tcp.read(&mut buf[len..]).await?;
            if n == 0 {
                return Err(if len == 0 {
                    HandshakeError::Silent
                } else {
                    HandshakeError::Eof
                });
            }
            let from = len.saturating_sub(3);
            len += n;
            if let Some(i) = find(&buf[from..len], b"\r\n\r\n") {
                break from + i + 4;
            }
            if len == MAX_REQUEST {
                return refuse(tcp, 431, "request head over 8 KiB").await;
            }
        };
        let checked = match std::str::from_utf8(&buf[..head_end]) {
            Ok(head) => self.check(head, peer.ip()),
            Err(_) => Err((400, "request head is not UTF-8")),
        };
        match checked {
            // Frames the client sent right after its request are read first.
            Ok(c) => Ok(Upgrade {
                tcp,
                client: c.client,
                forwarded: c.forwarded,
                accept_key: c.accept_key,
                protocol: c.protocol,
                carry: buf[head_end..len].to_vec(),
                max_len: self.inner.max_len,
            }),
            Err((status, reason)) => refuse(tcp, status, reason).await,
        }
    }

    /// Checks a request head (ending with an empty line) from `peer`.
    fn check(&self, head: &str, peer: IpAddr) -> Result<Checked, (u16, &'static str)> {
        let mut lines = head.split("\r\n");
        let mut request = lines.next().unwrap_or_default().split(' ');
        let (method, target, version) = (request.next(), request.next(), request.next());
        if request.next().is_some() || version.is_none() {
            return Err((400, "malformed request line"));
        }
        if method != Some("GET") {
            return Err((400, "method is not GET"));
        }
        if version != Some("HTTP/1.1") {
            return Err((400, "not HTTP/1.1"));
        }
        let path = target.unwrap_or_default();
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        if path != self.inner.path {
            return Err((404, "no WebSocket endpoint at this path (websocket.path)"));
        }
        let (mut upgrade, mut connection, mut key, mut ws_version) = (false, false, None, None);
        let (mut offered, mut any_offered) = (None::<usize>, false);
        let mut forwarded: Vec<&str> = Vec::new();
        for line in lines.take_while(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                return Err((400, "malformed header line"));
            };
            let value = value.trim();
            let tokens = || value.split(',').map(str::trim);
            match name.to_ascii_lowercase().as_str() {
                "upgrade" => upgrade |= tokens().any(|t| t.eq_ignore_ascii_case("websocket")),
                "connection" => connection |= tokens().any(|t| t.eq_ignore_ascii_case("upgrade")),
                "sec-websocket-key" => key = Some(value),
                "sec-websocket-version" => ws_version = Some(value),
                "sec-websocket-protocol" => {
                    for t in tokens().filter(|t| !t.is_empty()) {
                        any_offered = true;
                        if let Some(rank) = SUBPROTOCOLS.iter().position(|p| *p == t) {
                            offered = Some(offered.map_or(rank, |r| r.min(rank)));
                        }
                    }
                }
                "x-forwarded-for" => forwarded.extend(tokens()),
                _ => {}
            }
        }
        if !upgrade || !connection {
            return Err((
                400,
                "not a WebSocket upgrade (needs Upgrade: websocket and Connection: Upgrade)",
            ));
        }
        if ws_version != Some("13") {
            return Err((426, "unsupported Sec-WebSocket-Version (13 is)"));
        }
        let key = key.filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|raw| raw.len() == 16)
        });
        let Some(key) = key else {
            return Err((400, "missing or invalid Sec-WebSocket-Key"));
        };
        let protocol = match offered {
            Some(rank) => Some(SUBPROTOCOLS[rank]),
            None if any_offered => {
                return Err((400, "no supported subprotocol offered (mqtt or mqttv3.1)"))
            }
            None => None,
        };
        let (client, forwarded) = if self.is_trusted(peer) && !forwarded.is_empty() {
            (self.forwarded_client(&forwarded)?, true)
        } else {
            (peer, false)
        };
        Ok(Checked {
            client,
            forwarded,
            accept_key: accept_key(key),
            protocol,
        })
    }

    /// The client behind trusted proxies: the rightmost address that is not a trusted proxy
    /// (each proxy appends the address it received from), or the leftmost if all are.
    fn forwarded_client(&self, chain: &[&str]) -> Result<IpAddr, (u16, &'static str)> {
        let mut client = None;
        for entry in chain.iter().rev() {
            let Some(ip) = parse_forwarded(entry) else {
                return Err((400, "unparsable X-Forwarded-For from a trusted proxy"));
            };
            client = Some(ip);
            if !self.is_trusted(ip) {
                break;
            }
        }
        client.ok_or((400, "empty X-Forwarded-For from a trusted proxy"))
    }
}

/// One X-Forwarded-For entry: an address, perhaps with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// What the request says, before the socket is attached.
struct Checked {
    client: IpAddr,
    forwarded: bool,
    accept_key: String,
    protocol: Option<&'static str>,
}

/// RFC 6455 4.2.2: base64(SHA-1(key + GUID)).
fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// Answers `status` with `reason` as a plain-text body, closes, and returns the error.
async fn refuse<T>(
    mut tcp: TcpStream,
    status: u16,
    reason: &'static str,
) -> Result<T, HandshakeError> {
    let version = if status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\n{version}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{reason}\n",
        reason_phrase(status),
        reason.len() + 1,
    );
    tcp.write_all(response.as_bytes()).await?;
    let _ = tcp.shutdown().await;
    Err(HandshakeError::Refused { status, reason })
}

impl Upgrade {
    /// The client's address: the TCP peer's, or the one a trusted proxy forwarded.
    pub(crate) fn client(&self) -> IpAddr {
        self.client
    }

    /// Whether `client` came from `X-Forwarded-For`.
    pub(crate) fn forwarded(&self) -> bool {
        self.forwarded
    }

    /// The subprotocol chosen (none: the client offered none).
    pub(crate) fn protocol(&self) -> Option<&'static str> {
        self.protocol
    }

    /// Answers 101 and returns the WebSocket connection.
    pub(crate) async fn accept(mut self) -> std::io::Result<Ws> {
        let protocol = self
            .protocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default();
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{protocol}\r\n",
            self.accept_key
        );
        self.tcp.write_all(response.as_bytes()).await?;
        Ok(Ws::new(self.tcp, self.max_len, self.carry))
    }

    /// Answers 429 (a per-address limit refused the client) and closes.
    pub(crate) async fn refuse_limited(self, limit: &'static str) -> HandshakeError {
        match refuse::<()>(self.tcp, 429, limit).await {
            Err(e) => e,
            Ok(()) => HandshakeError::Refused {
                status: 429,
                reason: limit,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acceptor(trusted: &[&str]) -> WsAcceptor {
        let config = WebsocketConfig {
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            ..WebsocketConfig::default()
        };
        WsAcceptor::new(&config, 1000)
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(path: &str, extra: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// RFC 6455 1.3's own example of the accept key.
    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    /// issue #10 item 1: a bad handshake gets its status (404 path, 400 not an upgrade or no
    /// key or a foreign subprotocol, 426 version); mqtt is preferred to mqttv3.1; none offered
    /// is accepted without one.
    #[test]
    fn requests_are_checked() {
        let a = acceptor(&[]);
        let peer = ip("192.0.2.1");
        let status = |req: &str| a.check(req, peer).err().map(|(s, _)| s);
        assert_eq!(status(&request("/mqtt", "")), None);
        assert_eq!(status(&request("/mqtt?x=1", "")), None);
        assert_eq!(status(&request("/other", "")), Some(404));
        assert_eq!(
            status(&request("/mqtt", "").replace("GET", "POST")),
            Some(400)
        );
        assert_eq!(
            status(&request("/mqtt", "").replace("Upgrade: websocket\r\n", "")),
            Some(400)
        );
        assert_eq!(
            status(&request("/mqtt", "").replace("Version: 13", "Version: 8")),
            Some(426)
        );
        assert_eq!(
            status(&request("/mqtt", "").replace(KEY, "short")),
            Some(400)
        );
        assert_eq!(
            status(&request("/mqtt", "Sec-WebSocket-Protocol: chat\r\n")),
            Some(400)
        );
        let pick = |extra: &str| {
            a.check(&request("/mqtt", extra), peer)
                .ok()
                .unwrap()
                .protocol
        };
        assert_eq!(pick(""), None);
        assert_eq!(
            pick("Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n"),
            Some("mqtt")
        );
        assert_eq!(
            pick("Sec-WebSocket-Protocol: chat, mqttv3.1\r\n"),
            Some("mqttv3.1")
        );
    }

    /// issue #10 item 1: X-Forwarded-For is believed only from a trusted proxy, and then the
    /// rightmost address that is not a trusted proxy is the client.
    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let a = acceptor(&["127.0.0.1", "10.0.0.0/8"]);
        let xff = "X-Forwarded-For: 198.51.100.9, 203.0.113.7\r\nX-Forwarded-For: 10.1.1.1:443\r\n";
        let from = |peer: &str| {
            let c = a.check(&request("/mqtt", xff), ip(peer)).ok().unwrap();
            (c.client, c.forwarded)
        };
        assert_eq!(from("127.0.0.1"), (ip("203.0.113.7"), true));
        assert_eq!(from("192.0.2.1"), (ip("192.0.2.1"), false));
        let c = a
            .check(&request("/mqtt", ""), ip("127.0.0.1"))
            .ok()
            .unwrap();
        assert_eq!((c.client, c.forwarded), (ip("127.0.0.1"), false));
        let bad = a.check(
            &request("/mqtt", "X-Forwarded-For: nonsense\r\n"),
            ip("127.0.0.1"),
        );
        assert_eq!(bad.err().map(|(s, _)| s), Some(400));
        let all_trusted = a.check(
            &request(
                "/mqtt",
                "X-Forwarded-For: [::ffff:10.0.0.1]:1, 10.2.2.2\r\n",
            ),
            ip("127.0.0.1"),
        );
        assert_eq!(all_trusted.ok().unwrap().client, ip("::ffff:10.0.0.1"));
    }
}
