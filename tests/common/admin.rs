//! The admin HTTP port from a test's side: raw HTTP requests, a strict Prometheus text parser,
//! and reading figures out of the status page. Shared by tests/admin.rs and tests/bridge.rs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::{BrokerProc, WAIT};

/// One HTTP response: status code, headers (lowercased names) and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as raw bytes and reads the whole response (the server closes after one).
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect to the admin port");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(request).expect("write request");
    read_response_to(&mut s, request.starts_with(b"HEAD "))
}

pub fn read_response(s: &mut TcpStream) -> HttpResponse {
    read_response_to(s, false)
}

/// Reads a whole response; the body's length must match Content-Length (no body for HEAD).
pub fn read_response_to(s: &mut TcpStream, head_request: bool) -> HttpResponse {
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

pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// Parses the Prometheus text exposition format strictly enough to catch mistakes: every
/// sample belongs to a family announced by `# HELP` and `# TYPE` lines, counters end in
/// `_total`, histograms have `_bucket`/`_sum`/`_count`, names are `brokerd_*`, values are
/// numbers, no series appears twice. Returns "name{labels}" -> value.
pub fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    use std::collections::HashMap;
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps = std::collections::HashSet::new();
    let mut out = HashMap::new();
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP text");
            assert!(!help.is_empty(), "{line}");
            assert!(helps.insert(name.to_owned()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(helps.contains(name), "TYPE before HELP: {line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().expect("name");
        assert!(name.starts_with("brokerd_"), "{line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample without TYPE: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}') && labels.contains("=\""),
                    "{line}"
                );
            }
        }
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "twice: {line}"
        );
    }
    out
}

pub fn scrape(b: &BrokerProc) -> std::collections::HashMap<String, f64> {
    let r = get(b.http_addr.expect("the admin port is on"), "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{r:?}"
    );
    parse_prometheus(&r.body)
}

pub fn value(m: &std::collections::HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {:?}", m.keys().collect::<Vec<_>>()))
}

/// The text of the first element after `from` in `dom` with `data-metric="name"`.
pub fn dom_metric(dom: &str, from: usize, name: &str) -> String {
    let needle = format!("data-metric=\"{name}\"");
    let at = dom[from..]
        .find(&needle)
        .unwrap_or_else(|| panic!("no {needle} in the page"))
        + from;
    let start = dom[at..].find('>').expect("element") + at + 1;
    let end = dom[start..].find('<').expect("element end") + start;
    dom[start..end].to_owned()
}
