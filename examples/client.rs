//! A minimal Rust client: connects to a hub, optionally subscribes to channels, and prints every
//! notification it receives.
//!
//! ```text
//! cargo run --example client -- ws://127.0.0.1:8080/ws news service:12
//! WSHUB_TOKEN=<jwt> cargo run --example client -- ws://127.0.0.1:8080/ws
//! ```

use std::io::Write;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/ws".to_string());
    if let Ok(token) = std::env::var("WSHUB_TOKEN") {
        url = format!("{url}?token={token}");
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    for channel in args {
        ws.send(Message::Text(json!({"type": "subscribe", "channel": channel}).to_string().into())).await?;
    }
    while let Some(message) = ws.next().await {
        match message? {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text)?;
                match frame["type"].as_str().unwrap_or_default() {
                    kind if kind.starts_with("hub:") => eprintln!("control: {frame}"),
                    kind => writeln!(
                        std::io::stdout(),
                        "[{}] {kind}: {} {}",
                        frame["channel"],
                        frame["message"],
                        frame["data"]
                    )?,
                }
            }
            Message::Close(frame) => {
                eprintln!("closed: {frame:?}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
