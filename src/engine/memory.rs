//! The embedded engine: positions from a counter, history in memory, delivery straight into the
//! local hub. Publishing assigns seqs and hands the batch to the hub under one lock, so the hub
//! sees events in seq order, which is what makes resume exact (see `hub` for the other half).

use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use super::{Engine, EngineError, EngineHealth, NewEvent, Published};
use crate::history::{History, Replay};
use crate::hub::HubHandle;
use crate::idempotency::IdempotencyCache;
use crate::namespace::Namespaces;
use crate::protocol::{BROADCAST, Delivery, Event, now_rfc3339};
use crate::store::{Store, StoreError};

struct State {
    seq: u64,
    history: History,
}

/// The single-process engine.
pub struct MemoryEngine {
    epoch: String,
    state: Mutex<State>,
    hub: HubHandle,
    namespaces: Namespaces,
    idempotency: IdempotencyCache,
    store: Option<Store>,
}

impl MemoryEngine {
    /// An engine delivering into `hub`, with history limits from the configuration.
    /// An engine delivering into `hub`, with history limits from the configuration; with
    /// `--data-dir`, history and epoch are restored from and written to disk.
    pub fn new(hub: HubHandle, config: &crate::config::Config) -> Result<Self, StoreError> {
        let ttl_ms = u64::try_from(config.history_ttl.as_millis()).unwrap_or(u64::MAX);
        let max_bytes = usize::try_from(config.history_max_bytes).unwrap_or(usize::MAX);
        let mut history = History::new(config.history_size, ttl_ms, max_bytes);
        let mut epoch = new_epoch();
        let mut seq = 0;
        let store = match &config.data_dir {
            None => None,
            Some(dir) => {
                let (store, restored) = Store::open(dir, &epoch)?;
                epoch = restored.epoch;
                history.set_restored_floor(restored.floor);
                let sizes = |stream: &str| config.namespaces.find(stream).and_then(|ns| ns.history_size);
                let mut evicted = Vec::new();
                for event in &restored.events {
                    seq = seq.max(event.seq);
                    evicted.extend(history.append(event, sizes));
                }
                evicted.extend(history.expire(now_rfc3339().1));
                store.commit(&[], &evicted, history.evicted_upto())?;
                tracing::info!(dir = %dir.display(), events = restored.events.len(), seq, %epoch, "history restored");
                Some(store)
            }
        };
        Ok(Self {
            epoch,
            state: Mutex::new(State { seq: seq.max(history.evicted_upto()), history }),
            hub,
            namespaces: config.namespaces.clone(),
            idempotency: IdempotencyCache::new(config.idempotency_ttl),
            store,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, EngineError> {
        self.state.lock().map_err(|_| EngineError::Storage("history lock poisoned".into()))
    }

    /// Locks the state with events past the TTL already dropped, so reads never return them.
    fn fresh(&self) -> Result<MutexGuard<'_, State>, EngineError> {
        let mut state = self.lock()?;
        let evicted = state.history.expire(now_rfc3339().1);
        if let (Some(store), false) = (&self.store, evicted.is_empty())
            && let Err(e) = store.commit(&[], &evicted, state.history.evicted_upto())
        {
            tracing::warn!(error = %e, "could not remove expired events from the data dir");
        }
        Ok(state)
    }

    async fn publish_now(&self, batch: Vec<NewEvent>) -> Result<Vec<Published>, EngineError> {
        let (reply, counts) = oneshot::channel();
        let stamped: Vec<(String, u64)> = {
            let mut state = self.lock()?;
            let (timestamp, accepted_ms) = now_rfc3339();
            let mut evicted = state.history.expire(accepted_ms);
            let mut events = Vec::with_capacity(batch.len());
            let first_seq = state.seq;
            for new in batch {
                state.seq += 1;
                let event = Arc::new(stamp(new, state.seq, &timestamp, accepted_ms));
                let sizes = |stream: &str| self.namespaces.find(stream).and_then(|ns| ns.history_size);
                evicted.extend(state.history.append(&event, sizes));
                events.push(event);
            }
            if let Some(store) = &self.store {
                let floor = state.history.evicted_upto();
                if let Err(e) = store.commit(&events, &evicted, floor) {
                    state.history.rollback(&events);
                    state.seq = first_seq;
                    tracing::error!(error = %e, "durable write failed; publish refused");
                    return Err(EngineError::Storage(e.to_string()));
                }
            }
            let stamped = events.iter().map(|e| (e.id.clone(), e.seq)).collect();
            // Shared deliveries: a replay of these events reuses their frames.
            let deliveries = events.iter().map(|e| Delivery::shared(e, &self.epoch)).collect();
            self.hub.deliver(deliveries, Some(reply))?;
            stamped
        };
        let counts = counts.await.map_err(|_| EngineError::Stopped)?;
        Ok(stamped
            .into_iter()
            .zip(counts)
            .map(|((id, seq), recipients)| Published { id, seq, recipients: Some(recipients), nodes: None })
            .collect())
    }
}

/// Gives an accepted event its id, position and time.
pub(crate) fn stamp(new: NewEvent, seq: u64, timestamp: &str, accepted_ms: u64) -> Event {
    let targets = if new.targets.is_empty() { vec![BROADCAST.to_string()] } else { new.targets };
    Event {
        id: uuid::Uuid::now_v7().simple().to_string(),
        seq,
        kind: new.kind,
        message: new.message,
        data: new.data,
        timestamp: timestamp.to_string(),
        targets,
        from: new.from,
        exclude: new.exclude,
        accepted_ms,
        receipt: Default::default(),
        delivery: Default::default(),
    }
}

/// A fresh random epoch: different for every process start without durable history.
pub fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_string()
}

impl Engine for MemoryEngine {
    fn epoch(&self) -> String {
        self.epoch.clone()
    }

    fn current_seq(&self) -> u64 {
        self.lock().map_or(0, |s| s.seq)
    }

    fn publish(&self, batch: Vec<NewEvent>, key: Option<String>) -> BoxFuture<'_, Result<Vec<Published>, EngineError>> {
        self.idempotency.run(key, move || self.publish_now(batch)).boxed()
    }

    fn replay(&self, streams: Vec<String>, since: Option<u64>) -> BoxFuture<'_, Result<Replay, EngineError>> {
        let result = self.fresh().map(|s| s.history.replay(&streams, since));
        async move { result }.boxed()
    }

    fn history(&self, stream: String, since: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        let result = self.fresh().map(|s| s.history.page(&stream, since, limit));
        async move { result }.boxed()
    }

    fn recent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        let result = self.fresh().map(|s| s.history.latest(limit));
        async move { result }.boxed()
    }

    fn find(&self, id: String) -> BoxFuture<'_, Result<Option<Arc<Event>>, EngineError>> {
        let result = self.fresh().map(|s| s.history.find(&id));
        async move { result }.boxed()
    }

    fn ack(&self, ids: Vec<String>, user: Option<String>) -> BoxFuture<'_, ()> {
        let events: Vec<Arc<Event>> =
            self.lock().map(|s| ids.iter().filter_map(|id| s.history.find(id)).collect()).unwrap_or_default();
        for event in events {
            event.receipt.ack(user.as_deref());
        }
        async {}.boxed()
    }

    fn receipt(&self, event: Arc<Event>) -> BoxFuture<'_, serde_json::Value> {
        async move { event.receipt.summary() }.boxed()
    }

    fn history_bytes(&self) -> usize {
        self.lock().map_or(0, |s| s.history.bytes())
    }

    fn health(&self) -> EngineHealth {
        EngineHealth { kind: "memory", ok: true, detail: None }
    }
}
