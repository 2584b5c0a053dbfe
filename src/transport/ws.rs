//! MQTT over WebSocket (RFC 6455, server side) behind the same `Transport` as TCP and TLS:
//! client frames are unmasked in place in the session's read buffer (frame headers removed), so
//! MQTT packets may be split or joined at any frame boundary; each write goes out as one binary
//! frame whose payload is taken straight from the session's write buffer.
//! L1: tokio, ring (SHA-1 of the handshake), base64, `cidr`. Invariants: no whole frame or
//! message is ever buffered here (a frame header of at most 14 bytes, a control payload of at
//! most 125, and at most one pong plus one close waiting to go out); a frame or message over
//! the limit, a text frame and any protocol violation get a close frame with its status code
//! and end the stream with an error (`Refused`), never a panic; a connection the broker ends
//! itself gets a close frame with the status for its `Ending` before TCP closes.

mod handshake;

use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest, Ready};
use tokio::net::TcpStream;
use tracing::debug;

use super::{Ending, Transport};
pub(crate) use handshake::{HandshakeError, WsAcceptor};

/// Opcodes (RFC 6455 5.2).
mod op {
    pub(super) const CONTINUATION: u8 = 0x0;
    pub(super) const TEXT: u8 = 0x1;
    pub(super) const BINARY: u8 = 0x2;
    pub(super) const CLOSE: u8 = 0x8;
    pub(super) const PING: u8 = 0x9;
    pub(super) const PONG: u8 = 0xA;
}

/// Close status codes (RFC 6455 7.4.1).
mod status {
    pub(super) const NORMAL: u16 = 1000;
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const PROTOCOL_ERROR: u16 = 1002;
    pub(super) const UNSUPPORTED_DATA: u16 = 1003;
    pub(super) const POLICY_VIOLATION: u16 = 1008;
    pub(super) const TOO_BIG: u16 = 1009;
    pub(super) const INTERNAL_ERROR: u16 = 1011;
}

/// How long, at most, a connection whose close frame was sent waits for the client to close
/// its end (RFC 6455 7.1.1), discarding what it still sends.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Pongs not sent because the previous one was still being written (RFC 6455 5.5.3 allows
/// answering only the most recent ping): the bound of the control queue, counted.
static PONGS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Why the client's frames were refused; the message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("[RFC 6455 5.1] client frame not masked")]
    Unmasked,
    #[error("[RFC 6455 5.6] text frame: MQTT needs binary frames")]
    Text,
    #[error("[RFC 6455 5.2] reserved bits set without an extension")]
    Reserved,
    #[error("[RFC 6455 5.2] unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("[RFC 6455 5.5] control frame fragmented or over 125 bytes")]
    Control,
    #[error("[RFC 6455 5.4] continuation frame outside a fragmented message")]
    Continuation,
    #[error("[RFC 6455 5.4] new message inside a fragmented message")]
    Interleaved,
    #[error("[RFC 6455 5.2] payload length with its most significant bit set")]
    Length,
    #[error("[RFC 6455 5.5.1] close frame with a one-byte payload")]
    CloseLength,
    #[error("frame of {len} bytes over the limit of {max} (limits.max_packet_size + 5)")]
    FrameTooBig { len: u64, max: u64 },
    #[error("message of over {max} bytes (limits.max_packet_size + 5)")]
    MessageTooBig { max: u64 },
}

/// The error that ends a stream whose frames were refused: the rule broken and the status of
/// the close frame sent. The session logs it (folded, at warn) as the reason it ended.
#[derive(Debug, thiserror::Error)]
#[error("websocket: {error}; closed with status {code}")]
pub(crate) struct Refused {
    error: FrameError,
    code: u16,
}

impl FrameError {
    /// The status code of the close frame that answers it.
    pub(crate) fn close_code(&self) -> u16 {
        match self {
            FrameError::Text => status::UNSUPPORTED_DATA,
            FrameError::FrameTooBig { .. } | FrameError::MessageTooBig { .. } => status::TOO_BIG,
            _ => status::PROTOCOL_ERROR,
        }
    }
}

/// A WebSocket connection whose handshake is complete.
pub(crate) struct Ws {
    tcp: TcpStream,
    rx: Rx,
    tx: Tx,
}

