//! In-memory event history per stream: the last N events (and no older than the TTL), within a
//! global byte budget that evicts the oldest events across streams, and the positions a resume
//! needs to tell whether anything was lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use crate::protocol::Event;

/// What a resume gets back: the missed events and whether they are complete.
#[derive(Debug, Default)]
pub struct Replay {
    /// Events with `seq > since` in any of the asked streams, once each, ordered by seq.
    pub events: Vec<Arc<Event>>,
    /// False when events after `since` were already trimmed (or the epoch changed).
    pub recovered: bool,
    /// Newest seq of the asked streams (0 when they are empty).
    pub head: u64,
}

#[derive(Debug, Default)]
struct StreamHistory {
    events: VecDeque<Arc<Event>>,
    /// Highest seq trimmed from this stream; a resume from below it has lost events.
    trimmed_upto: u64,
}

/// Per-stream history with size and age limits and a global byte budget.
#[derive(Debug)]
pub struct History {
    streams: HashMap<String, StreamHistory>,
    default_size: usize,
    ttl_ms: u64,
    /// Most bytes held across all streams (`--history-max-bytes`).
    max_bytes: usize,
    /// Every kept event once, oldest first (weak: the streams own them), for budget eviction.
    order: VecDeque<Weak<Event>>,
    /// Highest seq trimmed from any stream that has since been forgotten entirely.
    forgotten_upto: u64,
    bytes: usize,
    /// Kept events by id (weak: the streams own them); dead entries are pruned now and then.
    by_id: HashMap<String, Weak<Event>>,
    pruned_at_len: usize,
    /// Highest seq that left the history entirely.
    evicted_upto: u64,
    /// Trim floor of streams first seen after a restart from durable storage.
    restored_floor: u64,
    /// Unix ms of the last expiry pass.
    expired_at_ms: u64,
    /// The latest events across streams (weak: gone once no stream keeps them).
    recent: VecDeque<Weak<Event>>,
}

/// Events remembered for `latest` (`GET /events`, the dashboard).
const RECENT_EVENTS: usize = 1000;

/// Least time between two expiry passes (the TTL is honoured to within this).
const EXPIRE_EVERY_MS: u64 = 250;

/// Bytes a stream costs besides its events (map entry, name, queue), counted in the budget so
/// that events to ever new stream names cannot grow memory past it.
const STREAM_OVERHEAD: usize = 160;

fn stream_cost(name: &str) -> usize {
    STREAM_OVERHEAD + name.len()
}

