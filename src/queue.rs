//! A connection's bounded send queue: the hub pushes without ever waiting, the writer takes
//! everything queued at once. Lighter than a tokio mpsc channel, which preallocates a block of
//! slots and cache-padded state per channel; with one queue per idle connection that matters.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::hub::Outbound;

/// Spare capacity kept after a backlog drains; more is given back to the allocator.
const KEEP_CAPACITY: usize = 16;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds `capacity` items: the client is not reading fast enough.
    Full,
    /// The writer is gone.
    Closed,
}

/// What one look at the queue found.
enum Taken {
    Some,
    Empty,
    Closed,
}

struct Inner {
    items: VecDeque<Outbound>,
    closed: bool,
}

/// Bounded multi-producer, single-consumer queue of outbound frames.
pub struct SendQueue {
    inner: Mutex<Inner>,
    ready: Notify,
    capacity: usize,
}

impl SendQueue {
    /// An empty queue holding at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Self { inner: Mutex::new(Inner { items: VecDeque::new(), closed: false }), ready: Notify::new(), capacity }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an item without waiting.
    pub fn push(&self, item: Outbound) -> Result<(), PushError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(PushError::Closed);
        }
        if inner.items.len() >= self.capacity {
            return Err(PushError::Full);
        }
        inner.items.push_back(item);
        drop(inner);
        self.ready.notify_one();
        Ok(())
    }

    /// Waits until something is queued and moves up to `max` items into `out`.
    /// Returns false once the queue is closed and empty.
    pub async fn pop_into(&self, out: &mut Vec<Outbound>, max: usize) -> bool {
        loop {
            match self.take(out, max) {
                Taken::Some => return true,
                Taken::Closed => return false,
                // A push between the check and this await leaves a permit, so nothing is missed.
                Taken::Empty => self.ready.notified().await,
            }
        }
    }

    /// Moves up to `max` queued items into `out` without waiting; false when none were queued.
    pub fn take_into(&self, out: &mut Vec<Outbound>, max: usize) -> bool {
        matches!(self.take(out, max), Taken::Some)
    }

    fn take(&self, out: &mut Vec<Outbound>, max: usize) -> Taken {
        let mut inner = self.lock();
        if inner.items.is_empty() {
            return if inner.closed { Taken::Closed } else { Taken::Empty };
        }
        let n = max.min(inner.items.len());
        out.extend(inner.items.drain(..n));
        if inner.items.is_empty() && inner.items.capacity() > KEEP_CAPACITY {
            inner.items.shrink_to(KEEP_CAPACITY);
        }
        Taken::Some
    }

    /// Refuses further pushes (the writer has stopped) and drops what is queued.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::Utf8Bytes;

    fn item() -> Outbound {
        Outbound::frame(Utf8Bytes::from_static("x"))
    }

    #[tokio::test]
    async fn bounded_and_drained_in_order() {
        let q = SendQueue::new(2);
        assert_eq!(q.push(item()), Ok(()));
        assert_eq!(q.push(item()), Ok(()));
        assert_eq!(q.push(item()), Err(PushError::Full));
        let mut out = Vec::new();
        assert!(q.pop_into(&mut out, 64).await);
        assert_eq!(out.len(), 2);
        q.close();
        assert_eq!(q.push(item()), Err(PushError::Closed));
        assert!(!q.pop_into(&mut out, 64).await);
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_push() {
        let q = std::sync::Arc::new(SendQueue::new(4));
        let writer = {
            let q = std::sync::Arc::clone(&q);
            tokio::spawn(async move {
                let mut out = Vec::new();
                q.pop_into(&mut out, 64).await && out.len() == 1
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(q.push(item()), Ok(()));
        assert!(writer.await.expect("join"));
    }
}
