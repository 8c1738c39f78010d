//! Presence for webhooks: turns the hub's stream counts into `user.online`/`user.offline` and
//! `channel.occupied`/`channel.vacated`, debounced by `--offline-grace` so reloads, reconnects
//! and tab switches never flap. Per user (and per channel) the hooks strictly alternate: an
//! "offline" is announced only after an "online", and only once nothing came back within the
//! grace; an "online" only for a subject announced offline (or never announced).
//!
//! The hub reports counts of `user:<id>` streams (a user's connections) and the first join and
//! last leave of other channels; `role:` streams are not reported as channels.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Webhooks;
use super::redis::ClusterPresence;
use super::store::HookStore;
use crate::hub::StreamCount;
use crate::protocol::now_rfc3339;

/// What presence is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Subject {
    User(String),
    Channel(String),
}

impl Subject {
    /// Its key in cluster presence.
    fn key(&self) -> String {
        match self {
            Self::User(user) => format!("u:{user}"),
            Self::Channel(channel) => format!("c:{channel}"),
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        match key.split_once(':')? {
            ("u", user) => Some(Self::User(user.to_string())),
            ("c", channel) => Some(Self::Channel(channel.to_string())),
            _ => None,
        }
    }

    fn of(stream: &str) -> Option<Self> {
        if let Some(user) = stream.strip_prefix("user:") {
            Some(Self::User(user.to_string()))
        } else if stream.starts_with("role:") {
            None
        } else {
            Some(Self::Channel(stream.to_string()))
        }
    }
}

/// A subject announced "online" (or about to be), with its local count.
#[derive(Debug)]
struct Entry {
    /// Local connections (users) or 1/0 (channels).
    local: usize,
    /// When the last connection left; "offline" is due a grace after it.
    left_at: Option<(Instant, String)>,
}

/// A user online now, for `GET /presence/users`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OnlineUser {
    /// User id.
    pub user: String,
    /// Open connections; 0 while within the grace after the last one left.
    pub connections: usize,
}

/// Asks the tracker who is online.
#[derive(Clone)]
pub struct PresenceHandle {
    queries: mpsc::Sender<oneshot::Sender<Option<Vec<OnlineUser>>>>,
}

impl PresenceHandle {
    /// Users announced online (and not yet announced offline), sorted; `None` when stopped or,
    /// in cluster mode, when Redis cannot be read.
    pub async fn users(&self) -> Option<Vec<OnlineUser>> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(tx).await.ok()?;
        rx.await.ok().flatten()
    }
}

/// The tracker task's state.
pub struct Tracker {
    grace: Duration,
    webhooks: Webhooks,
    store: Option<HookStore>,
    /// Subjects announced online.
    announced: HashMap<Subject, Entry>,
    /// Offline deadlines in time order.
    due: BTreeSet<(Instant, Subject)>,
    queries: mpsc::Receiver<oneshot::Sender<Option<Vec<OnlineUser>>>>,
    /// Cluster mode: presence lives in Redis; `local` are this node's counts to publish again
    /// if the node was reaped while cut off.
    cluster: Option<ClusterPresence>,
    local: HashMap<Subject, usize>,
    /// Cluster mode: counts Redis did not take (unreachable), retried at every sweep.
    unpublished: HashMap<Subject, usize>,
}

/// How often a cluster node renews its lease and claims due offlines.
const SWEEP_PERIOD: Duration = Duration::from_millis(250);

impl Tracker {
    /// A tracker; `online` are users announced online before a restart, who get one grace to
    /// come back before their "offline" is sent.
    pub fn new(
        grace: Duration,
        webhooks: Webhooks,
        store: Option<HookStore>,
        online: Vec<String>,
    ) -> (PresenceHandle, Self) {
        let (tx, queries) = mpsc::channel(64);
        let mut tracker = Self {
            grace,
            webhooks,
            store,
            announced: HashMap::new(),
            due: BTreeSet::new(),
            queries,
            cluster: None,
            local: HashMap::new(),
            unpublished: HashMap::new(),
        };
        let (now_text, _) = now_rfc3339();
        let deadline = Instant::now() + grace;
        for user in online {
            let subject = Subject::User(user);
            tracker.due.insert((deadline, subject.clone()));
            tracker.announced.insert(subject, Entry { local: 0, left_at: Some((deadline, now_text.clone())) });
        }
        (PresenceHandle { queries: tx }, tracker)
    }

