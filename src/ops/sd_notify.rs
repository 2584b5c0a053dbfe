//! The systemd readiness protocol (`sd_notify(3)`): one datagram of `KEY=VALUE` lines to the
//! unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//! L5: std only. Invariants: without `$NOTIFY_SOCKET` every call is a no-op; a failure to send
//! is returned, never a panic (the supervisor then times out, which is its business).

use std::io;
use std::os::unix::net::UnixDatagram;

/// The socket systemd listens on, from `$NOTIFY_SOCKET`; `None` when not run by a notify
/// service manager.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: String,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (an empty value counts as unset).
    pub fn from_env() -> Option<Notifier> {
        std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|socket| Notifier { socket })
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments) in one datagram.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        if let Some(name) = self.socket.strip_prefix('@') {
            send_abstract(&sock, name, state)
        } else {
            sock.send_to(state.as_bytes(), &self.socket).map(|_| ())
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sock: &UnixDatagram, name: &str, state: &str) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    sock.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_sock: &UnixDatagram, name: &str, _state: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("abstract socket @{name} needs Linux"),
    ))
}

/// `STATUS=` text: one line (a newline would start a new assignment).
pub fn status(text: &str) -> String {
    format!("STATUS={}", text.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue #10 item 5: a path socket receives the datagram as sent.
    #[test]
    fn path_socket_receives_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier {
            socket: path.display().to_string(),
        };
        n.notify("READY=1\nSTATUS=up").expect("send");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
    }

    /// issue #10 item 5: `@name` is the abstract namespace (systemd's usual form).
    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_socket_receives_the_state() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("brokerd-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        let n = Notifier {
            socket: format!("@{name}"),
        };
        n.notify("STOPPING=1").expect("send");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"STOPPING=1");
        assert_eq!(status("a\nb"), "STATUS=a b");
    }
}
