//! The embedded engine: positions from a counter, history in memory, delivery straight into the
//! local hub. Events enter history and reach the hub in seq order, under one short lock, which is
//! what makes resume exact (see `hub` for the other half). With `--data-dir` the disk commit
//! happens first, on the group-commit writer of [`super::durable`], never under that lock.
//!
//! The position the hub reads on connect and resume ([`Engine::current_seq`]) is an atomic: the
//! newest seq handed to the hub, stored before the hand-over, so the hub never waits for a
//! publish and never reads a seq whose event it will not be given.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use super::durable::Writer;
use super::{Engine, EngineError, EngineHealth, NewEvent, Published};
use crate::history::{History, Replay};
use crate::hub::HubHandle;
use crate::idempotency::IdempotencyCache;
use crate::metrics::Metrics;
use crate::namespace::Namespaces;
use crate::protocol::{BROADCAST, Delivery, Event, now_rfc3339};
use crate::store::{Store, StoreError};

pub(super) struct State {
    pub(super) history: History,
    /// Seqs evicted from history but not yet removed from the data dir (durable mode only); the
    /// writer removes them with its next commit. A crash before that only restores events that
    /// the restart evicts again.
    pub(super) unsaved_evictions: Vec<u64>,
}

/// What the publishing paths and the durable writer share.
pub(super) struct Core {
    epoch: String,
    /// Newest seq handed to the hub (see the module doc).
    position: AtomicU64,
    state: Mutex<State>,
    hub: HubHandle,
    namespaces: Namespaces,
    durable: bool,
}

/// Ids and seqs of published events, and the hub's per-event recipient counts to come.
pub(super) type Accepted = (Vec<(String, u64)>, oneshot::Receiver<Vec<usize>>);

impl Core {
    pub(super) fn lock(&self) -> Result<MutexGuard<'_, State>, EngineError> {
        self.state.lock().map_err(|_| EngineError::Storage("history lock poisoned".into()))
    }

    /// The newest seq handed to the hub.
    pub(super) fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Drops events past the TTL; in durable mode remembers them for the writer. True when the
    /// data dir now holds events that history no longer has.
    fn expire(&self, state: &mut State, now_ms: u64) -> bool {
        let evicted = state.history.expire(now_ms);
        self.note_evicted(state, evicted)
    }

    fn note_evicted(&self, state: &mut State, evicted: Vec<u64>) -> bool {
        if !self.durable || evicted.is_empty() {
            return false;
        }
        state.unsaved_evictions.extend(evicted);
        true
    }

    /// Drops expired events, puts stamped events (seqs right after the position) into history and
    /// hands them to the hub in order. Called with the state lock held, so history and the hub see the same order.
    pub(super) fn apply(&self, state: &mut State, events: Vec<Arc<Event>>) -> Result<Accepted, EngineError> {
        let (reply, counts) = oneshot::channel();
        self.expire(state, now_rfc3339().1);
        let sizes = |stream: &str| self.namespaces.find(stream).and_then(|ns| ns.history_size);
        for event in &events {
            let evicted = state.history.append(event, sizes);
            self.note_evicted(state, evicted);
        }
        let previous = self.position();
        if let Some(last) = events.last() {
            // Before the hand-over: a connection registered from now on is told this seq and gets
            // the event live.
            self.position.store(last.seq, Ordering::Release);
        }
        let stamped = events.iter().map(|e| (e.id.clone(), e.seq)).collect();
        // Shared deliveries: a replay of these events reuses their frames.
        let deliveries = events.iter().map(|e| Delivery::shared(e, &self.epoch)).collect();
        // With a data dir the events are on disk, so accepted even if the hub has stopped: they
        // are replayed to clients after the restart. In memory they are accepted when the hub
        // takes them.
        if let Err(e) = self.hub.deliver(deliveries, Some(reply))
            && !self.durable
        {
            state.history.rollback(&events);
            self.position.store(previous, Ordering::Release);
            return Err(e);
        }
        Ok((stamped, counts))
    }

    /// Stamps a batch with the seqs following `after`.
    pub(super) fn stamp_batch(batch: Vec<NewEvent>, after: u64) -> Vec<Arc<Event>> {
        let (timestamp, accepted_ms) = now_rfc3339();
        (after + 1..).zip(batch).map(|(seq, new)| Arc::new(stamp(new, seq, &timestamp, accepted_ms))).collect()
    }

    /// Locks the state with events past the TTL already dropped, so reads never return them.
    fn fresh(&self, writer: Option<&Writer>) -> Result<MutexGuard<'_, State>, EngineError> {
        let mut state = self.lock()?;
        if self.expire(&mut state, now_rfc3339().1)
            && let Some(writer) = writer
        {
            writer.flush();
        }
        Ok(state)
    }
}

