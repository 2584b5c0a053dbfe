//! The admin port's HTTP/1.1 server: GET and HEAD, one request per connection, no body.
//! L4 (tokio::net only; what a path answers is `admin::Admin::route`'s business). Invariants:
//! every connection is bounded (request head size, header count, one read deadline for the
//! whole head, a connection limit), every refusal has a defined status line, and nothing a peer
//! sends can panic the task. Also `probe`, the client behind `brokerd health`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Largest request head (request line plus headers) read; over it: 431.
pub(crate) const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header lines in a request; over it: 431.
pub(crate) const MAX_HEADERS: usize = 64;
/// The whole request head must arrive within this; otherwise: 408 (a slowloris gets this).
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Writing the response must finish within this, or the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once; more get 503 at once and are closed.
pub(crate) const MAX_CONNECTIONS: usize = 32;

/// A response: status, content type and body (HEAD sends the headers only).
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

/// Answers one path (no query string) of a GET or HEAD.
pub(crate) trait Routes: Send + Sync + 'static {
    fn route(&self, path: &str) -> Response;
}

/// Requests refused before routing, by status (for logs at shutdown and the metrics).
#[derive(Debug, Default)]
pub(crate) struct HttpStats {
    pub(crate) requests: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The bytes of a whole response (`Connection: close`: one request per connection).
fn encode(r: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if r.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    out
}

/// What a request head turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request<'a> {
    /// GET or HEAD of `path` (query string removed).
    Get { path: &'a str, head: bool },
    /// Refused with this status and reason.
    Refused(u16, &'static str),
}

/// Where the head ends (after CRLF CRLF, or LF LF from lenient clients), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses a complete request head. Pure, so the unit tests can throw anything at it.
pub(crate) fn parse(head: &[u8]) -> Request<'_> {
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::Refused(400, "request head is not UTF-8");
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Refused(400, "malformed request line");
    };
    if !version.starts_with("HTTP/") {
        return Request::Refused(400, "malformed request line");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Request::Refused(505, "only HTTP/1.0 and HTTP/1.1");
    }
    let headers = lines.filter(|l| !l.is_empty()).count();
    if headers > MAX_HEADERS {
        return Request::Refused(431, "too many header lines");
    }
    if !target.starts_with('/') {
        return Request::Refused(400, "request target must be a path");
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    match method {
        "GET" => Request::Get { path, head: false },
        "HEAD" => Request::Get { path, head: true },
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            Request::Refused(405, "only GET and HEAD")
        }
        _ => Request::Refused(400, "malformed request line"),
    }
}

/// Accepts admin connections until `token` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    routes: Arc<dyn Routes>,
    stats: Arc<HttpStats>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let busy = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(10);
                x
            }
            Err(e) => {
                warn!(error = %e, "admin http: accept failed; retrying in {backoff:?}");
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the limit: 503 at once. Answered in a task of its own (as many again at
            // most, each for at most BUSY_LINGER) that reads the request away before closing:
            // a close with unread input would reset the connection before the client reads
            // the 503. Beyond that, the socket is closed at once.
            let n = stats.rejected.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(%peer, max = MAX_CONNECTIONS, rejected_total = n, "admin http: too many connections: 503");
            }
            if let Ok(busy_permit) = busy.clone().try_acquire_owned() {
                tracker.spawn(async move {
                    let _ = tokio::time::timeout(BUSY_LINGER, answer_busy(stream)).await;
                    drop(busy_permit);
                });
            }
            continue;
        };
        let (routes, stats, token) = (routes.clone(), stats.clone(), token.clone());
        tracker.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = serve_one(stream, peer, &*routes, &stats) => {}
            }
            drop(permit);
        });
    }
}

/// How long a connection over the limit is kept to answer it 503.
const BUSY_LINGER: Duration = Duration::from_secs(1);

/// Writes 503, ends our side, and reads (and discards) what the client sent until it closes.
async fn answer_busy(mut stream: tokio::net::TcpStream) {
    let busy = encode(&Response::text(503, "busy\n"), false);
    if stream.write_all(&busy).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    drain(&mut stream).await;
}

/// Reads one request head (bounded in size and time), answers it, closes.
async fn serve_one(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    routes: &dyn Routes,
    stats: &HttpStats,
) {
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut len = 0;
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            if let Some(end) = head_end(&buf[..len]) {
                return Ok(Some(end));
            }
            if len == buf.len() {
                return Ok(None);
            }
            match stream.read(&mut buf[len..]).await {
                Ok(0) => return Err(()),
                Ok(n) => len += n,
                Err(_) => return Err(()),
            }
        }
    })
    .await;
    let (response, head_only) = match read {
        Err(_) => (
            Response::text(408, "request head not received in time\n"),
            false,
        ),
        Ok(Err(())) => return, // closed or reset before a whole head: nothing to answer
        Ok(Ok(None)) => (Response::text(431, "request head too large\n"), false),
        Ok(Ok(Some(end))) => match parse(&buf[..end]) {
            Request::Get { path, head } => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                (routes.route(path), head)
            }
            Request::Refused(status, why) => (Response::text(status, format!("{why}\n")), false),
        },
    };
    if response.status >= 400 && response.status != 404 && response.status != 503 {
        stats.rejected.fetch_add(1, Ordering::Relaxed);
        debug!(%peer, status = response.status, "admin http: request refused");
    }
    let bytes = encode(&response, head_only);
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        // Input left unread (an oversized head, a body) would make the close a reset that
        // can destroy the answer before the client reads it: read it away, bounded in time.
        let _ = tokio::time::timeout(BUSY_LINGER, drain(&mut stream)).await;
    }
}

