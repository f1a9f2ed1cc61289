//! Files an operator replaces in place (a certificate, a GeoIP database, a list of token
//! keys), looked at again while the process serves.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::http::Shutdown;

/// What tells a file changed: its modification time and length (`None` while it is missing).
pub type FileStamp = Option<(SystemTime, u64)>;

/// `path`'s [`FileStamp`] now.
pub fn file_stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        meta.len(),
    ))
}

/// Runs `check` off the async threads every `every`, and at once on SIGHUP (what `systemctl
/// reload` sends), until `shutdown`. `check` looks at its files and takes what changed; it
/// logs its own outcome. Registering for SIGHUP also keeps the signal from ending the
/// process.
pub fn spawn_follower(
    what: &'static str,
    every: Duration,
    mut shutdown: Shutdown,
    check: impl Fn() + Send + Sync + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let check = Arc::new(check);
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
                _ = hangup.recv() => tracing::info!("SIGHUP: checking {what}"),
            }
            let check = check.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || check()).await {
                tracing::error!(error = %e, "checking {what} failed");
            }
        }
    }))
}
