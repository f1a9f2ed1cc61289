//! Playback grants over HTTPS against a control plane on SQLite and on PostgreSQL: latency
//! of one grant at a time, and throughput with concurrent clients. Each grant reads the
//! track, its licences and renditions from the primary store, decides the rights, opens the
//! sealed content key and signs an edge token.
//!
//! `cargo run --release -p cadenza-benches --bin grant_bench -- [TRACKS] [REQUESTS] [CLIENTS]`
//! (defaults 1,000, 5,000 and 16). PostgreSQL runs when `CADENZA_POSTGRES_URL` names a
//! server the bench may create a database on (`.ci/postgres.sh start` prints one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cadenza_common::http::client::{self, HttpClient, https_client};
use cadenza_common::http::{ServerLimits, Shutdown, serve_on, tls};
use cadenza_common::{
    AcousticFeatures, ContentKey, FileId, IngestRequest, JobOutcome, Loudness, Quality,
    RenditionRecord, SeekIndex, SigningKey, Territories, TrackId, TrackRegistration, UploadId,
};
use cadenza_control_plane::{
    ClientKind, ControlPlane, ControlPlaneConfig, GrantPolicy, KeyRing, MasterKey, Store,
};
use http::{Method, StatusCode};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn seed(store: &Store, tracks: usize) -> Result<Vec<TrackId>, Error> {
    let label = store.ensure_label("bench", now()).await?;
    let mut ids = Vec::with_capacity(tracks);
    for i in 0..tracks {
        let reg = TrackRegistration {
            ingest: IngestRequest {
                upload_id: UploadId::random(),
                title: format!("Track {i}"),
                artist: format!("Artist {}", i % 97),
                featuring: Vec::new(),
                isrc: None,
                territories: "WW,-CN".parse::<Territories>()?,
                album: Some(format!("Album {}", i % 211)),
                track_number: Some((i % 12) as u32 + 1),
                release_at: None,
                licences: Vec::new(),
            },
            label_id: label.clone(),
            master_sha256: format!("{i:064x}"),
        };
        store.create_track(&reg, now()).await?;
        let job = store
            .lease_job(now(), Duration::from_secs(60), 3)
            .await?
            .ok_or("no job to lease")?;
        let outcome = JobOutcome::Completed {
            renditions: Quality::ALL
                .iter()
                .map(|&quality| RenditionRecord {
                    quality,
                    file_id: FileId::random(),
                    size: 4_000_000,
                    bitrate_kbps: quality.kbps(),
                    key: ContentKey::random(),
                    plaintext_sha256: "00".repeat(32),
                    seek_index: SeekIndex {
                        header_bytes: 4000,
                        frames: 10_000_000,
                        points: (0..100)
                            .map(|p| cadenza_common::SeekPoint(p * 100_000, p * 40_000))
                            .collect(),
                    },
                })
                .collect(),
            master_frames: 10_000_000,
            master_sample_rate: 44_100,
            loudness: Loudness {
                integrated_lufs: -9.0,
                true_peak_dbtp: -0.3,
                track_gain_db: -5.0,
            },
            features: AcousticFeatures {
                tempo_bpm: Some(120.0),
                spectral_centroid_hz: 2000.0,
                energy_dbfs: -18.0,
                dynamics_db: 10.0,
            },
        };
        ids.push(store.complete_job(&job.job_id, &outcome).await?);
    }
    Ok(ids)
}

/// A listener's access token from the control plane at `base`, by the password grant (the
/// account and the app are made in the store directly).
async fn listener_token(store: &Store, client: &HttpClient, base: &str) -> Result<String, Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let app = store
        .create_client("Bench player", ClientKind::FirstParty, now)
        .await?;
    store
        .create_user("bench@example.com", "bench password", now)
        .await?;
    let answer: serde_json::Value = client::call_json(
        client,
        Method::POST,
        &format!("{base}/oauth/token"),
        None,
        Some(&serde_json::json!({
            "grant_type": "password",
            "client_id": app.client_id,
            "username": "bench@example.com",
            "password": "bench password",
        })),
        Duration::from_secs(10),
    )
    .await?;
    Ok(answer["access_token"]
        .as_str()
        .ok_or("the token endpoint gave no access token")?
        .to_owned())
}

async fn grant(client: &HttpClient, url: &str, token: &str, track: &TrackId) -> Result<(), Error> {
    let body = serde_json::to_vec(&serde_json::json!({"track_id": track, "quality": "high"}))?;
    let resp = client
        .request(client::request(
            Method::POST,
            url,
            Some(token),
            cadenza_common::http::full(body),
        )?)
        .await?;
    let status = resp.status();
    let bytes = client::read_all(resp.into_body(), url).await?;
    if status != StatusCode::OK {
        return Err(format!(
            "grant answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        )
        .into());
    }
    Ok(())
}

struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    per_sec: f64,
}

