//! Exact resume: a stream's live events for a connection wait in a buffer while the engine reads
//! history; then the reply, the missed events and the buffered ones go out, skipping any seq
//! already sent, and the stream switches to live delivery. Also the `hub:connected` and
//! `hub:subscribed` frames, which carry the outcome.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::json;

use super::{Command, ConnId, Hub, Outbound};
use crate::engine::EngineError;
use crate::history::Replay;
use crate::protocol::{BROADCAST, Delivery, to_frame};

/// Where a resume starts.
#[derive(Debug, Clone)]
pub struct Resume {
    /// Last seq the client saw.
    pub since: u64,
    /// Epoch that seq belongs to.
    pub epoch: Option<String>,
}

pub(super) enum PendingKind {
    Connect,
    Subscribe(String),
}

/// A resume in progress: live events of `streams` wait in `buffer` until history arrives.
pub(super) struct Pending {
    pub(super) ticket: u64,
    pub(super) kind: PendingKind,
    pub(super) streams: Vec<String>,
    pub(super) since: Option<u64>,
    pub(super) epoch_ok: bool,
    pub(super) buffer: Vec<(Arc<Delivery>, u32)>,
}

/// The resumes of one connection and the seqs sent live meanwhile (so a replay skips them).
#[derive(Default)]
pub(super) struct Resuming {
    pub(super) pending: Vec<Pending>,
    pub(super) live_seqs: Vec<u64>,
    /// Subscribes that arrived before the connect resume was answered; handled right after it,
    /// so `hub:connected` stays the first frame and the two replays cannot overlap.
    pub(super) deferred: Vec<(String, Option<Resume>)>,
}

impl Hub {
    /// `hub:connected`; its `seq` is the newest known: the engine's, or `newest` when a replay
    /// (in a cluster, read from Redis) saw a later one than this node has delivered so far.
    pub(super) fn connected_frame(&self, id: ConnId, recovery: Option<(bool, usize)>, newest: u64) -> Utf8Bytes {
        let Some(conn) = self.conns.get(&id) else {
            return Utf8Bytes::from_static("{}");
        };
        let who = &conn.identity;
        to_frame(&ConnectedFrame {
            kind: "hub:connected",
            client_id: self.handle.client_id(id),
            user: who.user.as_deref(),
            role: who.role(),
            roles: &who.roles,
            channels: who.auto_streams(),
            epoch: self.engine.epoch(),
            seq: self.engine.current_seq().max(newest),
            recovered: recovery.map(|r| r.0),
            replayed: recovery.map(|r| r.1),
        })
    }

    /// Marks `streams` as pending for `id` and asks the engine for their history.
    pub(super) fn start_pending(&mut self, id: ConnId, kind: PendingKind, streams: Vec<String>, resume: Resume) {
        let epoch_ok = resume.epoch.as_deref() == Some(self.engine.epoch().as_str());
        self.start_pending_since(id, kind, streams, Some(resume.since), epoch_ok);
    }

    pub(super) fn start_pending_since(
        &mut self,
        id: ConnId,
        kind: PendingKind,
        streams: Vec<String>,
        since: Option<u64>,
        epoch_ok: bool,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let read_since = if epoch_ok { since } else { None };
        let resuming = conn.resuming.get_or_insert_with(Box::default);
        resuming.pending.push(Pending { ticket, kind, streams: streams.clone(), since, epoch_ok, buffer: Vec::new() });
        let (engine, handle) = (Arc::clone(&self.engine), self.handle.clone());
        tokio::spawn(async move {
            let result = engine.replay(streams, read_since).await;
            handle.send(Command::Replayed { id, ticket, result }).await;
        });
    }