impl History {
    /// Empty history keeping `size` events per stream for `ttl_ms` milliseconds, and at most
    /// `max_bytes` bytes in all.
    pub fn new(size: usize, ttl_ms: u64, max_bytes: usize) -> Self {
        Self {
            streams: HashMap::new(),
            default_size: size,
            ttl_ms,
            max_bytes,
            order: VecDeque::new(),
            forgotten_upto: 0,
            bytes: 0,
            by_id: HashMap::new(),
            pruned_at_len: 0,
            evicted_upto: 0,
            restored_floor: 0,
            expired_at_ms: 0,
            recent: VecDeque::new(),
        }
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of streams with history.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Appends an event to each of its target streams, trimming to `size_of(stream)`.
    /// Returns the seqs of events that left the history entirely.
    pub fn append(&mut self, event: &Arc<Event>, size_of: impl Fn(&str) -> Option<usize>) -> Vec<u64> {
        let share = event.heap_bytes() / event.targets.len().max(1);
        self.by_id.insert(event.id.clone(), Arc::downgrade(event));
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(Arc::downgrade(event));
        self.order.push_back(Arc::downgrade(event));
        let mut popped = Vec::new();
        for target in &event.targets {
            let limit = size_of(target).unwrap_or(self.default_size).max(1);
            // A stream that comes back after being forgotten may have lost events before.
            let floor = self.restored_floor.max(self.forgotten_upto);
            if !self.streams.contains_key(target) {
                self.bytes += stream_cost(target);
            }
            let stream = self
                .streams
                .entry(target.clone())
                .or_insert_with(|| StreamHistory { trimmed_upto: floor, ..Default::default() });
            stream.events.push_back(Arc::clone(event));
            self.bytes += share;
            while stream.events.len() > limit {
                if let Some(old) = stream.events.pop_front() {
                    stream.trimmed_upto = stream.trimmed_upto.max(old.seq);
                    popped.push(old);
                }
            }
        }
        while self.bytes > self.max_bytes && self.evict_oldest(&mut popped) {}
        self.settle(popped)
    }

    /// Takes the oldest kept event out of every stream that holds it (the global budget);
    /// false when nothing is left to evict.
    fn evict_oldest(&mut self, popped: &mut Vec<Arc<Event>>) -> bool {
        let Some(oldest) = self.order.pop_front() else {
            return false;
        };
        // Already trimmed from its streams and gone: nothing to do.
        let Some(event) = oldest.upgrade() else { return true };
        for target in &event.targets {
            let Some(stream) = self.streams.get_mut(target) else { continue };
            // Streams keep seq order and this is the oldest event overall: it is at the front.
            if stream.events.front().is_some_and(|e| e.seq == event.seq) {
                stream.events.pop_front();
                stream.trimmed_upto = stream.trimmed_upto.max(event.seq);
                popped.push(Arc::clone(&event));
                if stream.events.is_empty() {
                    self.forgotten_upto = self.forgotten_upto.max(stream.trimmed_upto);
                    self.streams.remove(target);
                    self.bytes = self.bytes.saturating_sub(stream_cost(target));
                }
            }
        }
        true
    }

    /// Drops events older than the TTL and forgets streams left empty.
    /// Returns the seqs of events that left the history entirely.
    pub fn expire(&mut self, now_ms: u64) -> Vec<u64> {
        // A full pass visits every stream, so it runs at most every EXPIRE_EVERY_MS.
        if now_ms < self.expired_at_ms + EXPIRE_EVERY_MS {
            return Vec::new();
        }
        self.expired_at_ms = now_ms;
        let cutoff = now_ms.saturating_sub(self.ttl_ms);
        let mut popped = Vec::new();
        let mut forgotten = self.forgotten_upto;
        let mut released = 0;
        let mut kept_entries = 0;
        self.streams.retain(|name, stream| {
            while stream.events.front().is_some_and(|e| e.accepted_ms < cutoff) {
                if let Some(old) = stream.events.pop_front() {
                    stream.trimmed_upto = stream.trimmed_upto.max(old.seq);
                    popped.push(old);
                }
            }
            let keep = !stream.events.is_empty();
            if !keep {
                forgotten = forgotten.max(stream.trimmed_upto);
                released += stream_cost(name);
            }
            kept_entries += stream.events.len();
            keep
        });
        self.forgotten_upto = forgotten;
        self.bytes = self.bytes.saturating_sub(released);
        // Events trimmed per stream leave dead entries in the eviction order: drop them now and
        // then, so the order stays within a constant factor of what is kept.
        if self.order.len() > 2 * kept_entries + 1024 {
            self.order.retain(|e| e.strong_count() > 0);
        }
        if self.by_id.len() > 2 * self.pruned_at_len + 1024 {
            self.by_id.retain(|_, e| e.strong_count() > 0);
            self.pruned_at_len = self.by_id.len();
        }
        self.settle(popped)
    }

    /// Accounts for events popped from streams; those in no stream any more are evicted.
    fn settle(&mut self, popped: Vec<Arc<Event>>) -> Vec<u64> {
        let mut evicted = Vec::new();
        for old in popped {
            self.bytes = self.bytes.saturating_sub(old.heap_bytes() / old.targets.len().max(1));
            let kept = old.targets.iter().any(|t| {
                self.streams.get(t).is_some_and(|s| s.events.binary_search_by_key(&old.seq, |e| e.seq).is_ok())
            });
            if !kept && !evicted.contains(&old.seq) {
                self.evicted_upto = self.evicted_upto.max(old.seq);
                evicted.push(old.seq);
            }
        }
        evicted
    }

    /// Highest seq that has left the history entirely.
    pub fn evicted_upto(&self) -> u64 {
        self.evicted_upto
    }

    /// After a restart: every stream counts as trimmed up to `floor`, since what happened to
    /// each stream before the restart is not known in detail.
    pub fn set_restored_floor(&mut self, floor: u64) {
        self.restored_floor = floor;
        self.forgotten_upto = self.forgotten_upto.max(floor);
        self.evicted_upto = self.evicted_upto.max(floor);
    }

    /// Takes back the newest events (a publish whose durable write failed).
    pub fn rollback(&mut self, events: &[Arc<Event>]) {
        for event in events.iter().rev() {
            for target in &event.targets {
                if let Some(stream) = self.streams.get_mut(target)
                    && stream.events.back().is_some_and(|e| e.seq == event.seq)
                {
                    stream.events.pop_back();
                    self.bytes = self.bytes.saturating_sub(event.heap_bytes() / event.targets.len().max(1));
                }
            }
            self.by_id.remove(&event.id);
        }
    }

    /// Newest seq in a stream (0 when it has none).
    pub fn head(&self, stream: &str) -> u64 {
        self.streams.get(stream).and_then(|s| s.events.back()).map_or(0, |e| e.seq)
    }

    /// Everything after `since` in `streams`, merged by seq without duplicates.
    /// `since = None` asks only for the head (a plain subscribe).
    pub fn replay(&self, streams: &[String], since: Option<u64>) -> Replay {
        let head = streams.iter().map(|s| self.head(s)).max().unwrap_or(0);
        let Some(since) = since else {
            return Replay { events: Vec::new(), recovered: true, head };
        };
        let mut recovered = true;
        let mut events: Vec<Arc<Event>> = Vec::new();
        for name in streams {
            match self.streams.get(name) {
                Some(stream) => {
                    recovered &= since >= stream.trimmed_upto;
                    events.extend(stream.events.iter().filter(|e| e.seq > since).cloned());
                }
                None => recovered &= since >= self.forgotten_upto,
            }
        }
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        Replay { events, recovered, head }
    }

    /// One page of a stream's history: events with `seq > since`, oldest first, at most `limit`.
    pub fn page(&self, stream: &str, since: u64, limit: usize) -> Vec<Arc<Event>> {
        self.streams
            .get(stream)
            .map(|s| s.events.iter().filter(|e| e.seq > since).take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// Finds a kept event by id.
    pub fn find(&self, id: &str) -> Option<Arc<Event>> {
        self.by_id.get(id).and_then(Weak::upgrade)
    }

    /// The latest `limit` events across all streams, newest first.
    pub fn latest(&self, limit: usize) -> Vec<Arc<Event>> {
        self.recent.iter().rev().filter_map(Weak::upgrade).take(limit).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn ev(seq: u64, targets: &[&str], ms: u64) -> Arc<Event> {
        Arc::new(Event {
            id: format!("e{seq}"),
            seq,
            kind: "t".into(),
            message: String::new(),
            data: RawValue::from_string("{}".into()).expect("raw"),
            timestamp: String::new(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            from: None,
            exclude: None,
            accepted_ms: ms,
            receipt: Default::default(),
            delivery: Default::default(),
        })
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_events_across_streams() {
        // Room for ten events in ten fresh streams (ids grow from "e1" to "e100"); a hundred
        // are published.
        let budget = 10 * (ev(100, &["c-0100"], 0).heap_bytes() + stream_cost("c-0001"));
        let mut h = History::new(100, 60_000, budget);
        let mut evicted = Vec::new();
        for seq in 1..=100 {
            evicted.extend(h.append(&ev(seq, &[&format!("c-{seq:04}")], 0), |_| None));
            assert!(h.bytes() <= budget, "{} bytes after event {seq}", h.bytes());
        }
        assert_eq!(evicted, (1..=90).collect::<Vec<_>>(), "oldest first");
        assert_eq!(h.stream_count(), 10);
        assert_eq!(h.evicted_upto(), 90);
        // A stream whose events were evicted reports the loss to a resume.
        assert!(!h.replay(&["c-0005".into()], Some(0)).recovered);
        let kept = h.replay(&["c-0095".into()], Some(94));
        assert!(kept.recovered);
        assert_eq!(kept.events.len(), 1);
    }

    #[test]
    fn the_eviction_order_does_not_grow_with_events_trimmed_per_stream() {
        let mut h = History::new(2, 60_000, usize::MAX);
        for seq in 1..=10_000 {
            h.append(&ev(seq, &["a"], seq), |_| None);
        }
        h.expire(10_000);
        assert!(h.order.len() <= 2 * 2 + 1024, "{} entries", h.order.len());
    }

    #[test]
    fn replay_merges_streams_once_in_order() {
        let mut h = History::new(10, 60_000, usize::MAX);
        h.append(&ev(1, &["a"], 0), |_| None);
        h.append(&ev(2, &["a", "b"], 0), |_| None);
        h.append(&ev(3, &["b"], 0), |_| None);
        let r = h.replay(&["a".into(), "b".into()], Some(1));
        assert!(r.recovered);
        assert_eq!(r.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(r.head, 3);
    }

    #[test]
    fn an_event_is_evicted_only_when_no_stream_keeps_it() {
        let mut h = History::new(1, 60_000, usize::MAX);
        h.append(&ev(1, &["a", "b"], 0), |_| None);
        assert!(h.append(&ev(2, &["a"], 0), |_| None).is_empty());
        assert_eq!(h.append(&ev(3, &["b"], 0), |_| None), vec![1]);
        assert_eq!(h.evicted_upto(), 1);
    }

    #[test]
    fn trimmed_positions_are_not_recovered() {
        let mut h = History::new(2, 60_000, usize::MAX);
        for seq in 1..=4 {
            h.append(&ev(seq, &["a"], 0), |_| None);
        }
        assert!(!h.replay(&["a".into()], Some(1)).recovered);
        let r = h.replay(&["a".into()], Some(2));
        assert!(r.recovered);
        assert_eq!(r.events.len(), 2);
    }

    #[test]
    fn expiry_forgets_streams_but_remembers_the_loss() {
        let mut h = History::new(10, 1_000, usize::MAX);
        h.append(&ev(5, &["a"], 0), |_| None);
        assert_eq!(h.expire(10_000), vec![5]);
        assert_eq!(h.stream_count(), 0);
        assert_eq!(h.bytes(), 0);
        assert!(!h.replay(&["a".into()], Some(4)).recovered);
        assert!(h.replay(&["a".into()], Some(5)).recovered);
    }
}