async fn run(
    name: &str,
    store: Store,
    tracks: usize,
    requests: usize,
    clients: usize,
) -> Result<Figures, Error> {
    let store = store.with_master_keys(KeyRing::new(MasterKey::generate(), []));
    let seeded = Instant::now();
    let ids = Arc::new(seed(&store, tracks).await?);
    eprintln!(
        "{name}: {tracks} tracks seeded in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );
    let (signing, _) = SigningKey::generate("bench")?;
    let cp = Arc::new(ControlPlane::new(
        ControlPlaneConfig {
            service_token: "bench".into(),
            job_lease: Duration::from_secs(60),
            max_job_attempts: 3,
            job_retry_backoff: Duration::from_secs(5),
            grants: GrantPolicy {
                edges: vec![cadenza_control_plane::EdgeSite::worldwide(
                    "https://edge.invalid",
                )],
                ..Default::default()
            },
            geo: None,
            trusted_proxies: Vec::new(),
            auth: Default::default(),
            cors: Default::default(),
        },
        store.clone(),
        signing,
    ));
    let pem = tls::self_signed(&["localhost", "127.0.0.1"])?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (trigger, shutdown): (_, Shutdown) = Shutdown::new();
    let served = serve_on(
        listener,
        Some(tls::server_config(&pem)?),
        ServerLimits::default(),
        cp.clone(),
        shutdown,
    )?;
    let base = format!("https://localhost:{}", served.addr.port());
    let url = format!("{base}/v1/playback");
    let client = https_client(tls::client_config(pem.cert.as_bytes())?);
    let token: Arc<str> = listener_token(&store, &client, &base).await?.into();
    // Warm the connection and the store's caches.
    for t in ids.iter().take(200) {
        grant(&client, &url, &token, t).await?;
    }
    let mut latencies = Vec::with_capacity(requests);
    for i in 0..requests {
        let started = Instant::now();
        grant(&client, &url, &token, &ids[(i * 7919) % ids.len()]).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, url, ids, token) = (
            https_client(tls::client_config(pem.cert.as_bytes())?),
            url.clone(),
            ids.clone(),
            token.clone(),
        );
        let share = requests / clients;
        tasks.push(tokio::spawn(async move {
            for i in 0..share {
                grant(
                    &client,
                    &url,
                    &token,
                    &ids[(c * share + i) * 104_729 % ids.len()],
                )
                .await?;
            }
            Ok::<usize, Error>(share)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    let per_sec = done as f64 / started.elapsed().as_secs_f64();
    drop(trigger);
    let _ = cp.flush_plays().await;
    Ok(Figures {
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        per_sec,
    })
}

async fn fresh_postgres(admin: &str) -> Result<String, Error> {
    use sqlx::Connection;
    let name = format!(
        "cadenza_bench_{}",
        cadenza_common::hex_encode(&cadenza_common::random_bytes::<6>())
    );
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let (base, _) = admin.rsplit_once('/').ok_or("admin URL has no database")?;
    Ok(format!("{base}/{name}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    tls::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    let tracks: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let requests: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let dir = tempfile::tempdir()?;
    let sqlite = Store::open_sqlite(&dir.path().join("bench.sqlite")).await?;
    let lite = run("sqlite", sqlite, tracks, requests, clients).await?;
    println!(
        "grants on SQLite: one at a time p50 {:.3} ms, p99 {:.3} ms; {clients} clients {:.0} grants/s",
        lite.p50_ms, lite.p99_ms, lite.per_sec
    );
    match std::env::var("CADENZA_POSTGRES_URL") {
        Ok(admin) => {
            let pg = Store::open(&fresh_postgres(&admin).await?).await?;
            let pg = run("postgres", pg, tracks, requests, clients).await?;
            println!(
                "grants on PostgreSQL: one at a time p50 {:.3} ms, p99 {:.3} ms; {clients} clients {:.0} grants/s",
                pg.p50_ms, pg.p99_ms, pg.per_sec
            );
            println!(
                "ratio PostgreSQL / SQLite: p50 {:.2}×, p99 {:.2}×, throughput {:.2}×",
                pg.p50_ms / lite.p50_ms,
                pg.p99_ms / lite.p99_ms,
                pg.per_sec / lite.per_sec
            );
        }
        Err(_) => eprintln!("PostgreSQL skipped: CADENZA_POSTGRES_URL is not set"),
    }
    Ok(())
}
