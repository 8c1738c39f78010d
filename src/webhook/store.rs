//! Owed webhooks on disk for `--data-dir`: `webhooks.redb` holds every hook not yet delivered
//! (per URL, in order) and the users announced online, so a restarted hub neither drops a hook
//! nor announces a user online twice in a row. A file of its own, apart from the history store.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::Hook;

/// (URL, order) to the hook as JSON.
const PENDING: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("pending");
/// Users whose last hook was `user.online`.
const ONLINE: TableDefinition<&str, u64> = TableDefinition::new("online");

/// Why the webhook store failed.
#[derive(Debug, thiserror::Error)]
#[error("webhook store: {0}")]
pub struct HookStoreError(String);

fn err(e: impl std::fmt::Display) -> HookStoreError {
    HookStoreError(e.to_string())
}

/// What the store held at startup.
#[derive(Debug, Default)]
pub struct Owed {
    /// Hooks not yet delivered: (URL, order, hook), in order per URL.
    pub pending: Vec<(String, u64, Hook)>,
    /// Users announced online.
    pub online: Vec<String>,
}

/// The open database; cheap to clone.
#[derive(Clone)]
pub struct HookStore {
    db: Arc<Database>,
}

impl HookStore {
    /// Opens (or creates) `dir/webhooks.redb` and reads what is owed.
    pub fn open(dir: &Path) -> Result<(Self, Owed), HookStoreError> {
        std::fs::create_dir_all(dir).map_err(err)?;
        let db = Database::create(dir.join("webhooks.redb")).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(PENDING).map_err(err)?;
        txn.open_table(ONLINE).map_err(err)?;
        txn.commit().map_err(err)?;
        let store = Self { db: Arc::new(db) };
        let owed = store.read()?;
        Ok((store, owed))
    }

    fn read(&self) -> Result<Owed, HookStoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let mut owed = Owed::default();
        for row in txn.open_table(PENDING).map_err(err)?.iter().map_err(err)? {
            let (key, value) = row.map_err(err)?;
            let (url, order) = key.value();
            match serde_json::from_slice::<Hook>(value.value()) {
                Ok(hook) => owed.pending.push((url.to_string(), order, hook)),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable stored webhook"),
            }
        }
        for row in txn.open_table(ONLINE).map_err(err)?.iter().map_err(err)? {
            let (user, _) = row.map_err(err)?;
            owed.online.push(user.value().to_string());
        }
        Ok(owed)
    }

    /// Records hooks owed to `url` (before any attempt, so a crash cannot lose them).
    pub fn add(&self, url: &str, hooks: &[(u64, Arc<Hook>)]) -> Result<(), HookStoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(PENDING).map_err(err)?;
            for (order, hook) in hooks {
                let bytes = serde_json::to_vec(hook.as_ref()).map_err(err)?;
                table.insert((url, *order), bytes.as_slice()).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    /// Forgets a hook that was delivered or given up on.
    pub fn remove(&self, url: &str, order: u64) -> Result<(), HookStoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(PENDING).map_err(err)?.remove((url, order)).map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Records that `user` was announced online (`true`) or offline (`false`).
    pub fn set_online(&self, user: &str, online: bool, at_ms: u64) -> Result<(), HookStoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(ONLINE).map_err(err)?;
            if online {
                table.insert(user, at_ms).map_err(err)?;
            } else {
                table.remove(user).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }
}