/// The reading side's state between reads.
#[derive(Debug, Default)]
struct Rx {
    /// The header of the next frame, as far as it arrived (2 to 14 bytes).
    hdr: [u8; 14],
    hdr_len: u8,
    /// Whether the current frame is a control frame, and its opcode and FIN bit.
    opcode: u8,
    fin: bool,
    /// Payload bytes of the current frame still to come (0: the next bytes are a header).
    left: u64,
    mask: [u8; 4],
    /// Index in `mask` of the next payload byte.
    mask_at: u8,
    /// A fragmented binary message is open (its first frame had FIN = 0).
    in_message: bool,
    /// Payload bytes of the current message so far.
    message_len: u64,
    /// The largest frame or message payload accepted.
    max_len: u64,
    /// The payload of the control frame being read (at most 125 bytes).
    control: Vec<u8>,
    /// A close frame arrived: the stream ends after what came before it.
    closed: bool,
    /// Bytes that arrived with the handshake request: read before the socket.
    carry: Vec<u8>,
}

/// The writing side's state between writes.
#[derive(Debug, Default)]
struct Tx {
    /// The header of the data frame being written, not yet all on the socket, from `hdr_at`.
    hdr: [u8; 10],
    hdr_at: u8,
    hdr_len: u8,
    /// Payload bytes of that frame still to take from the caller's buffer.
    frame_left: usize,
    /// Control frames (at most one pong, then at most one close) waiting for the end of the
    /// current data frame, from `ctrl_at`.
    ctrl: Vec<u8>,
    ctrl_at: usize,
    /// `ctrl` holds only a pong that was not started: a newer ping replaces it.
    pong_only: bool,
}

