//! Connection plumbing on tokio TCP: connect + CONNACK, SUBSCRIBE + SUBACK,
//! a chunked packet reader, and bounded-time writes.

use crate::codec::{self, Packet};
use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, timeout_at, Instant};

/// Reads large chunks and parses every complete packet in them.
pub struct Reader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    chunk: usize,
}

impl Reader {
    pub fn new(rd: OwnedReadHalf, chunk: usize) -> Self {
        Self {
            rd,
            buf: BytesMut::with_capacity(chunk),
            chunk,
        }
    }

    /// Read more bytes, waiting at most until `deadline`.
    /// `Ok(None)` on timeout; an error on EOF or I/O failure.
    pub async fn fill_until(&mut self, deadline: Instant) -> Result<Option<usize>> {
        if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
            self.buf.reserve(self.chunk);
        }
        match timeout_at(deadline, self.rd.read_buf(&mut self.buf)).await {
            Err(_) => Ok(None),
            Ok(Ok(0)) => bail!("connection closed by broker"),
            Ok(Ok(n)) => Ok(Some(n)),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Parse and hand every complete buffered packet to `f`; keeps any
    /// partial packet for the next read. Returns the number parsed.
    pub fn drain(&mut self, mut f: impl FnMut(Packet<'_>) -> Result<()>) -> Result<usize> {
        let mut off = 0;
        let mut n = 0;
        let data = &self.buf[..];
        while let Some((pkt, used)) = codec::parse(&data[off..])? {
            f(pkt)?;
            off += used;
            n += 1;
        }
        self.buf.advance(off);
        Ok(n)
    }

    /// Read until `f` returns `Some`, or fail at `deadline`.
    pub async fn wait_for<T>(
        &mut self,
        deadline: Instant,
        what: &str,
        mut f: impl FnMut(Packet<'_>) -> Result<Option<T>>,
    ) -> Result<T> {
        loop {
            let mut found = None;
            self.drain(|p| {
                if found.is_none() {
                    found = f(p)?;
                }
                Ok(())
            })?;
            if let Some(v) = found {
                return Ok(v);
            }
            if self.fill_until(deadline).await?.is_none() {
                bail!("timed out waiting for {what}");
            }
        }
    }
}

/// Write all of `buf` within `limit`.
pub async fn write_all(wr: &mut OwnedWriteHalf, buf: &[u8], limit: Duration) -> Result<()> {
    timeout(limit, wr.write_all(buf))
        .await
        .map_err(|_| anyhow!("write timed out after {limit:?}"))??;
    Ok(())
}

/// Open a TCP connection (optionally from a given source address).
pub async fn tcp(addr: SocketAddr, bind: Option<IpAddr>, limit: Duration) -> Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}:0"))?;
    }
    let stream = timeout(limit, sock.connect(addr))
        .await
        .map_err(|_| anyhow!("TCP connect to {addr} timed out"))?
        .with_context(|| format!("TCP connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Check a CONNACK packet.
pub fn connack_ok(p: Packet<'_>) -> Result<Option<()>> {
    match p {
        Packet::Connack { code: 0, .. } => Ok(Some(())),
        Packet::Connack { code, .. } => bail!("CONNACK refused, return code {code}"),
        other => bail!("expected CONNACK, got {other:?}"),
    }
}

/// TCP connect + MQTT CONNECT/CONNACK with a clean session. Returns the reader and writer.
pub async fn mqtt_connect(
    addr: SocketAddr,
    client_id: &str,
    keep_alive: u16,
    chunk: usize,
    limit: Duration,
) -> Result<(Reader, OwnedWriteHalf)> {
    mqtt_connect_session(addr, client_id, keep_alive, chunk, limit, true).await
}

/// Like `mqtt_connect`, choosing the CleanSession flag (false = a persistent session, which a
/// broker with persistence keeps on disk).
pub async fn mqtt_connect_session(
    addr: SocketAddr,
    client_id: &str,
    keep_alive: u16,
    chunk: usize,
    limit: Duration,
    clean: bool,
) -> Result<(Reader, OwnedWriteHalf)> {
    let deadline = Instant::now() + limit;
    let stream = tcp(addr, None, limit).await?;
    let (rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::new();
    codec::connect(&mut buf, client_id, keep_alive, clean);
    write_all(&mut wr, &buf, limit).await?;
    let mut rd = Reader::new(rd, chunk);
    rd.wait_for(deadline, "CONNACK", connack_ok)
        .await
        .with_context(|| format!("client {client_id}"))?;
    Ok((rd, wr))
}

/// SUBSCRIBE to one filter and wait for its SUBACK; returns the granted QoS.
pub async fn subscribe(
    rd: &mut Reader,
    wr: &mut OwnedWriteHalf,
    filter: &str,
    qos: u8,
    limit: Duration,
) -> Result<u8> {
    let mut buf = BytesMut::new();
    codec::subscribe(&mut buf, 1, &[(filter, qos)]);
    write_all(wr, &buf, limit).await?;
    let code = rd
        .wait_for(Instant::now() + limit, "SUBACK", |p| match p {
            Packet::Suback { pid: 1, codes: [c] } => Ok(Some(*c)),
            other => bail!("expected SUBACK for pid 1 with one code, got {other:?}"),
        })
        .await?;
    if code == 0x80 {
        bail!("SUBSCRIBE {filter} rejected by broker (0x80)");
    }
    if code > 2 {
        bail!("invalid SUBACK return code {code:#x}");
    }
    Ok(code)
}

/// Send DISCONNECT and close the write side, best effort.
pub async fn disconnect(wr: &mut OwnedWriteHalf) {
    let mut buf = BytesMut::new();
    codec::disconnect(&mut buf);
    let _ = write_all(wr, &buf, Duration::from_secs(2)).await;
    let _ = timeout(Duration::from_secs(2), wr.shutdown()).await;
}
