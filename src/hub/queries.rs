//! Read-only views of the hub for the admin endpoints and cluster heartbeats: connections,
//! streams, presence and counts; and the operator's disconnect.

use std::collections::HashMap;

use serde::Serialize;

use super::{ConnId, Hub};
use crate::protocol::{BROADCAST, CloseReason};

/// One row of `GET /clients`.
#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    /// Client id.
    pub client_id: String,
    /// User (token `sub`).
    pub user: Option<String>,
    /// First role (as in `hub:connected`).
    pub role: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Subscribed channels (automatic streams not included).
    pub channels: Vec<String>,
    /// Peer address.
    pub remote: String,
    /// Unix ms of connect.
    pub connected_at_ms: u64,
    /// Unix ms of the last frame received.
    pub last_activity_ms: u64,
}

/// Counts for `/stats` and `/health`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HubStats {
    /// Open connections.
    pub connections: usize,
    /// Connections with a verified token.
    pub authenticated: usize,
    /// Anonymous connections.
    pub anonymous: usize,
    /// Connections per role.
    pub by_role: HashMap<String, usize>,
    /// Streams with at least one local subscriber (automatic ones included).
    pub channels: usize,
    /// Busiest streams, most subscribers first (at most 20).
    pub top_channels: Vec<(String, usize)>,
}

/// Users (with connection counts) and anonymous connections in one stream.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PresenceSnapshot {
    /// (user, connections), sorted by user.
    pub users: Vec<(String, usize)>,
    /// Connections without a user.
    pub anonymous: usize,
}

impl Hub {
    pub(super) fn kick(&mut self, client_id: Option<&str>, user: Option<&str>) -> usize {
        let by_client = client_id.and_then(|c| self.local_id(c));
        let targets: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(id, conn)| Some(**id) == by_client || (user.is_some() && conn.identity.user.as_deref() == user))
            .map(|(id, _)| *id)
            .collect();
        for id in &targets {
            self.drop_conn(*id, Some(CloseReason::Kicked));
        }
        targets.len()
    }

    pub(super) fn clients(&self, offset: usize, limit: usize) -> (usize, Vec<ClientInfo>) {
        let mut ids: Vec<&ConnId> = self.conns.keys().collect();
        ids.sort_unstable();
        let page = ids
            .into_iter()
            .skip(offset)
            .take(limit)
            .filter_map(|id| self.conns.get(id).map(|c| (id, c)))
            .map(|(id, c)| ClientInfo {
                client_id: self.handle.client_id(*id),
                user: c.identity.user.clone(),
                role: c.identity.role().map(str::to_string),
                roles: c.identity.roles.clone(),
                channels: c.channels.clone(),
                remote: c.remote.to_string(),
                connected_at_ms: c.connected_at_ms,
                last_activity_ms: c.shared.last_activity_ms(),
            })
            .collect();
        (self.conns.len(), page)
    }

    pub(super) fn channel_counts(&self) -> Vec<(String, usize)> {
        let mut list: Vec<(String, usize)> =
            self.streams.iter().map(|(name, subs)| (name.clone(), subs.len())).collect();
        list.push((BROADCAST.to_string(), self.conns.len()));
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        list
    }

    pub(super) fn presence(&self, channel: &str) -> (Vec<(String, usize)>, usize) {
        let ids: Vec<ConnId> = if channel == BROADCAST {
            self.conns.keys().copied().collect()
        } else {
            self.streams.get(channel).map(|s| s.iter().copied().collect()).unwrap_or_default()
        };
        let mut users: HashMap<String, usize> = HashMap::new();
        let mut anonymous = 0;
        for conn in ids.iter().filter_map(|id| self.conns.get(id)) {
            match &conn.identity.user {
                Some(user) => *users.entry(user.clone()).or_default() += 1,
                None => anonymous += 1,
            }
        }
        let mut users: Vec<(String, usize)> = users.into_iter().collect();
        users.sort();
        (users, anonymous)
    }

    pub(super) fn stats(&self) -> HubStats {
        let mut stats = HubStats { connections: self.conns.len(), ..Default::default() };
        for conn in self.conns.values() {
            if conn.identity.is_authenticated() {
                stats.authenticated += 1;
            } else {
                stats.anonymous += 1;
            }
            for role in &conn.identity.roles {
                *stats.by_role.entry(role.clone()).or_default() += 1;
            }
        }
        let mut channels = self.channel_counts();
        stats.channels = channels.len();
        channels.truncate(20);
        stats.top_channels = channels;
        stats
    }
}
