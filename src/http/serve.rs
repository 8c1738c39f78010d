//! The accept loop: HTTP/1.1 connections with a header-read timeout and connection limits.
//!
//! `axum::serve` sets no timer, so a socket that never sends a request head (or sits idle between
//! requests) stays open for ever, and it counts no connections. Here every accepted socket first
//! takes a place in [`ConnLimits`] (else it gets a 503 and is closed), keeps that place for its
//! whole life (the WebSocket that the upgrade makes of it included), and hyper closes it when a
//! request head is not complete within `--header-read-timeout` of the connection's start or of
//! the previous response.
//!
//! Closing is lingering, as in nginx and Apache: when a socket is dropped (after a WebSocket close
//! frame, or an HTTP answer sent before the request body was read), its write side is shut down
//! and what the peer still sends is read and dropped for up to [`LINGER`]. Closing with unread
//! bytes would make the kernel send a reset, which can destroy the close frame (1009, 1002, ...)
//! before the client has read it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::limits::{ConnLimits, ConnSlot, Refused};
use crate::metrics::Metrics;

/// Time a refused socket is given to read its 503 before it is closed.
const REFUSE_WAIT: Duration = Duration::from_millis(500);
/// Longest time a closing socket keeps reading what the peer still sends.
pub const LINGER: Duration = Duration::from_secs(2);
/// Pause after an accept error such as "too many open files", so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the accept loop needs besides the router.
pub struct ServeOptions {
    /// `--header-read-timeout`.
    pub header_read_timeout: Duration,
    /// The connection counters.
    pub limits: Arc<ConnLimits>,
    /// Where refusals and timeouts are counted.
    pub metrics: Arc<Metrics>,
}

/// Serves `router` on `listener` until `stop` is cancelled, then lets requests in flight finish
/// (upgraded WebSockets are the hub's to close) and returns.
pub async fn serve(listener: TcpListener, router: Router, options: ServeOptions, stop: CancellationToken) {
    let tasks = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Events are small frames that must leave at once: no Nagle delay.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match options.limits.try_acquire(remote.ip()) {
            Ok(slot) => {
                let conn = serve_connection(stream, slot, remote, router.clone(), &options, stop.clone());
                tasks.spawn(conn);
            }
            Err(refused) => {
                options.metrics.connections_refused.with_label_values(&[refused.label()]).inc();
                tracing::debug!(peer = %remote, reason = refused.label(), "connection refused");
                tasks.spawn(refuse(stream, refused));
            }
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// Serves one HTTP/1.1 connection (with upgrades) until it ends or `stop` asks it to finish.
fn serve_connection(
    stream: TcpStream,
    slot: ConnSlot,
    remote: SocketAddr,
    router: Router,
    options: &ServeOptions,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let metrics = Arc::clone(&options.metrics);
    let io = TokioIo::new(Counted::new(stream, slot));
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        router.clone().call(request)
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(options.header_read_timeout);
    let conn = builder.serve_connection(io, service).with_upgrades();
    async move {
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                metrics.connections_refused.with_label_values(&["header_read_timeout"]).inc();
                tracing::debug!(peer = %remote, "closed: no complete request head within --header-read-timeout");
            } else {
                tracing::debug!(peer = %remote, error = %e, "HTTP connection error");
            }
        }
    }
}

/// Answers a socket over a connection limit with a 503, then closes it. Its request is read and
/// dropped for a moment, so that closing with unread bytes does not reset the connection before
/// the client has read the answer.
async fn refuse(mut stream: TcpStream, refused: Refused) {
    let body = json!({ "error": refused.to_string() }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSE_WAIT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// A socket that holds its connection's place in [`ConnLimits`] until it is dropped, then closes
/// with [`linger`]. The stream is an `Option` only so that `Drop` can move it into that task.
struct Counted {
    stream: Option<TcpStream>,
    _slot: ConnSlot,
}

impl Counted {
    fn new(stream: TcpStream, slot: ConnSlot) -> Self {
        Self { stream: Some(stream), _slot: slot }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.stream.as_mut() {
            Some(stream) => Ok(Pin::new(stream)),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let (Some(stream), Ok(runtime)) = (self.stream.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(linger(stream));
        }
    }
}

/// Shuts the write side (everything written so far, the close frame included, is delivered
/// before the FIN), then reads and drops what the peer sends until it closes or [`LINGER`] passes.
async fn linger(mut stream: TcpStream) {
    let _ = tokio::time::timeout(LINGER, async {
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(TcpStream::is_write_vectored)
    }
}
