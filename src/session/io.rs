//! A client connection's socket with its read and write buffers.
//! L3: tokio::net and the codec. Invariants: reads are cancel-safe (bytes land in `rbuf`, which
//! outlives any cancelled future); `wbuf` batches every packet produced by one turn of the
//! session loop into one write; idle connections hold no buffer memory.

use std::io;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::error::ProtocolError;
use crate::protocol::codec::{decode, frame, Packet};

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

/// The socket plus its buffers.
pub(crate) struct Io {
    pub(crate) stream: TcpStream,
    rbuf: BytesMut,
    pub(crate) wbuf: BytesMut,
    max_packet_size: usize,
}

impl Io {
    pub(crate) fn new(stream: TcpStream, max_packet_size: usize) -> Io {
        Io {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            max_packet_size,
        }
    }

    /// Decodes the next complete packet already buffered, if any.
    pub(crate) fn next_buffered(&mut self) -> Result<Option<Packet>, ProtocolError> {
        if self.rbuf.is_empty() {
            return Ok(None);
        }
        let p = decode(&mut self.rbuf, self.max_packet_size);
        if self.rbuf.is_empty() {
            // Release the buffer: an idle connection should cost as little as possible.
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
            self.rbuf.reserve(READ_CHUNK);
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
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
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    // A full chunk suggests more is waiting; keep reading up to the budget
                    // (a bigger packet completes over several turns).
                    if n < READ_CHUNK {
                        return Ok(Fill::Drained);
                    }
                    if self.rbuf.len() >= READ_BUDGET {
                        return Ok(Fill::Budget);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes as much of `wbuf` as the socket takes now, without waiting.
    pub(crate) fn try_flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.wbuf.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Writes all of `wbuf`, waiting as needed (used for CONNACK and the final flush).
    pub(crate) async fn flush_all(&mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let buf = std::mem::take(&mut self.wbuf);
        self.stream.write_all(&buf).await
    }

    pub(crate) fn pending_output(&self) -> usize {
        self.wbuf.len()
    }
}

impl Io {
    /// Whether part of a packet is buffered (EOF now would cut a packet).
    pub(crate) fn has_partial_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Whether `next_buffered` would do something now: a whole packet is buffered, or what is
    /// buffered is already refused. Reads the fixed header only.
    pub(crate) fn has_complete_packet(&self) -> bool {
        !self.rbuf.is_empty() && !matches!(frame(&self.rbuf, self.max_packet_size), Ok(None))
    }
}
