//! A client connection's transport (plain TCP or TLS) with its read and write buffers.
//! L3: the transport and the codec. Invariants: reads are cancel-safe (bytes land in `rbuf`,
//! which outlives any cancelled future); `wbuf` batches every packet produced by one turn of the
//! session loop into one write; idle connections hold no buffer memory.

use std::io;

use bytes::BytesMut;
use tokio::io::Interest;

use crate::error::ProtocolError;
use crate::protocol::codec::{decode, frame, Packet};
use crate::transport::Transport;

/// Bytes reserved for each read when the buffer is empty.
const READ_CHUNK: usize = 4096;
/// Bytes read per turn of the session loop before it handles them and lets other tasks run:
/// keeps one flooding publisher from filling every subscriber queue in a single turn.
const READ_BUDGET: usize = 64 * 1024;
/// Above this many pending output bytes the session stops producing (backpressure).
pub(crate) const WRITE_HIGH_WATER: usize = 64 * 1024;

/// How a non-blocking read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// The socket has nothing more right now.
    Drained,
    /// The per-turn budget is used up and more is probably waiting.
    Budget,
    /// The peer closed its side.
    Eof,
}

/// Why reading the next packet failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    Protocol(ProtocolError),
    Io(io::Error),
}

/// The transport plus its buffers.
pub(crate) struct Io<T> {
    pub(crate) transport: T,
    rbuf: BytesMut,
    pub(crate) wbuf: BytesMut,
    /// At most `PROTOCOL_MAX_PACKET_SIZE`; a u32 so that `drained` adds nothing to the size.
    max_packet_size: u32,
    /// The last read met `WouldBlock`: nothing more arrives before the next readiness event, so
    /// an empty read buffer can be given back (an idle connection holds none).
    drained: bool,
}

impl<T: Transport> Io<T> {
    pub(crate) fn new(transport: T, max_packet_size: usize) -> Io<T> {
        Io {
            transport,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            max_packet_size: u32::try_from(max_packet_size).unwrap_or(u32::MAX),
            drained: false,
        }
    }

    /// Decodes the next complete packet already buffered, if any.
    pub(crate) fn next_buffered(&mut self) -> Result<Option<Packet>, ProtocolError> {
        if self.rbuf.is_empty() {
            return Ok(None);
        }
        let p = decode(&mut self.rbuf, self.max_packet_size as usize);
        if self.rbuf.is_empty() && self.drained {
            // Release the buffer: an idle connection should cost as little as possible. (Not
            // before the socket is drained: the next read would allocate it again.)
            self.rbuf = BytesMut::new();
        }
        p
    }