    /// Keeps presence in Redis instead of this process (cluster mode).
    pub fn with_cluster(mut self, cluster: ClusterPresence) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Runs until `shutdown` or until the hub drops its sender.
    pub async fn run(mut self, mut counts: mpsc::Receiver<StreamCount>, shutdown: CancellationToken) {
        if let Some(cluster) = self.cluster.take() {
            return self.run_cluster(cluster, counts, shutdown).await;
        }
        loop {
            let next = self.due.first().map(|(at, _)| *at);
            tokio::select! {
                count = counts.recv() => match count {
                    Some(count) => self.on_count(&count.stream, count.subscribers),
                    None => return,
                },
                Some(reply) = self.queries.recv() => {
                    let _ = reply.send(Some(self.online_users()));
                }
                () = sleep_until(next) => self.on_due(Instant::now()),
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Cluster mode: counts go to Redis; a sweep every [`SWEEP_PERIOD`] renews the lease and
    /// announces the offlines this node claimed (its own or a dead node's).
    async fn run_cluster(
        mut self,
        mut cluster: ClusterPresence,
        mut counts: mpsc::Receiver<StreamCount>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(SWEEP_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // The first tick is immediate: the node registers before publishing counts.
                biased;
                _ = tick.tick() => self.sweep(&mut cluster).await,
                count = counts.recv() => match count {
                    Some(count) => self.publish_count(&mut cluster, &count.stream, count.subscribers).await,
                    None => return,
                },
                Some(reply) = self.queries.recv() => {
                    let _ = reply.send(cluster_users(&mut cluster).await);
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn publish_count(&mut self, cluster: &mut ClusterPresence, stream: &str, subscribers: usize) {
        let Some(subject) = Subject::of(stream) else {
            return;
        };
        if subscribers == 0 {
            self.local.remove(&subject);
        } else {
            self.local.insert(subject.clone(), subscribers);
        }
        self.unpublished.remove(&subject);
        self.publish(cluster, subject, subscribers).await;
    }

    /// Sends one count to Redis; one it does not take is kept for the next sweep.
    async fn publish(&mut self, cluster: &mut ClusterPresence, subject: Subject, count: usize) {
        match cluster.update(&subject.key(), count).await {
            Ok(Some(total)) => self.announce_online(&subject, total),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "presence count not published; retried at the next sweep");
                self.unpublished.insert(subject, count);
            }
        }
    }

    async fn sweep(&mut self, cluster: &mut ClusterPresence) {
        let swept = match cluster.sweep().await {
            Ok(swept) => swept,
            Err(e) => return tracing::warn!(error = %e, "presence sweep failed"),
        };
        for (key, last_seen) in &swept.offline {
            if let Some(subject) = Subject::from_key(key) {
                self.announce_offline(&subject, last_seen);
            }
        }
        for (url, hook) in swept.adopted {
            tracing::info!(url, id = %hook.id, "adopting a webhook owed by a node that died");
            self.webhooks.requeue(&url, hook);
        }
        let retry: Vec<(Subject, usize)> = if swept.registered {
            self.unpublished.drain().collect()
        } else {
            // Reaped while cut off from Redis (or just started): tell the cluster again.
            self.unpublished.clear();
            self.local.iter().map(|(s, n)| (s.clone(), *n)).collect()
        };
        for (subject, n) in retry {
            self.publish(cluster, subject, n).await;
        }
    }

    /// A stream's local subscriber count changed.
    fn on_count(&mut self, stream: &str, subscribers: usize) {
        let Some(subject) = Subject::of(stream) else {
            return;
        };
        match self.announced.get_mut(&subject) {
            Some(entry) => {
                entry.local = subscribers;
                if subscribers > 0 {
                    // Back within the grace: nothing to announce.
                    if let Some((at, _)) = entry.left_at.take() {
                        self.due.remove(&(at, subject));
                    }
                } else if entry.left_at.is_none() {
                    let at = Instant::now() + self.grace;
                    entry.left_at = Some((at, now_rfc3339().0));
                    self.due.insert((at, subject));
                }
            }
            None if subscribers > 0 => {
                self.announce_online(&subject, subscribers);
                self.announced.insert(subject, Entry { local: subscribers, left_at: None });
            }
            None => {}
        }
    }

    /// Sends the "offline" of every subject whose grace ended by `now`.
    fn on_due(&mut self, now: Instant) {
        while let Some((at, subject)) = self.due.first().cloned() {
            if at > now {
                break;
            }
            self.due.pop_first();
            if let Some(Entry { left_at: Some((_, last_seen)), .. }) = self.announced.remove(&subject) {
                self.announce_offline(&subject, &last_seen);
            }
        }
    }

    fn announce_online(&self, subject: &Subject, connections: usize) {
        match subject {
            Subject::User(user) => {
                self.remember(user, true);
                self.webhooks.emit("user.online", json!({"user": user, "connections": connections}));
            }
            Subject::Channel(channel) => self.webhooks.emit("channel.occupied", json!({"channel": channel})),
        }
    }

    fn announce_offline(&self, subject: &Subject, last_seen: &str) {
        match subject {
            Subject::User(user) => {
                self.remember(user, false);
                self.webhooks.emit("user.offline", json!({"user": user, "last_seen": last_seen}));
            }
            Subject::Channel(channel) => self.webhooks.emit("channel.vacated", json!({"channel": channel})),
        }
    }

    /// Keeps the announced-online set in `--data-dir` (small writes, one per transition).
    fn remember(&self, user: &str, online: bool) {
        let Some(store) = &self.store else {
            return;
        };
        if let Err(e) = store.set_online(user, online, now_rfc3339().1) {
            tracing::error!(error = %e, user, "presence not stored");
        }
    }

    fn online_users(&self) -> Vec<OnlineUser> {
        let mut users: Vec<OnlineUser> = self
            .announced
            .iter()
            .filter_map(|(subject, entry)| match subject {
                Subject::User(user) => Some(OnlineUser { user: user.clone(), connections: entry.local }),
                Subject::Channel(_) => None,
            })
            .collect();
        users.sort_by(|a, b| a.user.cmp(&b.user));
        users
    }
}

/// Users announced online across the cluster; `None` when Redis cannot be read.
async fn cluster_users(cluster: &mut ClusterPresence) -> Option<Vec<OnlineUser>> {
    let online = cluster.online().await.map_err(|e| tracing::warn!(error = %e, "online users not read")).ok()?;
    let mut users: Vec<OnlineUser> = online
        .into_iter()
        .filter_map(|(key, connections)| match Subject::from_key(&key) {
            Some(Subject::User(user)) => Some(OnlineUser { user, connections }),
            _ => None,
        })
        .collect();
    users.sort_by(|a, b| a.user.cmp(&b.user));
    Some(users)
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Value;

    use super::*;
    use crate::metrics::Metrics;
    use crate::webhook::Hook;

    /// The default `--offline-grace`.
    const GRACE: Duration = Duration::from_secs(5);

    struct Rig {
        counts: mpsc::Sender<StreamCount>,
        hooks: mpsc::Receiver<Arc<Hook>>,
        presence: PresenceHandle,
    }

    fn rig() -> Rig {
        let (webhooks, hooks) = Webhooks::capture(Arc::new(Metrics::new().expect("metrics")));
        let (presence, tracker) = Tracker::new(GRACE, webhooks, None, Vec::new());
        let (counts, rx) = mpsc::channel(64);
        tokio::spawn(tracker.run(rx, CancellationToken::new()));
        Rig { counts, hooks, presence }
    }

    impl Rig {
        async fn count(&self, stream: &str, subscribers: usize) {
            self.counts.send(StreamCount { stream: stream.into(), subscribers }).await.expect("tracker runs");
        }

        /// The next hook's type and data.
        async fn next(&mut self) -> (String, Value) {
            let hook = self.hooks.recv().await.expect("a hook");
            let body: Value = serde_json::from_str(&hook.body).expect("json body");
            (body["type"].as_str().unwrap_or_default().to_string(), body["data"].clone())
        }

        /// True when no hook is pending after letting the tracker run.
        async fn quiet(&mut self) -> bool {
            tokio::task::yield_now().await;
            self.presence.users().await.expect("tracker runs");
            self.hooks.try_recv().is_err()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn offline_is_sent_one_grace_after_the_last_connection_left() {
        let mut rig = rig();
        rig.count("user:7", 1).await;
        assert_eq!(rig.next().await, ("user.online".into(), json!({"user": "7", "connections": 1})));
        rig.count("user:7", 2).await;
        rig.count("user:7", 1).await;
        rig.count("user:7", 0).await;
        let left = Instant::now();
        tokio::time::sleep(GRACE - Duration::from_millis(1)).await;
        assert!(rig.quiet().await, "nothing before the grace ends");
        let (kind, data) = rig.next().await;
        assert_eq!(kind, "user.offline");
        assert_eq!(data["user"], "7");
        assert!(data["last_seen"].is_string());
        assert_eq!(Instant::now() - left, GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_within_the_grace_sends_nothing() {
        let mut rig = rig();
        rig.count("user:7", 1).await;
        assert_eq!(rig.next().await.0, "user.online");
        for _ in 0..3 {
            rig.count("user:7", 0).await;
            tokio::time::sleep(GRACE - Duration::from_millis(10)).await;
            rig.count("user:7", 1).await;
        }
        tokio::time::sleep(GRACE * 3).await;
        assert!(rig.quiet().await, "reloads never flap");
        assert_eq!(rig.presence.users().await, Some(vec![OnlineUser { user: "7".into(), connections: 1 }]));
    }

    #[tokio::test(start_paused = true)]
    async fn hooks_alternate_per_user_and_channels_get_occupied_and_vacated() {
        let mut rig = rig();
        for _ in 0..2 {
            rig.count("user:a", 1).await;
            rig.count("room:1", 1).await;
            assert_eq!(rig.next().await.0, "user.online");
            assert_eq!(rig.next().await, ("channel.occupied".into(), json!({"channel": "room:1"})));
            rig.count("room:1", 0).await;
            rig.count("user:a", 0).await;
            tokio::time::sleep(GRACE).await;
            let mut kinds = vec![rig.next().await.0, rig.next().await.0];
            kinds.sort();
            assert_eq!(kinds, ["channel.vacated", "user.offline"]);
        }
        rig.count("role:admin", 1).await;
        assert!(rig.quiet().await, "role streams are not channels");
        assert_eq!(rig.presence.users().await, Some(vec![]));
    }

    #[tokio::test(start_paused = true)]
    async fn users_online_before_a_restart_get_one_grace_to_come_back() {
        let (webhooks, mut hooks) = Webhooks::capture(Arc::new(Metrics::new().expect("metrics")));
        let (_presence, tracker) = Tracker::new(GRACE, webhooks, None, vec!["back".into(), "gone".into()]);
        let (counts, rx) = mpsc::channel(64);
        tokio::spawn(tracker.run(rx, CancellationToken::new()));
        counts.send(StreamCount { stream: "user:back".into(), subscribers: 1 }).await.expect("runs");
        tokio::time::sleep(GRACE * 2).await;
        let hook = hooks.recv().await.expect("one hook");
        let body: Value = serde_json::from_str(&hook.body).expect("json");
        assert_eq!((body["type"].as_str(), body["data"]["user"].as_str()), (Some("user.offline"), Some("gone")));
        assert!(hooks.try_recv().is_err(), "no second online for a user already announced");
    }
}
