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
    queries: mpsc::Sender<oneshot::Sender<Vec<OnlineUser>>>,
}

impl PresenceHandle {
    /// Users announced online (and not yet announced offline), sorted; `None` when stopped.
    pub async fn users(&self) -> Option<Vec<OnlineUser>> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(tx).await.ok()?;
        rx.await.ok()
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
    queries: mpsc::Receiver<oneshot::Sender<Vec<OnlineUser>>>,
}

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
        let mut tracker = Self { grace, webhooks, store, announced: HashMap::new(), due: BTreeSet::new(), queries };
        let (now_text, _) = now_rfc3339();
        let deadline = Instant::now() + grace;
        for user in online {
            let subject = Subject::User(user);
            tracker.due.insert((deadline, subject.clone()));
            tracker.announced.insert(subject, Entry { local: 0, left_at: Some((deadline, now_text.clone())) });
        }
        (PresenceHandle { queries: tx }, tracker)
    }

    /// Runs until `shutdown` or until the hub drops its sender.
    pub async fn run(mut self, mut counts: mpsc::Receiver<StreamCount>, shutdown: CancellationToken) {
        loop {
            let next = self.due.first().map(|(at, _)| *at);
            tokio::select! {
                count = counts.recv() => match count {
                    Some(count) => self.on_count(&count.stream, count.subscribers),
                    None => return,
                },
                Some(reply) = self.queries.recv() => {
                    let _ = reply.send(self.online_users());
                }
                () = sleep_until(next) => self.on_due(Instant::now()),
                () = shutdown.cancelled() => return,
            }
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
