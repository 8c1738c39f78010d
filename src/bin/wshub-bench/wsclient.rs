//! A minimal, allocation-light WebSocket client for the load generator: HTTP/1.1 upgrade,
//! unmasked server frames parsed in place, pings answered. The generator must be cheaper per
//! message than the hub it measures, so it avoids a general-purpose WebSocket stack.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens a TCP connection to `addr` from source address `src` (port chosen by the kernel).
pub async fn tcp_connect(addr: SocketAddr, src: Option<Ipv4Addr>) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4().context("socket")?;
    socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
    if let Some(ip) = src {
        socket.bind(SocketAddr::from((ip, 0))).with_context(|| format!("bind {ip}"))?;
    }
    let stream = socket.connect(addr).await.context("connect")?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    Ok(stream)
}

/// Performs the WebSocket upgrade on `stream` for `path_and_query`; returns the bytes that
/// followed the `101` response (the start of the frame stream).
pub async fn upgrade(stream: &mut TcpStream, host: &str, path_and_query: &str) -> Result<Vec<u8>> {
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: d3NodWItYmVuY2gta2V5MQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.context("write upgrade")?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.context("read upgrade response")?;
        if n == 0 {
            bail!("connection closed during upgrade");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let status_line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
            let status = String::from_utf8_lossy(status_line);
            if !status.contains(" 101") {
                bail!("upgrade refused: {}", status.trim());
            }
            return Ok(buf.split_off(end + 4));
        }
        if buf.len() > 16 * 1024 {
            bail!("upgrade response headers too large");
        }
    }
}

/// Connects and upgrades with a timeout; returns the stream and any bytes already read.
pub async fn connect_ws(
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
    path_and_query: &str,
    timeout: Duration,
) -> Result<(TcpStream, Vec<u8>)> {
    let fut = async {
        let mut stream = tcp_connect(addr, src).await?;
        let rest = upgrade(&mut stream, &addr.to_string(), path_and_query).await?;
        Ok::<_, anyhow::Error>((stream, rest))
    };
    tokio::time::timeout(timeout, fut).await.context("connect timed out")?
}

/// One complete frame found in a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (1 text, 2 binary, 0 continuation, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// Payload position in the buffer (already unmasked).
    pub payload: std::ops::Range<usize>,
    /// Bytes the whole frame occupies.
    pub len: usize,
}

/// Parses the frame at the start of `buf`; `None` when it is not complete yet. Masked frames
/// (which a server must not send) are unmasked in place.
pub fn parse_frame(buf: &mut [u8]) -> Result<Option<Frame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if len > 64 * 1024 * 1024 {
        bail!("frame too large ({len} bytes)");
    }
    let mut key = [0u8; 4];
    if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        key.copy_from_slice(&buf[pos..pos + 4]);
        pos += 4;
    }
    let end = pos + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    if masked {
        for (i, b) in buf[pos..end].iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok(Some(Frame { fin, opcode, payload: pos..end, len: end }))
}

/// Encodes a client frame (FIN set, masked with a zero key, which leaves the payload readable).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Encodes an unmasked server text frame (what the kernel-floor probe writes).
pub fn server_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// What a text message is, for the benchmark.
#[derive(Debug, PartialEq, Eq)]
pub enum Classified {
    /// A `hub:*` control frame; `true` for `hub:connected`.
    Control(bool),
    /// An event whose data carries the send time `t` (ns since the run's epoch).
    Timed(u64),
    /// Any other event.
    Other,
}

/// Classifies one JSON text message without a full parse.
pub fn classify(msg: &[u8]) -> Classified {
    if let Some(i) = memchr::memmem::find(msg, b"\"type\":\"hub:") {
        return Classified::Control(msg[i + 12..].starts_with(b"connected\""));
    }
    match memchr::memmem::find(msg, b"\"t\":") {
        Some(i) => match parse_number(&msg[i + 4..]) {
            Some(t) => Classified::Timed(t),
            None => Classified::Other,
        },
        None => Classified::Other,
    }
}

/// Parses a JSON number (integer, or float as Go may re-encode it) at the start of `s`.
fn parse_number(s: &[u8]) -> Option<u64> {
    let s = s.trim_ascii_start();
    let end = s
        .iter()
        .position(|b| !(b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')))
        .unwrap_or(s.len());
    let text = std::str::from_utf8(&s[..end]).ok()?;
    if let Ok(v) = text.parse::<u64>() {
        return Some(v);
    }
    text.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_and_classifies() {
        let payload = br#"{"id":"1","type":"bench","data":{"i":3,"t":12345},"channel":"broadcast"}"#;
        let mut buf = server_text_frame(payload);
        buf.extend_from_slice(&server_text_frame(br#"{"type":"hub:connected","seq":0}"#));
        let f = parse_frame(&mut buf).expect("ok").expect("complete");
        assert_eq!(f.opcode, 1);
        assert_eq!(classify(&buf[f.payload.clone()]), Classified::Timed(12345));
        let mut rest = buf.split_off(f.len);
        let g = parse_frame(&mut rest).expect("ok").expect("complete");
        assert_eq!(classify(&rest[g.payload]), Classified::Control(true));
        assert_eq!(classify(br#"{"data":{"t": 1.5e3}}"#), Classified::Timed(1500));
        assert_eq!(parse_frame(&mut [0x81, 126, 1]).expect("ok"), None);
    }
}
