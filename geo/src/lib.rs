//! Where a listener is: MaxMind DB country lookups for the edge and the control plane.
//!
//! A [`GeoDb`] is loaded whole into memory and answered from there; a database that does not
//! open is refused with the reader's reason. Licensed territories themselves are a wire type
//! ([`cadenza_common::Territories`]) because edge tokens carry them.

mod proxy;
mod reload;

use std::net::IpAddr;
use std::path::Path;

use maxminddb::{MaxMindDbError, Reader, geoip2};

pub use proxy::{Cidr, CidrError, client_ip};
pub use reload::ReloadingGeo;

/// Why a database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file is not a readable MaxMind database.
    #[error("cannot load GeoIP database {path}: {source}")]
    Load {
        path: String,
        #[source]
        source: MaxMindDbError,
    },
    /// The file opened but its search tree or data section is damaged.
    #[error("GeoIP database {path} is corrupt: {source}")]
    Corrupt {
        path: String,
        #[source]
        source: MaxMindDbError,
    },
    /// The file could not be read.
    #[error("cannot read GeoIP database {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The database is not a country database.
    #[error("GeoIP database {path} is a {kind} database, not a country database")]
    WrongKind { path: String, kind: String },
}

/// A country database in memory.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GeoDb({})", self.reader.metadata().database_type)
    }
}

impl GeoDb {
    /// Loads the database at `path`.
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| GeoError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::from_bytes(bytes, &shown)
    }

    /// Loads a database from its bytes (`name` is what errors call it): what the fuzz target
    /// in `fuzz/` feeds arbitrary bytes through.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self, GeoError> {
        let shown = name.to_owned();
        let reader = Reader::from_source(bytes).map_err(|source| GeoError::Load {
            path: shown.clone(),
            source,
        })?;
        // Walk the whole tree and data section now, so a damaged file is refused at load
        // rather than answering some lookups wrongly later.
        reader.verify().map_err(|source| GeoError::Corrupt {
            path: shown.clone(),
            source,
        })?;
        let kind = reader.metadata().database_type.clone();
        if !(kind.contains("Country") || kind.contains("City")) {
            return Err(GeoError::WrongKind { path: shown, kind });
        }
        Ok(Self { reader })
    }

    /// The ISO 3166-1 alpha-2 country of `ip`, when the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        let ip = ip.to_canonical();
        let found = self.reader.lookup(ip).ok()?;
        let record: geoip2::Country<'_> = found.decode().ok()??;
        record
            .country
            .iso_code
            .or(record.registered_country.iso_code)
            .map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/geoip")
            .join(name)
    }

    #[test]
    fn looks_up_countries_from_maxminds_test_database() {
        let db = GeoDb::open(&fixture("GeoIP2-Country-Test.mmdb")).unwrap();
        let cases = [
            ("2.125.160.216", Some("GB")),
            ("89.160.20.112", Some("SE")),
            ("::ffff:89.160.20.112", Some("SE")),
            ("2001:218::1", Some("JP")),
            ("127.0.0.1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(db.country(ip.parse().unwrap()).as_deref(), want, "{ip}");
        }
    }

    #[test]
    fn refuses_maxminds_broken_databases() {
        for name in [
            "MaxMind-DB-test-broken-pointers-24.mmdb",
            "MaxMind-DB-test-broken-search-tree-24.mmdb",
            "GeoIP2-City-Test-Invalid-Node-Count.mmdb",
        ] {
            let err = GeoDb::open(&fixture(name)).unwrap_err();
            eprintln!("{name}: {err}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_country_database() {
        let dir = std::env::temp_dir().join(format!("cadenza-geo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.mmdb");
        std::fs::write(&junk, b"not a database").unwrap();
        assert!(matches!(GeoDb::open(&junk), Err(GeoError::Load { .. })));
        assert!(GeoDb::open(&dir.join("missing.mmdb")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
