//! The admin HTTP port and `$SYS` (issue #10 items 2 and 3), through the real binary.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BrokerProc, WAIT};

/// One HTTP response: status code, headers (lowercased names) and body.
#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as raw bytes and reads the whole response (the server closes after one).
fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect to the admin port");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(request).expect("write request");
    read_response_to(&mut s, request.starts_with(b"HEAD "))
}

fn read_response(s: &mut TcpStream) -> HttpResponse {
    read_response_to(s, false)
}

/// Reads a whole response; the body's length must match Content-Length (no body for HEAD).
fn read_response_to(s: &mut TcpStream, head_request: bool) -> HttpResponse {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let resp = HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    };
    if let (Some(len), false) = (resp.header("content-length"), head_request) {
        assert_eq!(len.parse::<usize>().ok(), Some(resp.body.len()), "{resp:?}");
    }
    resp
}

fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

fn http(b: &BrokerProc) -> SocketAddr {
    b.http_addr.expect("the admin port is on")
}

/// Runs `brokerd health ARGS`; returns (exit code, stdout + stderr).
fn health(args: &[&str]) -> (i32, String) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_brokerd"))
        .arg("health")
        .args(args)
        .output()
        .expect("run brokerd health");
    assert!(started.elapsed() < WAIT, "brokerd health took too long");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// issue #10 item 3: /healthz answers 200 "ok" and /readyz 200 once the broker listens; other
/// paths get 404 and other methods 405 with an Allow header.
#[test]
fn healthz_readyz_and_unknown_paths() {
    let b = BrokerProc::start("");
    let r = get(http(&b), "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "{r:?}");
    let r = get(http(&b), "/readyz");
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(http(&b), "/no/such/page");
    assert_eq!(r.status, 404, "{r:?}");
    let r = http_raw(
        http(&b),
        b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("allow"), Some("GET, HEAD"), "{r:?}");
    let r = http_raw(http(&b), b"HEAD /healthz HTTP/1.1\r\n\r\n");
    assert_eq!((r.status, r.body.as_str()), (200, ""), "{r:?}");
    assert_eq!(r.header("content-length"), Some("3"), "{r:?}");
}

/// issue #10 item 3: `[http] enabled = false` binds no admin port and prints no line for it.
#[test]
fn the_admin_port_can_be_turned_off() {
    let b = BrokerProc::start("[http]\nenabled = false\n");
    assert_eq!(b.http_addr, None);
}

/// issue #10 item 3: `brokerd health` exits 0 against a live broker (from --url and from the
/// broker's own --config), and 1 with the reason when nothing listens there or the path is
/// not healthy.
#[test]
fn brokerd_health_exit_codes() {
    let b = BrokerProc::start("");
    let addr = http(&b);
    let (code, out) = health(&["--url", &format!("http://{addr}/healthz")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("healthy"), "{out}");
    // The config the broker runs on names port 0, which cannot be probed: use a config that
    // names the bound port, as a Docker image's does, with the wildcard address.
    let cfg = b.dir.path().join("probe.toml");
    std::fs::write(
        &cfg,
        format!("[http]\nbind = \"0.0.0.0:{}\"\n", addr.port()),
    )
    .expect("write");
    let (code, out) = health(&["--config", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}");
    // A path that is not 200.
    let (code, out) = health(&["--url", &format!("http://{addr}/nope")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("404"), "{out}");
    // The wrong port: the MQTT listener does not speak HTTP and closes.
    let (code, out) = health(&[
        "--url",
        &format!("http://{}/healthz", b.addr),
        "--timeout-ms",
        "1000",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unhealthy"), "{out}");
    // Down: the broker stopped, nothing listens.
    drop(b);
    let (code, out) = health(&["--url", &format!("http://{addr}/healthz")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot connect"), "{out}");
}

/// issue #10 item 3: bad HTTP input gets a defined answer and never hurts the broker: garbage
/// gets 400, an oversized head 431, a head that never ends (slowloris) 408 after the read
/// timeout, an unsupported version 505; /healthz still answers afterwards.
#[test]
fn bad_http_input_gets_a_defined_answer() {
    let b = BrokerProc::start("");
    let addr = http(&b);
    let r = http_raw(addr, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n");
    assert_eq!(r.status, 400, "{r:?}");
    let r = http_raw(addr, b"GET / HTTP/7.0\r\n\r\n");
    assert_eq!(r.status, 505, "{r:?}");
    let mut big = b"GET / HTTP/1.1\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    // The server answers once it has 8 KiB and may close before taking the rest.
    let _ = s.write_all(&big);
    let r = read_response(&mut s);
    assert_eq!(r.status, 431, "{r:?}");
    // Slowloris: a head that trickles and never ends is cut at the read timeout (5 s).
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nX-a: ").expect("write");
    let r = read_response(&mut s);
    assert_eq!(r.status, 408, "{r:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < WAIT,
        "cut after {took:?}"
    );
    assert_eq!(get(addr, "/healthz").status, 200);
}
