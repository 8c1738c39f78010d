//! One URL's outbox: a queue of owed hooks delivered in order, each at least once with its
//! stable `webhook-id`, retried with exponential backoff until `--webhook-retry-for` after it
//! was created. It runs as a task of its own and takes hooks from a bounded hand-over channel,
//! so a slow or dead backend fills only this queue (bounded in bytes), never the hub.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Hook;
use super::redis::ClusterPresence;
use super::sign::Signer;
use super::store::HookStore;
use crate::metrics::Metrics;
use crate::protocol::now_rfc3339;

/// Longest wait for one delivery attempt (connect, send and the backend's answer).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before the first retry; doubles after each failed attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Bytes of owed hooks one URL may hold in memory; a hook beyond it is dropped and counted failed.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;

/// Everything one outbox needs.
pub struct Outbox {
    /// Where to POST.
    pub url: String,
    /// Shared HTTP client.
    pub client: reqwest::Client,
    /// Signs each attempt.
    pub signer: Arc<Signer>,
    /// How long after creation a hook is retried.
    pub retry_for: Duration,
    /// Where owed hooks are kept besides memory.
    pub persist: Persist,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Order numbers shared by all outboxes (keys in the store).
    pub next_order: Arc<AtomicU64>,
}

/// Where a queue's owed hooks are kept so a restart (or, in a cluster, another node) sends them.
#[derive(Clone)]
pub enum Persist {
    /// Memory only.
    Nowhere,
    /// `--data-dir`.
    Disk(HookStore),
    /// Redis, adopted by a surviving node when this one dies.
    Redis(ClusterPresence),
}

impl Persist {
    async fn add(&self, url: &str, rows: Vec<(u64, Arc<Hook>)>) {
        let result = match self.clone() {
            Self::Nowhere => return,
            Self::Disk(store) => {
                let url = url.to_string();
                tokio::task::spawn_blocking(move || store.add(&url, &rows))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Self::Redis(mut cluster) => cluster.add_owed(url, &rows).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "owed webhooks not stored: kept in memory only");
        }
    }

    async fn remove(&self, url: &str, order: u64) {
        let result = match self.clone() {
            Self::Nowhere => return,
            Self::Disk(store) => {
                let url = url.to_string();
                tokio::task::spawn_blocking(move || store.remove(&url, order))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Self::Redis(mut cluster) => cluster.remove_owed(url, order).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "finished webhook not removed from the store");
        }
    }
}

/// The queue and its byte count.
struct Queue {
    items: VecDeque<(u64, Arc<Hook>)>,
    bytes: usize,
}

impl Outbox {
    /// Delivers `restored` (owed before a restart) and then whatever arrives on `rx`, until
    /// `shutdown`; what is still owed then stays in the store.
    pub async fn run(
        self,
        restored: Vec<(u64, Arc<Hook>)>,
        mut rx: mpsc::Receiver<Arc<Hook>>,
        shutdown: CancellationToken,
    ) {
        let mut queue = Queue { items: VecDeque::new(), bytes: 0 };
        for (order, hook) in restored {
            queue.bytes += hook.bytes();
            queue.items.push_back((order, hook));
            self.metrics.webhooks_queued.inc();
        }
        let mut failures = 0u32;
        loop {
            let Some((order, hook)) = queue.items.front().cloned() else {
                tokio::select! {
                    hook = rx.recv() => match hook {
                        Some(hook) => self.accept(&mut queue, vec![hook]).await,
                        None => return,
                    },
                    () = shutdown.cancelled() => return,
                }
                continue;
            };
            // Keep taking hooks while a slow backend answers, so the hand-over never fills up.
            let attempt = self.attempt(&hook);
            tokio::pin!(attempt);
            let delivered = loop {
                tokio::select! {
                    result = &mut attempt => break result,
                    Some(more) = rx.recv() => self.accept(&mut queue, vec![more]).await,
                    () = shutdown.cancelled() => return,
                }
            };
            let result = match delivered {
                Ok(()) => {
                    self.metrics.webhooks_sent.inc();
                    true
                }
                Err(reason) => {
                    failures += 1;
                    let backoff = backoff(failures);
                    let (_, now_ms) = now_rfc3339();
                    let deadline = hook.created_ms.saturating_add(self.retry_for.as_millis() as u64);
                    if now_ms.saturating_add(backoff.as_millis() as u64) > deadline {
                        self.metrics.webhooks_failed.inc();
                        tracing::warn!(url = %self.url, id = %hook.id, %reason, attempts = failures, "webhook given up after --webhook-retry-for");
                        true
                    } else {
                        self.metrics.webhooks_retried.inc();
                        tracing::debug!(url = %self.url, id = %hook.id, %reason, ?backoff, "webhook attempt failed; retrying");
                        if !self.wait(backoff, &mut queue, &mut rx, &shutdown).await {
                            return;
                        }
                        false
                    }
                }
            };
            if result {
                failures = 0;
                queue.items.pop_front();
                queue.bytes -= hook.bytes();
                self.metrics.webhooks_queued.dec();
                self.persist.remove(&self.url, order).await;
            }
            // Take what arrived meanwhile in one store transaction.
            let mut arrived = Vec::new();
            while let Ok(hook) = rx.try_recv() {
                arrived.push(hook);
            }
            if !arrived.is_empty() {
                self.accept(&mut queue, arrived).await;
            }
        }
    }

    /// Sleeps `backoff` while still taking new hooks; false on shutdown.
    async fn wait(
        &self,
        backoff: Duration,
        queue: &mut Queue,
        rx: &mut mpsc::Receiver<Arc<Hook>>,
        shutdown: &CancellationToken,
    ) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                Some(hook) = rx.recv() => self.accept(queue, vec![hook]).await,
                () = shutdown.cancelled() => return false,
            }
        }
    }

    /// Queues hooks (stored first with `--data-dir`); over the byte budget a hook is dropped.
    async fn accept(&self, queue: &mut Queue, hooks: Vec<Arc<Hook>>) {
        let mut added = Vec::with_capacity(hooks.len());
        for hook in hooks {
            if queue.bytes + hook.bytes() > MAX_QUEUED_BYTES {
                self.metrics.webhooks_failed.inc();
                tracing::warn!(url = %self.url, id = %hook.id, "webhook queue over {MAX_QUEUED_BYTES} bytes: hook dropped");
                continue;
            }
            let order = self.next_order.fetch_add(1, Ordering::Relaxed);
            queue.bytes += hook.bytes();
            self.metrics.webhooks_queued.inc();
            added.push((order, hook));
        }
        if !added.is_empty() {
            self.persist.add(&self.url, added.clone()).await;
        }
        queue.items.extend(added);
    }

    /// One signed POST; `Err` says why it did not get a 2xx.
    async fn attempt(&self, hook: &Hook) -> Result<(), String> {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = self.signer.sign(&hook.id, timestamp, &hook.body);
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &hook.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(hook.body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("HTTP {status}")) }
    }
}

/// The wait after `failures` failed attempts in a row.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