    /// Sends the resume reply, the missed events and the buffered live ones, then goes live.
    pub(super) fn replayed(&mut self, id: ConnId, ticket: u64, result: Result<Replay, EngineError>) {
        let epoch = self.engine.epoch();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(resuming) = conn.resuming.as_mut() else { return };
        let Some(index) = resuming.pending.iter().position(|p| p.ticket == ticket) else {
            return;
        };
        let pending = resuming.pending.remove(index);
        let deferred = match pending.kind {
            PendingKind::Connect => std::mem::take(&mut resuming.deferred),
            PendingKind::Subscribe(_) => Vec::new(),
        };
        let live_seqs = if resuming.pending.is_empty() && resuming.deferred.is_empty() {
            conn.resuming.take().map(|r| r.live_seqs).unwrap_or_default()
        } else {
            resuming.live_seqs.clone()
        };
        let (replay, engine_ok) = match result {
            Ok(replay) => (replay, true),
            Err(e) => {
                tracing::warn!(error = %e, conn = id, "history unavailable for resume");
                (Replay::default(), false)
            }
        };
        if matches!(pending.kind, PendingKind::Connect) && pending.since.is_none() {
            // A fresh connection got nothing older than its streams' heads (in a cluster the
            // node's own last seq may lag them).
            conn.auto_floor = conn.auto_floor.max(replay.head);
        }
        let mut events = Vec::new();
        let mut replayed_seqs = Vec::new();
        let auto = match pending.kind {
            PendingKind::Subscribe(_) => conn.identity.auto_streams(),
            PendingKind::Connect => Vec::new(),
        };
        if let Some(since) = pending.since.filter(|_| pending.epoch_ok) {
            for event in replay.events.iter().filter(|e| e.seq > since) {
                let via_auto = event.seq > conn.auto_floor && event.targets.iter().any(|t| auto.contains(t));
                if via_auto || live_seqs.contains(&event.seq) {
                    continue;
                }
                let label =
                    pending.streams.iter().find(|s| event.targets.contains(s)).map_or(BROADCAST, String::as_str);
                // The event's shared delivery: its frame is serialized once for every live
                // recipient and replay of this stream, and the writer counts it for receipts.
                let delivery = Delivery::shared(event, &epoch);
                let index = delivery.index_of(label);
                events.push(Outbound::replayed(delivery, index));
                replayed_seqs.push(event.seq);
            }
        }
        let recovery = pending.since.map(|_| (pending.epoch_ok && engine_ok && replay.recovered, replayed_seqs.len()));
        // A live event at or before the resume position is one the client already has (in a
        // cluster, a node that lags another can still be delivering it).
        let had = pending.since.filter(|_| pending.epoch_ok).unwrap_or(0);
        for (delivery, index) in pending.buffer {
            if delivery.event.seq > had && replayed_seqs.binary_search(&delivery.event.seq).is_err() {
                // Announced when it was fanned out.
                events.push(Outbound::Event(delivery, index));
            }
        }
        let connect = matches!(pending.kind, PendingKind::Connect);
        let reply = match &pending.kind {
            PendingKind::Connect => {
                let newest = replay.events.last().map_or(0, |e| e.seq).max(replay.head);
                self.connected_frame(id, recovery, newest)
            }
            PendingKind::Subscribe(channel) => subscribed_frame(channel, &epoch, replay.head, recovery),
        };
        let mut items = Vec::with_capacity(events.len() + 1);
        items.push(Outbound::frame(reply));
        items.extend(events);
        self.push_reply_or_drop(id, items);
        if connect {
            self.mark_greeted(id);
        }
        for (channel, resume) in deferred {
            self.subscribe(id, channel, resume);
        }
    }
}

/// `hub:connected`, typed: it is built for every connection.
#[derive(Serialize)]
struct ConnectedFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    client_id: String,
    user: Option<&'a str>,
    role: Option<&'a str>,
    roles: &'a [String],
    channels: Vec<String>,
    epoch: String,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<usize>,
}

fn subscribed_frame(channel: &str, epoch: &str, head: u64, recovery: Option<(bool, usize)>) -> Utf8Bytes {
    let mut frame = json!({"type": "hub:subscribed", "channel": channel, "epoch": epoch, "seq": head});
    if let Some((recovered, replayed)) = recovery {
        frame["recovered"] = recovered.into();
        frame["replayed"] = replayed.into();
    }
    to_frame(&frame)
}
