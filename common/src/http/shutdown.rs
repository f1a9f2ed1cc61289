//! A shutdown signal that any number of tasks can wait on.

use tokio::sync::watch;

/// Fires the signal.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Waits for the signal; clone it for every task that must stop.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A new signal and its trigger.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Resolves once the trigger fires (or is dropped).
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped, which also means stop.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

impl ShutdownTrigger {
    /// Tells every waiter to stop.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}
