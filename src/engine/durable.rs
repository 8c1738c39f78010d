//! Group commit for `--data-dir`: one writer thread owns the store and writes every publish that
//! arrived while the previous commit was on disk in one transaction, so concurrent publishers
//! share one fsync. Only after the commit are the events put into history and handed to the hub
//! ([`Core::apply`]), so nothing reaches a client, a replay or a `200` before it is on disk, and
//! a crash never delivers an event the restarted hub does not know. The disk wait happens on
//! this thread alone: the hub actor and the runtime's workers never wait for it.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::memory::{Accepted, Core};
use super::{EngineError, NewEvent};
use crate::metrics::Metrics;
use crate::protocol::Event;
use crate::store::{Store, StoreError};

/// Events in one transaction at most; a larger backlog is split over several commits.
const MAX_GROUP_EVENTS: usize = 4096;

enum Job {
    /// Write a batch, then deliver it.
    Publish { batch: Vec<NewEvent>, reply: oneshot::Sender<Result<Accepted, EngineError>> },
    /// Remove evicted events from disk (nothing to publish).
    Flush,
    /// Finish the queued jobs and stop.
    Stop,
}

/// The handle to the writer thread.
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
    thread: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Starts the writer thread over `store`.
    pub(super) fn start(store: Store, core: Arc<Core>, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let (jobs, inbox) = mpsc::channel();
        let for_thread = Arc::clone(&metrics);
        let thread = std::thread::Builder::new()
            .name("wshub-store".into())
            .spawn(move || write_loop(&store, &core, &for_thread, &inbox))
            .map_err(|e| StoreError::new(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { jobs, thread: Mutex::new(Some(thread)), metrics })
    }

    /// Writes `batch` with the next group commit and hands it to the hub; answers once it is on
    /// disk.
    pub(super) async fn publish(&self, batch: Vec<NewEvent>) -> Result<Accepted, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.metrics.store_waiting.inc();
        if self.jobs.send(Job::Publish { batch, reply }).is_err() {
            self.metrics.store_waiting.dec();
            return Err(EngineError::Stopped);
        }
        // A dropped reply means the writer stopped before taking the job: nothing was written.
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Asks for evicted events to be removed from disk soon.
    pub(super) fn flush(&self) {
        let _ = self.jobs.send(Job::Flush);
    }

    /// Writes what is queued, stops the thread and waits for it, so the data dir is closed.
    pub(super) async fn close(&self) {
        let _ = self.jobs.send(Job::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread
            && let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await
        {
            tracing::error!("the data dir writer panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.jobs.send(Job::Stop);
    }
}

/// One publish of a group: its events and where its answer goes.
struct Pending {
    events: Vec<Arc<Event>>,
    reply: oneshot::Sender<Result<Accepted, EngineError>>,
}

fn write_loop(store: &Store, core: &Core, metrics: &Metrics, inbox: &mpsc::Receiver<Job>) {
    let mut stopping = false;
    while !stopping {
        let Ok(first) = inbox.recv() else { break };
        // Everything that queued up while the previous commit was on disk joins this one.
        let mut jobs = vec![first];
        let mut size = 0;
        while size < MAX_GROUP_EVENTS
            && let Ok(job) = inbox.try_recv()
        {
            if let Job::Publish { batch, .. } = &job {
                size += batch.len();
            }
            jobs.push(job);
        }
        let mut group = Vec::new();
        let mut after = core.position();
        for job in jobs {
            match job {
                Job::Publish { batch, reply } => {
                    let events = Core::stamp_batch(batch, after);
                    after += events.len() as u64;
                    group.push(Pending { events, reply });
                }
                Job::Flush => {}
                Job::Stop => stopping = true,
            }
        }
        let answered = group.len() as i64;
        commit_group(store, core, metrics, group);
        metrics.store_waiting.sub(answered);
    }
}

/// Writes a group and the pending evictions in one transaction, then applies and answers it.
fn commit_group(store: &Store, core: &Core, metrics: &Metrics, group: Vec<Pending>) {
    let (evicted, floor) = match core.lock() {
        Ok(mut state) => (std::mem::take(&mut state.unsaved_evictions), state.history.evicted_upto()),
        Err(e) => return refuse(group, &e),
    };
    let events: Vec<Arc<Event>> = group.iter().flat_map(|p| p.events.iter().cloned()).collect();
    if events.is_empty() && evicted.is_empty() {
        return;
    }
    let timer = metrics.store_commit_seconds.start_timer();
    let written = store.commit(&events, &evicted, floor);
    timer.observe_duration();
    metrics.store_commits.inc();
    if let Err(e) = written {
        tracing::error!(error = %e, events = events.len(), "durable write failed; publishes refused");
        if let Ok(mut state) = core.lock() {
            state.unsaved_evictions.extend(evicted);
        }
        return refuse(group, &EngineError::Storage(e.to_string()));
    }
    let mut state = match core.lock() {
        Ok(state) => state,
        Err(e) => return refuse(group, &e),
    };
    for pending in group {
        let accepted = core.apply(&mut state, pending.events);
        // A publisher that went away still had its event written and delivered.
        let _ = pending.reply.send(accepted);
    }
}

fn refuse(group: Vec<Pending>, error: &EngineError) {
    for pending in group {
        let _ = pending.reply.send(Err(error.clone()));
    }
}
