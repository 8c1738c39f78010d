//! Durable history for `--data-dir`: accepted events and the history epoch in an embedded redb
//! database, so a restarted hub resumes clients exactly. Written before an event is delivered,
//! so a `200` from `/notify` means the event survives a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::protocol::Event;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const EPOCH: &str = "epoch";
/// Highest seq ever evicted; after a restart every stream counts as trimmed up to it.
const FLOOR: &str = "floor";

/// Why the durable store failed.
#[derive(Debug, thiserror::Error)]
#[error("data dir: {0}")]
pub struct StoreError(String);

impl StoreError {
    /// An error with this description.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// What a store holds at startup.
pub struct Restored {
    /// The epoch the events belong to.
    pub epoch: String,
    /// Highest seq evicted before the restart.
    pub floor: u64,
    /// Kept events in seq order.
    pub events: Vec<Arc<Event>>,
}

/// The open database.
pub struct Store {
    db: Database,
    dir: PathBuf,
}

impl Store {
    /// Opens (or creates) `dir/history.redb`; a new store gets `new_epoch`.
    pub fn open(dir: &Path, new_epoch: &str) -> Result<(Self, Restored), StoreError> {
        std::fs::create_dir_all(dir).map_err(err)?;
        let db = Database::create(dir.join("history.redb")).map_err(err)?;
        let store = Self { db, dir: dir.to_path_buf() };
        let restored = store.restore(new_epoch)?;
        Ok((store, restored))
    }

    fn restore(&self, new_epoch: &str) -> Result<Restored, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let (epoch, floor) = {
            let mut meta = txn.open_table(META).map_err(err)?;
            let epoch = match meta.get(EPOCH).map_err(err)? {
                Some(v) => v.value().to_string(),
                None => new_epoch.to_string(),
            };
            meta.insert(EPOCH, epoch.as_str()).map_err(err)?;
            let floor = meta.get(FLOOR).map_err(err)?.and_then(|v| v.value().parse().ok()).unwrap_or(0);
            txn.open_table(EVENTS).map_err(err)?;
            (epoch, floor)
        };
        txn.commit().map_err(err)?;
        let read = self.db.begin_read().map_err(err)?;
        let table = read.open_table(EVENTS).map_err(err)?;
        let mut events = Vec::new();
        for row in table.iter().map_err(err)? {
            let (_, value) = row.map_err(err)?;
            match serde_json::from_slice::<Event>(value.value()) {
                Ok(event) => events.push(Arc::new(event)),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable stored event"),
            }
        }
        Ok(Restored { epoch, floor, events })
    }

    /// Stores new events and forgets evicted ones in one durable transaction.
    pub fn commit(&self, added: &[Arc<Event>], evicted: &[u64], floor: u64) -> Result<(), StoreError> {
        stall::wait(&self.dir);
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(EVENTS).map_err(err)?;
            for event in added {
                let bytes = serde_json::to_vec(event.as_ref()).map_err(err)?;
                table.insert(event.seq, bytes.as_slice()).map_err(err)?;
            }
            for seq in evicted {
                table.remove(seq).map_err(err)?;
            }
            if !evicted.is_empty() {
                let mut meta = txn.open_table(META).map_err(err)?;
                meta.insert(FLOOR, floor.to_string().as_str()).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }
}

/// Test seam: holds back the commits of the store in one directory, as a slow disk would, to show
/// that only the publishes waiting for the disk wait. Costs one atomic load per commit otherwise.
#[doc(hidden)]
pub mod stall {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

    /// Held directories and how many commits wait in each.
    static HELD: Mutex<Vec<(PathBuf, usize)>> = Mutex::new(Vec::new());
    static RELEASED: Condvar = Condvar::new();
    static ANY: AtomicBool = AtomicBool::new(false);

    fn held() -> MutexGuard<'static, Vec<(PathBuf, usize)>> {
        HELD.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits in `dir` wait until the returned guard is dropped.
    pub fn hold(dir: &Path) -> Stall {
        held().push((dir.to_path_buf(), 0));
        ANY.store(true, Ordering::Release);
        Stall { dir: dir.to_path_buf() }
    }

    /// A held directory; dropping it lets the commits go.
    pub struct Stall {
        dir: PathBuf,
    }

    impl Stall {
        /// Commits now waiting in this directory.
        pub fn waiting(&self) -> usize {
            held().iter().find(|(d, _)| *d == self.dir).map_or(0, |(_, n)| *n)
        }
    }

    impl Drop for Stall {
        fn drop(&mut self) {
            let mut held = held();
            held.retain(|(d, _)| *d != self.dir);
            ANY.store(!held.is_empty(), Ordering::Release);
            RELEASED.notify_all();
        }
    }

    /// Blocks while `dir` is held.
    pub(super) fn wait(dir: &Path) {
        if !ANY.load(Ordering::Acquire) {
            return;
        }
        let mut held = held();
        match held.iter_mut().find(|(d, _)| d == dir) {
            Some((_, waiting)) => *waiting += 1,
            None => return,
        }
        // Released by dropping the `Stall`, which removes the entry (and its count).
        while held.iter().any(|(d, _)| d == dir) {
            held = RELEASED.wait(held).unwrap_or_else(PoisonError::into_inner);
        }
    }
}
