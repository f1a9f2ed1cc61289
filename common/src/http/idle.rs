//! Connections waiting for their next request, idle longest first. A listener at its cap
//! closes the first of them to give its slot to a new client, as nginx reuses its kept-alive
//! connections, instead of turning the newcomer away while dormant clients hold every slot;
//! and it closes those that have waited past the keep-alive time, however their clients keep
//! them alive (HTTP/2 PINGs), as nginx's `keepalive_timeout` does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;

/// How often connections are looked at for having outstayed a `keepalive` time: a few times
/// within it, at most once a second (TCP listeners and the edge's QUIC drivers alike).
pub fn sweep_every(keepalive: std::time::Duration) -> std::time::Duration {
    (keepalive / 8).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    )
}

/// One listener's idle connections; clones share the queue.
#[derive(Debug, Clone, Default)]
pub struct IdleQueue(Arc<Mutex<Waiting>>);

#[derive(Debug, Default)]
struct Waiting {
    /// The number the next place gets: places are numbered as they are taken, so the first
    /// is the connection idle longest.
    next: u64,
    /// Each waiting connection's bell and since when it has waited, by its place.
    places: BTreeMap<u64, (Instant, Arc<Notify>)>,
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
        Place {
            queue: self,
            number: Some(self.enter(bell)),
        }
    }

    fn enter(&self, bell: &Arc<Notify>) -> u64 {
        let mut waiting = self.waiting();
        let number = waiting.next;
        waiting.next += 1;
        waiting
            .places
            .insert(number, (Instant::now(), bell.clone()));
        number
    }

    /// Whether place `number` was still in the queue (and is no longer).
    fn leave(&self, number: u64) -> bool {
        self.waiting().places.remove(&number).is_some()
    }

    /// Takes the connection idle longest out of the queue and rings its bell, so it closes;
    /// false when no connection is waiting.
    pub fn reclaim(&self) -> bool {
        let first = self.waiting().places.pop_first();
        match first {
            Some((_, (_, bell))) => {
                bell.notify_one();
                true
            }
            None => false,
        }
    }

    /// Takes the connections that have waited since before `cutoff` out of the queue and
    /// rings their bells, so they close; how many.
    pub fn expire(&self, cutoff: Instant) -> u64 {
        let mut expired = 0;
        let mut waiting = self.waiting();
        // Places are numbered as they are taken, so the longest waiting come first.
        while let Some(entry) = waiting.places.first_entry() {
            if entry.get().0 >= cutoff {
                break;
            }
            entry.remove().1.notify_one();
            expired += 1;
        }
        expired
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
        self.number
            .take()
            .is_some_and(|number| self.queue.leave(number))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What a connection served by hyper (HTTP/2) is doing, for the queue: the requests it has
/// open, a response counting until its body is done, and while it has none, its place in the
/// queue. Shared by its service, its responses' bodies and its task, which listens for
/// [`Activity::bell`].
#[derive(Debug)]
pub struct Activity {
    queue: IdleQueue,
    bell: Arc<Notify>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    open: usize,
    place: Option<u64>,
    /// Chosen to make room, or ended: it never waits in the queue again.
    done: bool,
}

/// One open request of an [`Activity`]; the connection is idle again once all are dropped.
#[derive(Debug)]
pub struct Open(Arc<Activity>);

impl Activity {
    /// A new connection, idle until its first request.
    pub fn new(queue: &IdleQueue) -> Arc<Self> {
        let bell = Arc::new(Notify::new());
        let place = queue.enter(&bell);
        Arc::new(Self {
            queue: queue.clone(),
            bell,
            state: Mutex::new(State {
                open: 0,
                place: Some(place),
                done: false,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rings once the connection is chosen to make room: it should say goodbye (HTTP/2's
    /// GOAWAY), finishing what it has open.
    pub fn bell(&self) -> &Notify {
        &self.bell
    }

    /// A request begins.
    pub fn begin(self: &Arc<Self>) -> Open {
        let mut state = self.state();
        state.open += 1;
        if let Some(place) = state.place.take()
            && !self.queue.leave(place)
        {
            // Chosen just now: the bell has rung, and the connection is on its way out.
            state.done = true;
        }
        Open(self.clone())
    }

    /// The connection ends: out of the queue for good.
    pub fn end(&self) {
        let mut state = self.state();
        state.done = true;
        if let Some(place) = state.place.take() {
            self.queue.leave(place);
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let activity = &self.0;
        let mut state = activity.state();
        state.open -= 1;
        if state.open == 0 && !state.done {
            state.place = Some(activity.queue.enter(&activity.bell));
        }
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        self.end();
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

    #[tokio::test]
    async fn connections_waiting_past_the_keepalive_time_are_told_to_go() {
        let queue = IdleQueue::default();
        let bells: Vec<_> = (0..3).map(|_| Arc::new(Notify::new())).collect();
        let old = queue.join(&bells[0]);
        let older_activity = Activity::new(&queue);
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        let cutoff = Instant::now();
        let young = queue.join(&bells[1]);
        assert_eq!(queue.expire(cutoff), 2);
        for bell in [&bells[0], older_activity.bell()] {
            tokio::time::timeout(std::time::Duration::from_secs(1), bell.notified())
                .await
                .unwrap();
        }
        assert!(!old.leave(), "told to go");
        assert_eq!(queue.expire(cutoff), 0);
        assert!(young.leave(), "a connection that has not waited long stays");
        // Once told, an HTTP/2 connection is not queued again after its last request.
        drop(older_activity.begin());
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_connection_is_idle_while_no_request_is_open() {
        let queue = IdleQueue::default();
        let activity = Activity::new(&queue);
        assert_eq!(
            queue.len(),
            1,
            "a new connection waits for its first request"
        );
        let first = activity.begin();
        let second = activity.begin();
        assert!(queue.is_empty());
        drop(first);
        assert!(queue.is_empty(), "one request is still open");
        drop(second);
        assert_eq!(queue.len(), 1);
        // Chosen while idle: told, and never queued again.
        assert!(queue.reclaim());
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            activity.bell().notified(),
        )
        .await
        .unwrap();
        drop(activity.begin());
        assert!(queue.is_empty());
        // Ended while idle: out of the queue.
        let other = Activity::new(&queue);
        other.end();
        assert!(!queue.reclaim());
    }
}
