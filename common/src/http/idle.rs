//! Connections waiting for their next request, idle longest first. A listener at its cap
//! closes the first of them to give its slot to a new client, as nginx reuses its kept-alive
//! connections, instead of turning the newcomer away while dormant clients hold every slot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// One listener's idle connections; clones share the queue.
#[derive(Debug, Clone, Default)]
pub struct IdleQueue(Arc<Mutex<Waiting>>);

#[derive(Debug, Default)]
struct Waiting {
    /// The number the next place gets: places are numbered as they are taken, so the first
    /// is the connection idle longest.
    next: u64,
    /// Each waiting connection's bell, by its place.
    places: BTreeMap<u64, Arc<Notify>>,
}

/// A connection's place in the queue while it waits; it leaves when this is dropped.
#[derive(Debug)]
pub struct Place<'a> {
    queue: &'a IdleQueue,
    number: Option<u64>,
}

impl IdleQueue {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a connection that is waiting for a request: `bell` rings (a stored
    /// notification, so none is missed) if it is chosen to make room.
    pub fn join(&self, bell: &Arc<Notify>) -> Place<'_> {
        let mut waiting = self.waiting();
        let number = waiting.next;
        waiting.next += 1;
        waiting.places.insert(number, bell.clone());
        Place {
            queue: self,
            number: Some(number),
        }
    }

    /// Takes the connection idle longest out of the queue and rings its bell, so it closes;
    /// false when no connection is waiting.
    pub fn reclaim(&self) -> bool {
        let first = self.waiting().places.pop_first();
        match first {
            Some((_, bell)) => {
                bell.notify_one();
                true
            }
            None => false,
        }
    }

    /// Connections waiting now.
    pub fn len(&self) -> usize {
        self.waiting().places.len()
    }

    /// Whether no connection is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Place<'_> {
    /// Leaves the queue as a request begins: false if the connection was chosen to make room
    /// meanwhile, and should close once this request is answered.
    pub fn leave(mut self) -> bool {
        self.remove()
    }

    fn remove(&mut self) -> bool {
        match self.number.take() {
            Some(number) => self.queue.waiting().places.remove(&number).is_some(),
            None => false,
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_connection_idle_longest_is_chosen_and_told() {
        let queue = IdleQueue::default();
        let bells: Vec<_> = (0..3).map(|_| Arc::new(Notify::new())).collect();
        let first = queue.join(&bells[0]);
        let second = queue.join(&bells[1]);
        let third = queue.join(&bells[2]);
        // The first goes back to work and later waits again: now it is the newest.
        assert!(first.leave());
        let first = queue.join(&bells[0]);
        assert!(queue.reclaim());
        // The second, now idle longest, was told (the notification waits for it) and is out.
        tokio::time::timeout(std::time::Duration::from_secs(1), bells[1].notified())
            .await
            .unwrap();
        assert!(!second.leave());
        assert_eq!(queue.len(), 2);
        // A connection that ends leaves the queue; the rest are chosen in order, then none.
        drop(first);
        assert!(queue.reclaim());
        assert!(!third.leave());
        assert!(!queue.reclaim());
        assert!(queue.is_empty());
    }
}
