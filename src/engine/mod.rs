//! The engine contract: where positions are assigned, history is kept and events travel to the
//! hubs that deliver them. `memory` serves one process (with `durable`, its group-commit writer
//! for `--data-dir`); a Redis engine serves a cluster.
//! Like Centrifuge's broker, the memory engine loops a publish straight back into the local hub,
//! so single-node and cluster mode share one delivery path.

mod durable;
pub mod memory;
pub mod redis;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;

use crate::history::Replay;
use crate::protocol::Event;

/// An event as accepted from a publisher, before it has a position.
#[derive(Debug)]
pub struct NewEvent {
    /// Publisher's type.
    pub kind: String,
    /// Publisher's text.
    pub message: String,
    /// Publisher's payload.
    pub data: Box<RawValue>,
    /// Target streams; empty means broadcast.
    pub targets: Vec<String>,
    /// User id of a client publisher.
    pub from: Option<String>,
    /// Client id that should not receive its own publish.
    pub exclude: Option<String>,
}

/// The outcome of publishing one event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Published {
    /// The event's id.
    pub id: String,
    /// Its position.
    pub seq: u64,
    /// Connections it was queued to; `None` in cluster mode, where other nodes deliver
    /// asynchronously and cannot be counted before answering.
    pub recipients: Option<usize>,
    /// Cluster mode: nodes that received the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<usize>,
}

/// Why the engine could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The hub is shutting down or gone.
    #[error("the hub is shutting down")]
    Stopped,
    /// The backing store cannot be reached.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The durable store failed.
    #[error("storage error: {0}")]
    Storage(String),
}

/// Where publishes, history and positions live.
pub trait Engine: Send + Sync + 'static {
    /// The current history epoch.
    fn epoch(&self) -> String;

    /// The newest seq assigned so far (best effort for clustered engines).
    fn current_seq(&self) -> u64;

    /// Assigns positions, stores history and delivers a batch, in order. With an idempotency key,
    /// a repeat within the window returns the first result and delivers nothing.
    fn publish(
        &self,
        batch: Vec<NewEvent>,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<Published>, EngineError>>;

    /// Events after `since` in `streams` (see [`crate::history::History::replay`]). The hub
    /// already routes live events of these streams to the asking connection when it calls this.
    fn replay(&self, streams: Vec<String>, since: Option<u64>) -> BoxFuture<'_, Result<Replay, EngineError>>;

    /// One page of a stream's history.
    fn history(&self, stream: String, since: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>>;

    /// The most recent events across streams, newest first.
    fn recent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>>;

    /// Finds a kept event by id.
    fn find(&self, id: String) -> BoxFuture<'_, Result<Option<Arc<Event>>, EngineError>>;

    /// Records delivery receipts from a connection of `user` (or an anonymous one).
    fn ack(&self, ids: Vec<String>, user: Option<String>) -> BoxFuture<'_, ()>;

    /// The receipt of a kept event: `{"written","acked","acked_users"}`.
    fn receipt(&self, event: Arc<Event>) -> BoxFuture<'_, serde_json::Value>;

    /// True when live delivery of a newly opened stream starts only after a confirmation
    /// (the hub then waits for [`Engine::replay`] before telling the client it is connected).
    fn confirms_subscriptions(&self) -> bool {
        false
    }

    /// Called by the hub when a stream gains its first local subscriber.
    fn stream_opened(&self, _stream: &str) {}

    /// Called by the hub when a stream loses its last local subscriber.
    fn stream_closed(&self, _stream: &str) {}

    /// Cluster mode: users per stream across all live nodes (`None` for a single node).
    fn cluster_presence(&self, _stream: String) -> BoxFuture<'_, Option<crate::hub::PresenceSnapshot>> {
        Box::pin(async { None })
    }

    /// Cluster mode: the latest heartbeat of every live node (empty for a single node).
    fn cluster_nodes(&self) -> BoxFuture<'_, Vec<serde_json::Value>> {
        Box::pin(async { Vec::new() })
    }

    /// Bytes of history held in this process.
    fn history_bytes(&self) -> usize;

    /// Short description of the engine's state for `/health`.
    fn health(&self) -> EngineHealth;

    /// Called once at shutdown, after the last publish: finishes pending writes and closes
    /// storage.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Engine state for `/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineHealth {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// False when publishes would fail.
    pub ok: bool,
    /// Details for operators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
