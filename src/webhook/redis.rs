//! Cluster mode for webhooks, on a Redis connection of its own (apart from the engine's):
//! presence as per-node counts plus a lease each node renews, so the `user.offline` hooks a
//! crashed node owed are sent by a surviving node, exactly once; and each node's owed hooks in
//! Redis, adopted by a surviving node when their node's lease expires. Every step is one call of
//! `redis.lua`, atomic in Redis, so two nodes can never both announce the same change.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Value};

use super::Hook;
use crate::protocol::now_rfc3339;

const SCRIPT: &str = include_str!("redis.lua");
/// Longest wait for one Redis command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a Redis step failed.
#[derive(Debug, thiserror::Error)]
#[error("webhook presence in redis: {0}")]
pub struct ClusterError(String);

fn err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError(e.to_string())
}

/// What one sweep found.
#[derive(Debug, Default)]
pub struct Swept {
    /// False when this node was not registered (new, or reaped while cut off from Redis): its
    /// local counts must be published again.
    pub registered: bool,
    /// Subjects whose offline this node claimed, with their last-seen time.
    pub offline: Vec<(String, String)>,
    /// Owed hooks of dead nodes, now this node's: (URL, hook).
    pub adopted: Vec<(String, Hook)>,
}

/// This node's handle on cluster presence; cheap to clone.
#[derive(Clone)]
pub struct ClusterPresence {
    conn: ConnectionManager,
    node: Arc<str>,
    lease: Duration,
    grace: Duration,
    script: Arc<redis::Script>,
}

impl ClusterPresence {
    /// Connects (the node registers with its first [`ClusterPresence::sweep`]).
    pub async fn connect(url: &str, node: &str, lease: Duration, grace: Duration) -> Result<Self, ClusterError> {
        let client = redis::Client::open(url).map_err(err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1);
        let conn = client.get_connection_manager_with_config(config).await.map_err(err)?;
        Ok(Self { conn, node: node.into(), lease, grace, script: Arc::new(redis::Script::new(SCRIPT)) })
    }

    /// Publishes this node's count for `subject`; `Some(total)` when this call announced it
    /// online (the cluster had it offline), with its connections across the cluster.
    pub async fn update(&mut self, subject: &str, count: usize) -> Result<Option<usize>, ClusterError> {
        let (now_text, now_ms) = now_rfc3339();
        let due = now_ms + self.grace.as_millis() as u64;
        let total: u64 = self
            .script
            .arg("update")
            .arg(&*self.node)
            .arg(subject)
            .arg(count)
            .arg(due)
            .arg(now_text)
            .invoke_async(&mut self.conn)
            .await
            .map_err(err)?;
        Ok((total > 0).then_some(total as usize))
    }

    /// Renews the lease, reaps dead nodes and claims the offlines now due.
    pub async fn sweep(&mut self) -> Result<Swept, ClusterError> {
        let (now_text, now_ms) = now_rfc3339();
        let reply: Value = self
            .script
            .arg("sweep")
            .arg(&*self.node)
            .arg(now_ms)
            .arg(self.lease.as_millis() as u64)
            .arg(self.grace.as_millis() as u64)
            .arg(now_text)
            .invoke_async(&mut self.conn)
            .await
            .map_err(err)?;
        let (registered, offline, adopted): (i64, Vec<String>, Vec<String>) =
            redis::from_redis_value(reply).map_err(err)?;
        let mut swept = Swept { registered: registered == 1, ..Swept::default() };
        for pair in offline.chunks_exact(2) {
            swept.offline.push((pair[0].clone(), pair[1].clone()));
        }
        for pair in adopted.chunks_exact(2) {
            let url = pair[0].split_once(' ').map(|(_, url)| url.to_string()).unwrap_or_default();
            match serde_json::from_str::<Hook>(&pair[1]) {
                Ok(hook) => swept.adopted.push((url, hook)),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable adopted webhook"),
            }
        }
        Ok(swept)
    }

    /// Subjects announced online, with their connections across the cluster.
    pub async fn online(&mut self) -> Result<Vec<(String, usize)>, ClusterError> {
        let flat: Vec<String> =
            self.script.arg("online").arg(&*self.node).invoke_async(&mut self.conn).await.map_err(err)?;
        Ok(flat.chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0))).collect())
    }

    /// Records a hook this node owes `url`, so a surviving node can adopt it.
    pub async fn add_owed(&mut self, url: &str, rows: &[(u64, Arc<Hook>)]) -> Result<(), ClusterError> {
        let key = format!("wshub:wh:owed:{}", self.node);
        let mut pipe = redis::pipe();
        for (order, hook) in rows {
            let json = serde_json::to_string(hook.as_ref()).map_err(err)?;
            pipe.hset(&key, format!("{order} {url}"), json).ignore();
        }
        pipe.query_async::<()>(&mut self.conn).await.map_err(err)
    }

    /// Forgets a hook delivered or given up on.
    pub async fn remove_owed(&mut self, url: &str, order: u64) -> Result<(), ClusterError> {
        let key = format!("wshub:wh:owed:{}", self.node);
        self.conn.hdel::<_, _, ()>(key, format!("{order} {url}")).await.map_err(err)
    }
}
