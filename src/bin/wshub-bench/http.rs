//! A keep-alive HTTP/1.1 client connection (hyper) for `POST /notify` and `GET /stats`.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One keep-alive connection to the hub.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl HttpConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender, host: addr.to_string() })
    }

    /// Sends one request and reads the whole response: (status, body).
    pub async fn request(&mut self, method: Method, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        self.sender.ready().await.context("connection not ready")?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .context("building request")?;
        let resp = self.sender.send_request(req).await.context("sending request")?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.context("reading response")?.to_bytes();
        Ok((status, body))
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&mut self, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        self.request(Method::POST, path, body).await
    }
}

/// Asks `GET /stats` for the hub's client count (`clients` or `connections`), if it has one.
pub async fn hub_client_count(addr: SocketAddr) -> Option<u64> {
    let mut conn = HttpConn::connect(addr).await.ok()?;
    let (status, body) = conn.request(Method::GET, "/stats", Bytes::new()).await.ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    ["clients", "connections", "connected"].iter().find_map(|k| v.get(k).and_then(|x| x.as_u64()))
}
