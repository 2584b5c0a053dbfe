//! Plain TCP: the socket's own readiness, reads and writes, with nothing in between.
//! L1: tokio only. Invariant: `Tcp` is exactly a `TcpStream` (same size, no buffer), so the plain
//! listener's connections cost what they cost before transports existed.

use std::future::Future;
use std::io;

use bytes::BytesMut;
use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;

use super::Transport;

/// A plain TCP connection.
pub(crate) struct Tcp(pub(crate) TcpStream);

impl Transport for Tcp {
    #[inline]
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send + '_ {
        self.0.ready(interest)
    }

    #[inline]
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        self.0.try_read_buf(buf)
    }

    #[inline]
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    #[inline]
    fn try_flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    #[inline]
    fn has_buffered_output(&self) -> bool {
        false
    }
}
