//! The node's one pub/sub connection: (re)connects with backoff, (re)subscribes the streams its
//! clients need, catches up after an outage, and forwards every message to the engine, in order.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, oneshot};

use super::{COMMAND_TIMEOUT, RedisEngine};
use crate::hub::HubHandle;
use crate::protocol::BROADCAST;

/// Requests to the subscription manager, processed in order.
pub(super) enum SubRequest {
    Open(String),
    Close(String),
    /// Replies once every earlier request is confirmed by Redis (false while disconnected).
    Sync(oneshot::Sender<bool>),
}

/// Owns the pub/sub connection: (re)connects, (re)subscribes everything local clients need,
/// catches up on events missed while it was away, and forwards messages to the hub. Requests are
/// handled in order, so `Sync` confirms every earlier `Open`.
pub(super) async fn subscription_manager(
    client: redis::Client,
    hub: HubHandle,
    engine: Weak<RedisEngine>,
    mut requests: mpsc::UnboundedReceiver<SubRequest>,
    linked: Arc<AtomicBool>,
) {
    let mut interest: HashSet<String> = HashSet::from([BROADCAST.to_string()]);
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut connected = connect_pubsub(&client, &interest).await;
        if connected.is_some() {
            let Some(engine) = engine.upgrade() else { return };
            if !engine.catch_up(&interest, &hub).await {
                connected = None;
            }
        }
        let Some((mut sink, mut stream)) = connected else {
            linked.store(false, Ordering::Release);
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    request = requests.recv() => match request {
                        None => return,
                        Some(request) => note_offline(&mut interest, request),
                    },
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        backoff = MIN_BACKOFF;
        linked.store(true, Ordering::Release);
        tracing::info!(streams = interest.len(), "redis pub/sub connected");
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => {
                        if let (Ok(payload), Some(engine)) = (message.get_payload::<String>(), engine.upgrade()) {
                            engine.on_message(&payload, &hub);
                        }
                    }
                    None => break,
                },
                request = requests.recv() => match request {
                    None => return,
                    Some(SubRequest::Open(s)) => {
                        if interest.insert(s.clone()) && sink.subscribe(channel_key(&s)).await.is_err() {
                            break;
                        }
                    }
                    Some(SubRequest::Close(s)) => {
                        if s != BROADCAST && interest.remove(&s) && sink.unsubscribe(channel_key(&s)).await.is_err() {
                            break;
                        }
                    }
                    Some(SubRequest::Sync(reply)) => {
                        let _ = reply.send(true);
                    }
                },
            }
        }
        linked.store(false, Ordering::Release);
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

fn channel_key(stream: &str) -> String {
    format!("wshub:c:{stream}")
}

async fn connect_pubsub(
    client: &redis::Client,
    interest: &HashSet<String>,
) -> Option<(PubSubSink, redis::aio::PubSubStream)> {
    let pubsub = match tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "redis pub/sub connect failed");
            return None;
        }
        Err(_) => return None,
    };
    let (mut sink, stream) = pubsub.split();
    let channels: Vec<String> = interest.iter().map(|s| channel_key(s)).collect();
    match sink.subscribe(&channels).await {
        Ok(()) => Some((sink, stream)),
        Err(e) => {
            tracing::warn!(error = %e, "redis subscribe failed");
            None
        }
    }
}

/// While disconnected, requests only change what to subscribe on reconnect.
fn note_offline(interest: &mut HashSet<String>, request: SubRequest) {
    match request {
        SubRequest::Open(s) => {
            interest.insert(s);
        }
        SubRequest::Close(s) => {
            if s != BROADCAST {
                interest.remove(&s);
            }
        }
        SubRequest::Sync(reply) => {
            let _ = reply.send(false);
        }
    }
}
