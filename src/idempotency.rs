//! Idempotent publish: the first publish with a key runs, repeats within the window wait for and
//! return its result. Concurrent repeats are safe: they share one `OnceCell`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::OnceCell;

use crate::engine::{EngineError, Published};

type Slot = Arc<OnceCell<Vec<Published>>>;

/// Remembers publish results by idempotency key for a time window.
pub struct IdempotencyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Slot)>>,
}

impl IdempotencyCache {
    /// A cache remembering keys for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// Runs `publish` once per key within the window; without a key it always runs.
    /// A failed publish is not remembered, so a retry runs again.
    pub async fn run<F, Fut>(&self, key: Option<String>, publish: F) -> Result<Vec<Published>, EngineError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Published>, EngineError>>,
    {
        let Some(key) = key else {
            return publish().await;
        };
        let slot = self.slot(key)?;
        slot.get_or_try_init(publish).await.cloned()
    }

    /// Number of remembered keys.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, key: String) -> Result<Slot, EngineError> {
        let now = Instant::now();
        let mut entries = self.entries.lock().map_err(|_| EngineError::Storage("idempotency lock poisoned".into()))?;
        if entries.len() >= 1024 && entries.len().is_power_of_two() {
            entries.retain(|_, (expires, _)| *expires > now);
        }
        let entry = entries.entry(key).or_insert_with(|| (now + self.ttl, Arc::new(OnceCell::new())));
        if entry.0 <= now {
            *entry = (now + self.ttl, Arc::new(OnceCell::new()));
        }
        Ok(Arc::clone(&entry.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn published(n: u64) -> Vec<Published> {
        vec![Published { id: format!("e{n}"), seq: n, recipients: Some(0), nodes: None }]
    }

    #[tokio::test]
    async fn concurrent_repeats_run_once() {
        let cache = Arc::new(IdempotencyCache::new(Duration::from_secs(60)));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (cache, runs) = (Arc::clone(&cache), Arc::clone(&runs));
            tasks.push(tokio::spawn(async move {
                cache
                    .run(Some("k".into()), || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok(published(i))
                    })
                    .await
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("join").expect("ok")[0].id.clone());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(ids.windows(2).all(|w| w[0] == w[1]));
    }

    #[tokio::test]
    async fn failures_are_not_remembered() {
        let cache = IdempotencyCache::new(Duration::from_secs(60));
        let first = cache.run(Some("k".into()), || async { Err(EngineError::Stopped) }).await;
        assert!(first.is_err());
        let second = cache.run(Some("k".into()), || async { Ok(published(2)) }).await;
        assert_eq!(second.expect("ok")[0].seq, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_expire_after_the_window() {
        let cache = IdempotencyCache::new(Duration::from_secs(1));
        cache.run(Some("k".into()), || async { Ok(published(1)) }).await.expect("ok");
        tokio::time::advance(Duration::from_secs(2)).await;
        let again = cache.run(Some("k".into()), || async { Ok(published(2)) }).await.expect("ok");
        assert_eq!(again[0].seq, 2);
    }
}