/// The single-process engine.
pub struct MemoryEngine {
    core: Arc<Core>,
    idempotency: IdempotencyCache,
    /// The group-commit writer, with `--data-dir`.
    writer: Option<Writer>,
}

impl MemoryEngine {
    /// An engine delivering into `hub`, with history limits from the configuration; with
    /// `--data-dir`, history and epoch are restored from and written to disk.
    pub fn new(hub: HubHandle, config: &crate::config::Config, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
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
        let core = Arc::new(Core {
            epoch,
            position: AtomicU64::new(seq.max(history.evicted_upto())),
            state: Mutex::new(State { history, unsaved_evictions: Vec::new() }),
            hub,
            namespaces: config.namespaces.clone(),
            durable: store.is_some(),
        });
        let writer = store.map(|store| Writer::start(store, Arc::clone(&core), metrics)).transpose()?;
        Ok(Self { core, idempotency: IdempotencyCache::new(config.idempotency_ttl), writer })
    }

    async fn publish_now(&self, batch: Vec<NewEvent>) -> Result<Vec<Published>, EngineError> {
        let (stamped, counts) = match &self.writer {
            Some(writer) => writer.publish(batch).await?,
            None => {
                let mut state = self.core.lock()?;
                let events = Core::stamp_batch(batch, self.core.position());
                self.core.apply(&mut state, events)?
            }
        };
        // Accepted: a hub that stops before counting means nobody got it live, not an error.
        let counts = counts.await.unwrap_or_default();
        Ok(stamped
            .into_iter()
            .enumerate()
            .map(|(i, (id, seq))| Published {
                id,
                seq,
                recipients: Some(counts.get(i).copied().unwrap_or(0)),
                nodes: None,
            })
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
        self.core.epoch.clone()
    }

    fn current_seq(&self) -> u64 {
        self.core.position()
    }

    fn publish(&self, batch: Vec<NewEvent>, key: Option<String>) -> BoxFuture<'_, Result<Vec<Published>, EngineError>> {
        self.idempotency.run(key, move || self.publish_now(batch)).boxed()
    }

    fn replay(&self, streams: Vec<String>, since: Option<u64>) -> BoxFuture<'_, Result<Replay, EngineError>> {
        let result = self.core.fresh(self.writer.as_ref()).map(|s| s.history.replay(&streams, since));
        async move { result }.boxed()
    }

    fn history(&self, stream: String, since: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        let result = self.core.fresh(self.writer.as_ref()).map(|s| s.history.page(&stream, since, limit));
        async move { result }.boxed()
    }

    fn recent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        let result = self.core.fresh(self.writer.as_ref()).map(|s| s.history.latest(limit));
        async move { result }.boxed()
    }

    fn find(&self, id: String) -> BoxFuture<'_, Result<Option<Arc<Event>>, EngineError>> {
        let result = self.core.fresh(self.writer.as_ref()).map(|s| s.history.find(&id));
        async move { result }.boxed()
    }

    fn ack(&self, ids: Vec<String>, user: Option<String>) -> BoxFuture<'_, ()> {
        let events: Vec<Arc<Event>> =
            self.core.lock().map(|s| ids.iter().filter_map(|id| s.history.find(id)).collect()).unwrap_or_default();
        for event in events {
            event.receipt.ack(user.as_deref());
        }
        async {}.boxed()
    }

    fn receipt(&self, event: Arc<Event>) -> BoxFuture<'_, serde_json::Value> {
        async move { event.receipt.summary() }.boxed()
    }

    fn history_bytes(&self) -> usize {
        self.core.lock().map_or(0, |s| s.history.bytes())
    }

    fn health(&self) -> EngineHealth {
        EngineHealth { kind: "memory", ok: true, detail: None }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            if let Some(writer) = &self.writer {
                writer.close().await;
            }
        }
        .boxed()
    }
}
