//! A country database that follows its file: when the file changes it is loaded and checked
//! in full, and swapped in only if it is good; a bad file leaves the previous database
//! serving and its error reported.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::{GeoDb, GeoError};

/// What identifies a version of the file.
type Stamp = (SystemTime, u64);

/// A [`GeoDb`] reloaded when its file changes. Callers drive [`Self::reload_if_changed`]
/// (the edge does every few seconds); lookups never wait for a reload.
#[derive(Debug)]
pub struct ReloadingGeo {
    path: PathBuf,
    current: RwLock<Arc<GeoDb>>,
    seen: Mutex<Option<Stamp>>,
}

fn stamp(path: &Path) -> Result<Stamp, GeoError> {
    let meta = std::fs::metadata(path).map_err(|source| GeoError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Ok((modified, meta.len()))
}

impl ReloadingGeo {
    /// Loads the database at `path`; it must be good now.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, GeoError> {
        let path = path.into();
        let seen = stamp(&path)?;
        let db = GeoDb::open(&path)?;
        Ok(Self {
            path,
            current: RwLock::new(Arc::new(db)),
            seen: Mutex::new(Some(seen)),
        })
    }

    /// The database in service.
    pub fn get(&self) -> Arc<GeoDb> {
        match self.current.read() {
            Ok(db) => db.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads if the file's modification time or size changed since last look. `Ok(true)`
    /// when a new database went into service; an error leaves the old one serving (and is not
    /// retried until the file changes again).
    pub fn reload_if_changed(&self) -> Result<bool, GeoError> {
        let now = stamp(&self.path)?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == Some(now) {
                return Ok(false);
            }
            *seen = Some(now);
        }
        let db = GeoDb::open(&self.path)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(db);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/geoip")
            .join(name)
    }

    /// Replaces `dest` with `src` and gives it a distinct modification time.
    fn install(src: &Path, dest: &Path, secs: u64) {
        std::fs::copy(src, dest).unwrap();
        let file = std::fs::File::options().write(true).open(dest).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn a_bad_file_keeps_the_old_database_serving() {
        let dir = std::env::temp_dir().join(format!("cadenza-geo-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let live = dir.join("country.mmdb");
        install(&fixture("GeoIP2-Country-Test.mmdb"), &live, 1_000);
        let geo = ReloadingGeo::open(&live).unwrap();
        let sweden: std::net::IpAddr = "89.160.20.112".parse().unwrap();
        assert_eq!(geo.get().country(sweden).as_deref(), Some("SE"));
        assert!(!geo.reload_if_changed().unwrap(), "unchanged file reloaded");

        install(
            &fixture("MaxMind-DB-test-broken-search-tree-24.mmdb"),
            &live,
            2_000,
        );
        assert!(geo.reload_if_changed().is_err());
        assert_eq!(
            geo.get().country(sweden).as_deref(),
            Some("SE"),
            "old database dropped"
        );
        assert!(
            !geo.reload_if_changed().unwrap(),
            "bad file retried without a change"
        );

        install(&fixture("GeoLite2-Country-Test.mmdb"), &live, 3_000);
        assert!(geo.reload_if_changed().unwrap());
        assert_eq!(geo.get().country(sweden).as_deref(), Some("SE"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