/// The header of a server frame (never masked, RFC 6455 5.1); returns its length.
fn frame_header(opcode: u8, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// XORs `data` with `mask`, starting at mask index `at`.
fn unmask(data: &mut [u8], mask: [u8; 4], at: usize) {
    let m: [u8; 4] = std::array::from_fn(|i| mask[(at + i) % 4]);
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so at mask index 0 again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// Header bytes needed, given what arrived of it: 2, then 2 + the extended length + the mask.
fn header_needed(hdr: &[u8]) -> usize {
    if hdr.len() < 2 {
        return 2;
    }
    let ext = match hdr[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if hdr[1] & 0x80 != 0 { 4 } else { 0 }
}

impl Rx {
    fn new(max_len: u64, carry: Vec<u8>) -> Rx {
        Rx {
            max_len,
            carry,
            ..Rx::default()
        }
    }

    /// Checks a frame's first two bytes, as soon as they arrived.
    fn check_start(&self, b0: u8, b1: u8) -> Result<(), FrameError> {
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        if b0 & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        match opcode {
            op::TEXT => return Err(FrameError::Text),
            op::BINARY if self.in_message => return Err(FrameError::Interleaved),
            op::CONTINUATION if !self.in_message => return Err(FrameError::Continuation),
            op::BINARY | op::CONTINUATION => {}
            op::CLOSE | op::PING | op::PONG => {
                if !fin || b1 & 0x7f > 125 {
                    return Err(FrameError::Control);
                }
            }
            other => return Err(FrameError::Opcode(other)),
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Unmasked);
        }
        Ok(())
    }

    /// Starts the frame whose header is complete in `hdr`.
    fn start_frame(&mut self, tx: &mut Tx) -> Result<(), FrameError> {
        let h = &self.hdr[..usize::from(self.hdr_len)];
        let (len, mask_at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            short => (u64::from(short), 2),
        };
        if len >> 63 != 0 {
            return Err(FrameError::Length);
        }
        self.mask.copy_from_slice(&h[mask_at..mask_at + 4]);
        self.mask_at = 0;
        self.fin = h[0] & 0x80 != 0;
        self.opcode = h[0] & 0x0f;
        if self.opcode & 0x8 == 0 {
            if len > self.max_len {
                return Err(FrameError::FrameTooBig {
                    len,
                    max: self.max_len,
                });
            }
            self.message_len += len;
            if self.message_len > self.max_len {
                return Err(FrameError::MessageTooBig { max: self.max_len });
            }
            self.in_message = !self.fin;
        }
        self.left = len;
        if len == 0 {
            self.end_frame(tx)?;
        }
        Ok(())
    }

    /// The current frame's payload is complete.
    fn end_frame(&mut self, tx: &mut Tx) -> Result<(), FrameError> {
        match self.opcode {
            op::BINARY | op::CONTINUATION if self.fin => self.message_len = 0,
            op::PING => tx.queue_pong(&self.control),
            op::CLOSE => {
                let code = match self.control.len() {
                    0 => None,
                    1 => return Err(FrameError::CloseLength),
                    _ => Some(u16::from_be_bytes([self.control[0], self.control[1]])),
                };
                // Echo the client's status (RFC 6455 5.5.1); codes a peer may not send get 1002.
                let reply = code.map(|c| match c {
                    1000..=1003 | 1007..=1014 | 3000..=4999 => c,
                    _ => status::PROTOCOL_ERROR,
                });
                debug!(code, "websocket close frame received");
                tx.queue_close(reply, "");
                self.closed = true;
            }
            _ => {} // a pong, or a fragment that does not end its message
        }
        if self.control.capacity() > 0 {
            self.control = Vec::new();
        }
        Ok(())
    }

    /// Decodes the frames in `buf[start..]` in place: payload bytes of data frames are unmasked
    /// and moved down over the headers; control frames are handled. Leaves only MQTT bytes from
    /// `start`.
    fn decode(&mut self, buf: &mut BytesMut, start: usize, tx: &mut Tx) -> Result<(), FrameError> {
        let end = buf.len();
        let (mut r, mut w) = (start, start);
        let result = loop {
            if r >= end || self.closed {
                break Ok(());
            }
            if self.left == 0 {
                // A header: collect it (it may be cut anywhere by the read).
                let mut need = header_needed(&self.hdr[..usize::from(self.hdr_len)]);
                while usize::from(self.hdr_len) < need && r < end {
                    self.hdr[usize::from(self.hdr_len)] = buf[r];
                    self.hdr_len += 1;
                    r += 1;
                    if self.hdr_len == 2 {
                        need = header_needed(&self.hdr[..2]);
                    }
                }
                if self.hdr_len >= 2 {
                    if let Err(e) = self.check_start(self.hdr[0], self.hdr[1]) {
                        break Err(e);
                    }
                }
                if usize::from(self.hdr_len) < need {
                    continue; // the rest of the header comes with the next read
                }
                let started = self.start_frame(tx);
                self.hdr_len = 0;
                if let Err(e) = started {
                    break Err(e);
                }
                continue;
            }
            let k = usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .min(end - r);
            if self.opcode & 0x8 == 0 {
                buf.copy_within(r..r + k, w);
                unmask(&mut buf[w..w + k], self.mask, usize::from(self.mask_at));
                w += k;
            } else {
                let from = self.control.len();
                self.control.extend_from_slice(&buf[r..r + k]);
                unmask(
                    &mut self.control[from..],
                    self.mask,
                    usize::from(self.mask_at),
                );
            }
            r += k;
            self.left -= k as u64;
            self.mask_at = ((usize::from(self.mask_at) + k) % 4) as u8;
            if self.left == 0 {
                if let Err(e) = self.end_frame(tx) {
                    break Err(e);
                }
            }
        };
        buf.truncate(w);
        result
    }
}

impl Tx {
    /// Queues a pong for `payload`: replaces a pong not yet started, or is dropped (counted)
    /// behind one being written.
    fn queue_pong(&mut self, payload: &[u8]) {
        if self.pong_only && self.ctrl_at == 0 {
            self.ctrl.clear();
        } else if !self.ctrl.is_empty() {
            let dropped = PONGS_DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
            debug!(
                pongs_dropped_total = dropped,
                "websocket ping not answered: the previous pong is still being written"
            );
            return;
        }
        self.push_control(op::PONG, payload);
        self.pong_only = true;
    }

    /// Queues a close frame with `code` (none: an empty close payload).
    fn queue_close(&mut self, code: Option<u16>, reason: &str) {
        let mut payload = Vec::with_capacity(2 + reason.len());
        if let Some(code) = code {
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
        }
        self.push_control(op::CLOSE, &payload);
        self.pong_only = false;
    }

    fn push_control(&mut self, opcode: u8, payload: &[u8]) {
        let mut hdr = [0u8; 10];
        let n = frame_header(opcode, payload.len(), &mut hdr);
        self.ctrl.extend_from_slice(&hdr[..n]);
        self.ctrl.extend_from_slice(payload);
    }

    /// Writes the rest of the current data frame's header; `WouldBlock` if some remains.
    fn flush_header(&mut self, tcp: &TcpStream) -> io::Result<()> {
        while self.hdr_at < self.hdr_len {
            let n =
                tcp.try_write(&self.hdr[usize::from(self.hdr_at)..usize::from(self.hdr_len)])?;
            self.hdr_at += n as u8;
        }
        Ok(())
    }

    /// Writes queued control frames if no data frame is in the middle of being written;
    /// stopping on a full socket is not an error.
    fn flush_control(&mut self, tcp: &TcpStream) -> io::Result<()> {
        if self.frame_left > 0 || self.hdr_at < self.hdr_len {
            return Ok(());
        }
        while self.ctrl_at < self.ctrl.len() {
            match tcp.try_write(&self.ctrl[self.ctrl_at..]) {
                Ok(n) => self.ctrl_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !self.ctrl.is_empty() {
            self.ctrl = Vec::new();
            self.ctrl_at = 0;
            self.pong_only = false;
        }
        Ok(())
    }

    fn has_output(&self) -> bool {
        self.hdr_at < self.hdr_len || self.ctrl_at < self.ctrl.len()
    }
}

impl Ws {
    fn new(tcp: TcpStream, max_len: u64, carry: Vec<u8>) -> Ws {
        Ws {
            tcp,
            rx: Rx::new(max_len, carry),
            tx: Tx::default(),
        }
    }

    /// Refuses the client's frames: queues the close frame, sends it if the socket takes it
    /// now, and returns the error that ends the stream (the session logs it, once).
    fn fail(&mut self, e: FrameError) -> io::Error {
        let code = e.close_code();
        if self.tx.ctrl_at == 0 {
            // A pong not started yet is not needed any more; one half-written must finish.
            self.tx.ctrl.clear();
        }
        self.tx.queue_close(Some(code), &e.to_string());
        let _ = self.tx.flush_control(&self.tcp);
        self.rx.closed = true;
        io::Error::new(io::ErrorKind::InvalidData, Refused { error: e, code })
    }
}

impl Transport for Ws {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send + '_ {
        // Bytes from the handshake, or a close already read, wait here, not on the socket.
        let buffered = interest.is_readable() && (!self.rx.carry.is_empty() || self.rx.closed);
        async move {
            if buffered {
                return Ok(Ready::READABLE);
            }
            self.tcp.ready(interest).await
        }
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            if self.rx.closed {
                self.tx.flush_control(&self.tcp)?;
                return Ok(0);
            }
            let start = buf.len();
            if self.rx.carry.is_empty() {
                // TCP closed without a close frame: the end of the stream, as for plain TCP.
                if self.tcp.try_read_buf(buf)? == 0 {
                    return Ok(0);
                }
            } else {
                let carry = std::mem::take(&mut self.rx.carry);
                buf.extend_from_slice(&carry);
            }
            if let Err(e) = self.rx.decode(buf, start, &mut self.tx) {
                return Err(self.fail(e));
            }
            // A pong (or the close reply) goes out now if the socket takes it.
            self.tx.flush_control(&self.tcp)?;
            let n = buf.len() - start;
            if n > 0 {
                return Ok(n);
            }
            // Only headers or control frames so far: read on (WouldBlock ends it).
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.tx.flush_header(&self.tcp)?;
        if self.tx.frame_left == 0 {
            // Between data frames: control frames first.
            self.tx.flush_control(&self.tcp)?;
            if self.tx.has_output() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // One binary frame carries everything the caller has buffered.
            let mut hdr = [0u8; 10];
            let hlen = frame_header(op::BINARY, buf.len(), &mut hdr);
            let k = self
                .tcp
                .try_write_vectored(&[IoSlice::new(&hdr[..hlen]), IoSlice::new(buf)])?;
            if k < hlen {
                // The rest of the header goes first next time; the caller's bytes stay
                // where they are (it gives the same front again), so the length holds.
                self.tx.hdr = hdr;
                self.tx.hdr_at = k as u8;
                self.tx.hdr_len = hlen as u8;
                self.tx.frame_left = buf.len();
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.tx.hdr_at = 0;
            self.tx.hdr_len = 0;
            let n = k - hlen;
            self.tx.frame_left = buf.len() - n;
            return if n == 0 {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            };
        }
        let n = self
            .tcp
            .try_write(&buf[..self.tx.frame_left.min(buf.len())])?;
        self.tx.frame_left -= n;
        Ok(n)
    }

    fn try_flush(&mut self) -> io::Result<()> {
        match self.tx.flush_header(&self.tcp) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            r => r?,
        }
        self.tx.flush_control(&self.tcp)
    }

    fn has_buffered_output(&self) -> bool {
        self.tx.has_output()
    }

    fn end(&mut self, why: Ending) {
        let (code, reason) = match why {
            Ending::Normal => (status::NORMAL, ""),
            Ending::GoingAway => (status::GOING_AWAY, "broker shutting down"),
            Ending::ProtocolError => (status::PROTOCOL_ERROR, "MQTT protocol violation"),
            Ending::PolicyViolation => (status::POLICY_VIOLATION, "refused"),
            Ending::InternalError => (status::INTERNAL_ERROR, "broker error"),
            Ending::Abort => return,
        };
        // A close already queued (the client's answered, or its frames refused) keeps its code.
        if self.rx.closed {
            return;
        }
        if self.tx.ctrl_at == 0 {
            // A pong not started yet is not needed any more; one half-written must finish.
            self.tx.ctrl.clear();
        }
        self.tx.queue_close(Some(code), reason);
        // What the client still sends is discarded from now on (see `close`).
        self.rx.closed = true;
    }

    async fn close(&mut self) {
        // Only once a close frame is queued or sent (the client's close answered, or its
        // frames refused): then the close frame goes out, then FIN, then what the client
        // still sends is read and discarded until it closes too (or CLOSE_LINGER passes).
        // Dropping a socket with unread input would send a reset, and a client could lose
        // the close frame, and its status, with it.
        if !self.rx.closed {
            return;
        }
        let linger = async {
            // Not inside a data frame: the close frame can go out.
            while self.tx.frame_left == 0 && self.tx.has_output() {
                if self.tx.flush_control(&self.tcp).is_err()
                    || (self.tx.has_output() && self.tcp.writable().await.is_err())
                {
                    return;
                }
            }
            let _ = self.tcp.shutdown().await;
            let mut scratch = [0u8; 1024];
            while let Ok(1..) = self.tcp.read(&mut scratch).await {}
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, linger).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Feeds `wire` to a decoder in pieces of `step` bytes; returns the data and the Tx.
    fn feed(wire: &[u8], step: usize, max: u64) -> (Result<Vec<u8>, FrameError>, Rx, Tx) {
        let (mut rx, mut tx) = (Rx::new(max, Vec::new()), Tx::default());
        let mut buf = BytesMut::new();
        for piece in wire.chunks(step) {
            let start = buf.len();
            buf.extend_from_slice(piece);
            if let Err(e) = rx.decode(&mut buf, start, &mut tx) {
                return (Err(e), rx, tx);
            }
        }
        (Ok(buf.to_vec()), rx, tx)
    }

    /// issue #10 item 1: binary frames carry MQTT bytes cut at any boundary: every read size,
    /// fragmented messages, pings between fragments, all three length encodings.
    #[test]
    fn data_survives_any_cut() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        let mut wire = frame(false, op::BINARY, b"hel");
        wire.extend(frame(true, op::PING, b"p"));
        wire.extend(frame(false, op::CONTINUATION, b""));
        wire.extend(frame(true, op::CONTINUATION, b"lo"));
        wire.extend(frame(true, op::BINARY, &big[..300]));
        wire.extend(frame(true, op::BINARY, &big));
        let mut want = b"hello".to_vec();
        want.extend_from_slice(&big[..300]);
        want.extend_from_slice(&big);
        for step in [1, 2, 3, 5, 13, 64, 4096, wire.len()] {
            let (got, rx, tx) = feed(&wire, step, 100_000);
            assert_eq!(got.as_deref(), Ok(&want[..]), "step {step}");
            assert!(!rx.in_message && rx.left == 0 && rx.hdr_len == 0);
            // The pong echoes the ping's payload.
            assert_eq!(tx.ctrl, [0x8a, 1, b'p']);
        }
    }

    /// issue #10 item 1: each violation has its close code (1003 text, 1002 protocol, 1009
    /// too big), detected as soon as the bytes that show it arrived.
    #[test]
    fn violations_get_their_close_codes() {
        let unmasked = vec![0x82, 0x01, 0x00];
        let cases: Vec<(Vec<u8>, FrameError, u16)> = vec![
            (frame(true, op::TEXT, b"x"), FrameError::Text, 1003),
            (unmasked, FrameError::Unmasked, 1002),
            (vec![0xc2, 0x81], FrameError::Reserved, 1002),
            (frame(true, 0x3, b""), FrameError::Opcode(3), 1002),
            (frame(false, op::PING, b""), FrameError::Control, 1002),
            (frame(true, op::PING, &[0; 126]), FrameError::Control, 1002),
            (
                frame(true, op::CONTINUATION, b"x"),
                FrameError::Continuation,
                1002,
            ),
            (
                [
                    frame(false, op::BINARY, b"a"),
                    frame(true, op::BINARY, b"b"),
                ]
                .concat(),
                FrameError::Interleaved,
                1002,
            ),
            (frame(true, op::CLOSE, b"x"), FrameError::CloseLength, 1002),
            (
                frame(true, op::BINARY, &[0; 101]),
                FrameError::FrameTooBig { len: 101, max: 100 },
                1009,
            ),
            (
                [
                    frame(false, op::BINARY, &[0; 60]),
                    frame(true, op::CONTINUATION, &[0; 60]),
                ]
                .concat(),
                FrameError::MessageTooBig { max: 100 },
                1009,
            ),
            (
                vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                FrameError::Length,
                1002,
            ),
        ];
        for (wire, want, code) in cases {
            for step in [1, wire.len()] {
                let (got, _, _) = feed(&wire, step, 100);
                assert_eq!(got, Err(want.clone()), "step {step}");
                assert_eq!(want.close_code(), code);
            }
        }
    }

    /// issue #10 item 1: a close frame is answered with the client's status code and ends the
    /// stream; what follows it is ignored; a newer ping replaces a pong not yet started.
    #[test]
    fn close_is_echoed_and_pongs_are_bounded() {
        let mut wire = frame(true, op::BINARY, b"ab");
        wire.extend(frame(true, op::CLOSE, &1000u16.to_be_bytes()));
        wire.extend(frame(true, op::BINARY, b"ignored"));
        let (got, rx, tx) = feed(&wire, 3, 100);
        assert_eq!(got.as_deref(), Ok(&b"ab"[..]));
        assert!(rx.closed);
        assert_eq!(tx.ctrl, [0x88, 2, 0x03, 0xe8]);
        let mut pings = Vec::new();
        for i in 0..50u8 {
            pings.extend(frame(true, op::PING, &[i]));
        }
        let (_, _, tx) = feed(&pings, 7, 100);
        assert_eq!(tx.ctrl, [0x8a, 1, 49]);
    }

    /// Server frame headers use the shortest length encoding (RFC 6455 5.2).
    #[test]
    fn server_headers() {
        let mut h = [0u8; 10];
        assert_eq!(frame_header(op::BINARY, 125, &mut h), 2);
        assert_eq!(h[..2], [0x82, 125]);
        assert_eq!(frame_header(op::BINARY, 126, &mut h), 4);
        assert_eq!(h[..4], [0x82, 126, 0, 126]);
        assert_eq!(frame_header(op::BINARY, 70_000, &mut h), 10);
        assert_eq!(h[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
}