/// Reads and discards until the peer closes (or an error).
async fn drain(stream: &mut tokio::net::TcpStream) {
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid URL {0:?} (expected http://HOST:PORT/PATH)")]
    Url(String),
    #[error("cannot resolve {addr}: {error}")]
    Resolve { addr: String, error: std::io::Error },
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("no answer from {addr}: {error}")]
    Io {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{addr} answered {status_line:?}")]
    Status {
        addr: SocketAddr,
        status_line: String,
    },
}

/// The address a probe connects to for a bind address: an unspecified address (0.0.0.0, [::])
/// means "every interface", which is reached through loopback.
pub(crate) fn probe_target(bind: SocketAddr) -> SocketAddr {
    match bind {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

/// GETs `url` (`http://HOST:PORT/PATH`) with `limit` for connecting and for the answer;
/// Ok(status line) on a 200, an error saying why otherwise. Blocking, std only: it is the
/// `brokerd health` of an image that has no shell and no curl.
pub fn probe(url: &str, limit: Duration) -> Result<String, ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::Url(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || !authority.contains(':') {
        return Err(ProbeError::Url(url.to_owned()));
    }
    let addr = authority
        .to_socket_addrs()
        .map_err(|error| ProbeError::Resolve {
            addr: authority.to_owned(),
            error,
        })?
        .next()
        .ok_or_else(|| ProbeError::Url(url.to_owned()))?;
    let addr = probe_target(addr);
    let mut stream = TcpStream::connect_timeout(&addr, limit)
        .map_err(|error| ProbeError::Connect { addr, error })?;
    let io = |error| ProbeError::Io { addr, error };
    stream.set_read_timeout(Some(limit)).map_err(io)?;
    stream.set_write_timeout(Some(limit)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    // The status line is all we need; read a bounded amount.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(io(e)),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let status_line = line.lines().next().unwrap_or("").trim().to_owned();
    let ok = status_line
        .split(' ')
        .nth(1)
        .is_some_and(|code| code == "200")
        && status_line.starts_with("HTTP/1.");
    if ok {
        Ok(status_line)
    } else {
        Err(ProbeError::Status { addr, status_line })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue #10 item 3: the request parser answers every kind of input with a defined result.
    #[test]
    fn requests_parse_or_are_refused_with_a_status() {
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Request::Get {
                path: "/metrics",
                head: false
            }
        );
        assert_eq!(
            parse(b"HEAD / HTTP/1.0\r\n\r\n"),
            Request::Get {
                path: "/",
                head: true
            }
        );
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\n\r\n"),
            Request::Refused(405, _)
        ));
        assert!(matches!(
            parse(b"\x00\xff\r\n\r\n"),
            Request::Refused(400, _)
        ));
        assert!(matches!(parse(b"GET /\r\n\r\n"), Request::Refused(400, _)));
        assert!(matches!(
            parse(b"GET / HTTP/2.0\r\n\r\n"),
            Request::Refused(505, _)
        ));
        assert!(matches!(
            parse(b"GET http://x/ HTTP/1.1\r\n\r\n"),
            Request::Refused(400, _)
        ));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(parse(many.as_bytes()), Request::Refused(431, _)));
    }

    /// issue #10 item 3: `brokerd health` probes loopback for a wildcard bind address.
    #[test]
    fn a_wildcard_bind_is_probed_on_loopback() {
        let t = |s: &str| probe_target(s.parse().expect("address")).to_string();
        assert_eq!(t("0.0.0.0:8081"), "127.0.0.1:8081");
        assert_eq!(t("[::]:8081"), "[::1]:8081");
        assert_eq!(t("10.1.2.3:9"), "10.1.2.3:9");
    }

    /// issue #10 item 3: a URL that is not http://HOST:PORT is refused before connecting.
    #[test]
    fn probe_refuses_bad_urls() {
        for url in [
            "https://127.0.0.1:1/",
            "127.0.0.1:1",
            "http:///x",
            "http://host/x",
        ] {
            assert!(
                matches!(
                    probe(url, Duration::from_millis(100)),
                    Err(ProbeError::Url(_))
                ),
                "{url}"
            );
        }
    }
}