    /// Reads until one packet is complete (used before CONNECT is accepted). `Ok(None)` is a
    /// clean EOF between packets; EOF inside a packet is an error.
    pub(crate) async fn read_packet(&mut self) -> Result<Option<Packet>, ReadError> {
        loop {
            if let Some(p) = self.next_buffered().map_err(ReadError::Protocol)? {
                return Ok(Some(p));
            }
            self.transport
                .ready(Interest::READABLE)
                .await
                .map_err(ReadError::Io)?;
            if self.try_fill().map_err(ReadError::Io)? == Fill::Eof {
                // What arrived before the end may still hold whole packets.
                if let Some(p) = self.next_buffered().map_err(ReadError::Protocol)? {
                    return Ok(Some(p));
                }
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }

    /// Reads what the socket has without waiting, up to the per-turn budget.
    pub(crate) fn try_fill(&mut self) -> io::Result<Fill> {
        loop {
            self.rbuf.reserve(READ_CHUNK);
            match self.transport.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    self.drained = false;
                    // A full chunk suggests more is waiting; keep reading up to the budget
                    // (a bigger packet completes over several turns).
                    if n < READ_CHUNK {
                        return Ok(Fill::Drained);
                    }
                    if self.rbuf.len() >= READ_BUDGET {
                        return Ok(Fill::Budget);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Drained (often a wake-up left over from a short read, which does not
                    // clear readiness): an idle connection keeps no read buffer.
                    self.drained = true;
                    if self.rbuf.is_empty() {
                        self.rbuf = BytesMut::new();
                    }
                    return Ok(Fill::Drained);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes as much of `wbuf` as the transport takes now, without waiting.
    pub(crate) fn try_flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.transport.try_write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.wbuf.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.transport.try_flush()?;
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Writes all of `wbuf`, waiting as needed (used for CONNACK and the final flush).
    pub(crate) async fn flush_all(&mut self) -> io::Result<()> {
        loop {
            self.try_flush()?;
            if !self.has_output() {
                return Ok(());
            }
            self.transport.ready(Interest::WRITABLE).await?;
        }
    }

    /// Bytes read and not yet decoded.
    pub(crate) fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// Bytes of packets not yet taken by the transport (the backpressure measure).
    pub(crate) fn pending_output(&self) -> usize {
        self.wbuf.len()
    }

    /// Whether anything still has to go out: packets, or bytes the transport holds (TLS).
    pub(crate) fn has_output(&self) -> bool {
        !self.wbuf.is_empty() || self.transport.has_buffered_output()
    }
}

impl<T> Io<T> {
    /// Whether part of a packet is buffered (EOF now would cut a packet).
    pub(crate) fn has_partial_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Whether `next_buffered` would do something now: a whole packet is buffered, or what is
    /// buffered is already refused. Reads the fixed header only.
    pub(crate) fn has_complete_packet(&self) -> bool {
        !self.rbuf.is_empty()
            && !matches!(frame(&self.rbuf, self.max_packet_size as usize), Ok(None))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use tokio::io::Ready;

    use super::*;

    /// A transport that, like TLS, takes bytes into its own buffer (8 at a time) and puts them
    /// on its "socket" only as `ready` makes room (16 bytes per call). Reads return at most
    /// `read_chunk` bytes of `reads`, then the end of the stream if `eof`, else `WouldBlock`.
    #[derive(Default)]
    struct Buffering {
        held: Vec<u8>,
        sent: Vec<u8>,
        room: AtomicUsize,
        reads: Mutex<Vec<u8>>,
        read_chunk: usize,
        eof: bool,
    }

    impl Transport for Buffering {
        fn ready(&self, _: Interest) -> impl Future<Output = io::Result<Ready>> + Send + '_ {
            self.room.fetch_add(16, Ordering::Relaxed);
            std::future::ready(Ok(Ready::READABLE | Ready::WRITABLE))
        }

        fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
            let mut reads = self.reads.lock().unwrap();
            if reads.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = reads.len().min(self.read_chunk);
            buf.extend_from_slice(&reads[..n]);
            reads.drain(..n);
            Ok(n)
        }

        fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.try_flush()?;
            if self.held.len() >= 8 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(8);
            self.held.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn try_flush(&mut self) -> io::Result<()> {
            let n = self.held.len().min(self.room.swap(0, Ordering::Relaxed));
            self.sent.extend(self.held.drain(..n));
            Ok(())
        }

        fn has_buffered_output(&self) -> bool {
            !self.held.is_empty()
        }
    }

    /// issue #9 item 3: bytes a transport still holds count as output (the session loop then
    /// waits for writability, not only for input), and `flush_all` ends only once they are out,
    /// in order.
    #[tokio::test]
    async fn output_held_by_the_transport_is_flushed() {
        let mut io = Io::new(Buffering::default(), 1024);
        let data: Vec<u8> = (0..100u8).collect();
        io.wbuf.extend_from_slice(&data);
        io.try_flush().unwrap();
        assert!(io.has_output());
        io.flush_all().await.unwrap();
        assert!(!io.has_output());
        assert_eq!(io.pending_output(), 0);
        assert_eq!(io.transport.sent, data);
        // Everything is in the transport's buffer, none in ours: still output.
        io.wbuf.extend_from_slice(&[1, 2, 3]);
        io.try_flush().unwrap();
        assert_eq!(io.pending_output(), 0);
        assert!(io.has_output());
    }

    /// issue #9 item 3: the CONNECT phase reads through any transport: a packet split over
    /// reads, then a clean end of the stream.
    #[tokio::test]
    async fn packets_split_over_reads_then_the_end() {
        let t = Buffering {
            read_chunk: 3,
            eof: true,
            ..Buffering::default()
        };
        *t.reads.lock().unwrap() = vec![0xc0, 0x00, 0xc0, 0x00];
        let mut io = Io::new(t, 1024);
        assert!(matches!(io.read_packet().await, Ok(Some(Packet::PingReq))));
        assert!(matches!(io.read_packet().await, Ok(Some(Packet::PingReq))));
        assert!(matches!(io.read_packet().await, Ok(None)));
    }

    /// issue #9 item 3: packets read in the same fill that met the end of the stream are still
    /// handed out, in order, before the end is reported.
    #[tokio::test]
    async fn packets_read_together_with_the_end_are_not_lost() {
        let t = Buffering {
            read_chunk: READ_CHUNK,
            eof: true,
            ..Buffering::default()
        };
        // A full chunk (so the fill reads again and meets the end) of PINGREQs.
        *t.reads.lock().unwrap() = [0xc0, 0x00].repeat(READ_CHUNK / 2);
        let mut io = Io::new(t, 1024);
        for i in 0..READ_CHUNK / 2 {
            let p = io.read_packet().await;
            assert!(matches!(p, Ok(Some(Packet::PingReq))), "packet {i}: {p:?}");
        }
        assert!(matches!(io.read_packet().await, Ok(None)));
    }

    /// issue #9 item 3 (idle footprint): a wake-up that finds no data (readiness left over
    /// from a read that emptied the socket) leaves no read buffer behind.
    #[test]
    fn a_wake_up_without_data_keeps_no_read_buffer() {
        let t = Buffering {
            read_chunk: 64,
            ..Buffering::default()
        };
        *t.reads.lock().unwrap() = vec![0xc0, 0x00];
        let mut io = Io::new(t, 1024);
        assert_eq!(io.try_fill().unwrap(), Fill::Drained);
        assert!(matches!(io.next_buffered(), Ok(Some(Packet::PingReq))));
        // The socket may hold more (the read was short, readiness stays set): kept for now.
        assert_eq!(io.try_fill().unwrap(), Fill::Drained);
        assert_eq!(
            io.rbuf.capacity(),
            0,
            "given back by the read that found nothing"
        );
        // Data, then the end of what is available, in one fill: given back once consumed.
        io.transport.read_chunk = READ_CHUNK;
        *io.transport.reads.lock().unwrap() = [0xc0, 0x00].repeat(READ_CHUNK / 2);
        assert_eq!(io.try_fill().unwrap(), Fill::Drained);
        for _ in 0..READ_CHUNK / 2 {
            assert!(matches!(io.next_buffered(), Ok(Some(Packet::PingReq))));
        }
        assert_eq!(
            io.rbuf.capacity(),
            0,
            "given back once consumed after a drained read"
        );
    }
}
