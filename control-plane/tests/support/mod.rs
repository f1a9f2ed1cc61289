//! The stores every control-plane test runs against: SQLite in a temporary directory, and
//! a fresh database on the PostgreSQL server `CADENZA_POSTGRES_URL` names (an admin URL;
//! `.ci/postgres.sh start` prints one). Without that variable the PostgreSQL half is skipped
//! with a notice, or fails when `CADENZA_REQUIRE_PEERS` is set.

#![allow(dead_code, clippy::unwrap_used)] // tests: a panic is the failure report

use cadenza_control_plane::{Backend, Store};

/// A store and what keeps it alive.
pub struct TestStore {
    pub store: Store,
    /// Where the SQLite files are (SQLite only).
    pub dir: Option<tempfile::TempDir>,
}

impl TestStore {
    pub fn name(&self) -> &'static str {
        match self.store.backend() {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// One store per backend available, each empty and migrated.
pub async fn stores() -> Vec<TestStore> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open_sqlite(&dir.path().join("c.sqlite"))
        .await
        .unwrap();
    let mut out = vec![TestStore {
        store: sqlite,
        dir: Some(dir),
    }];
    match std::env::var("CADENZA_POSTGRES_URL") {
        Ok(admin) => out.push(TestStore {
            store: Store::open(&fresh_postgres_database(&admin).await)
                .await
                .unwrap(),
            dir: None,
        }),
        Err(_) => {
            assert!(
                std::env::var_os("CADENZA_REQUIRE_PEERS").is_none(),
                "CADENZA_POSTGRES_URL is required (CADENZA_REQUIRE_PEERS is set)"
            );
            eprintln!("SKIPPED: PostgreSQL (CADENZA_POSTGRES_URL is not set)");
        }
    }
    out
}

/// Creates an empty database on the server at `admin` and returns its URL.
pub async fn fresh_postgres_database(admin: &str) -> String {
    use sqlx::Connection;
    let name = format!(
        "cadenza_test_{}",
        cadenza_common::hex_encode(&cadenza_common::random_bytes::<8>())
    );
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}
