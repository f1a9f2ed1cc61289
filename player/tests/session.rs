//! A player's session against a real control plane (SQLite, served over loopback): it
//! renews its access token with the refresh token before expiry, one renewal at a time.

use std::sync::Arc;
use std::time::Duration;

use cadenza_common::SigningKey;
use cadenza_common::http::client::{self, https_client};
use cadenza_common::http::{ServerLimits, Shutdown, serve_on, tls};
use cadenza_control_plane::auth::AuthConfig;
use cadenza_control_plane::{ClientKind, ControlPlane, ControlPlaneConfig, Store};
use cadenza_player::{Login, Player};
use http::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_renews_by_refresh_token_one_renewal_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("cp.sqlite"))
        .await
        .unwrap();
    let app = store
        .create_client("Player", ClientKind::FirstParty, 0)
        .await
        .unwrap();
    store
        .create_user("ann@example.com", "correct horse", 0)
        .await
        .unwrap();
    let (signing, _) = SigningKey::generate("k1").unwrap();
    let cp = Arc::new(ControlPlane::new(
        ControlPlaneConfig {
            service_token: "svc".into(),
            job_lease: Duration::from_secs(60),
            max_job_attempts: 3,
            job_retry_backoff: Duration::from_secs(5),
            grants: Default::default(),
            geo: None,
            trusted_proxies: Vec::new(),
            // 31 s tokens: the player renews them 30 s early, so after one second.
            auth: AuthConfig {
                access_ttl: Duration::from_secs(31),
                token_burst: 50,
                ..AuthConfig::default()
            },
            cors: Default::default(),
        },
        store,
        signing,
    ));
    let pem = tls::self_signed(&["localhost"]).unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let served = serve_on(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(tls::server_config(&pem).unwrap()),
        ServerLimits::default(),
        cp,
        shutdown,
    )
    .unwrap();
    let base = format!("https://localhost:{}", served.addr.port());
    let http = https_client(tls::client_config(pem.cert.as_bytes()).unwrap());
    let sessions = |token: String| {
        let (http, url) = (http.clone(), format!("{base}/v1/me/export"));
        async move {
            let export: serde_json::Value = client::call_json::<(), _>(
                &http,
                Method::GET,
                &url,
                Some(&token),
                None,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            // Every refresh token issued, and those still live: a rotation revokes the old
            // one, a fresh sign-in does not.
            let all = export["sessions"].as_array().unwrap().clone();
            let live = all.iter().filter(|s| s["revoked_at"].is_null()).count();
            (all.len(), live)
        }
    };

    let login = Login {
        client_id: app.client_id,
        email: "ann@example.com".into(),
        password: "wrong horse".into(),
    };
    let refused = Player::sign_in(http.clone(), base.clone(), &login).await;
    assert!(refused.is_err(), "a wrong password signed in");
    let login = Login {
        password: "correct horse".into(),
        ..login
    };
    let player = Player::sign_in(http.clone(), base.clone(), &login)
        .await
        .unwrap();
    let first = player.access_token().await.unwrap();
    assert_eq!(
        player.access_token().await.unwrap(),
        first,
        "renewed too soon"
    );
    assert_eq!(sessions(first.clone()).await, (1, 1));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = player.access_token().await.unwrap();
    assert_ne!(second, first, "not renewed inside the margin");
    // Renewed with the refresh token (rotated), not by signing in again: one live session.
    assert_eq!(sessions(second.clone()).await, (2, 1));

    // Eight callers at once share one renewal. Two renewals with the same refresh token
    // would make the control plane revoke the session, and a caller sign in anew.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let player = player.clone();
        calls.push(tokio::spawn(
            async move { player.access_token().await.unwrap() },
        ));
    }
    let mut tokens = Vec::new();
    for c in calls {
        tokens.push(c.await.unwrap());
    }
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    assert_ne!(tokens[0], second);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fourth = player.access_token().await.unwrap();
    assert_eq!(sessions(fourth).await, (4, 1));

    trigger.trigger();
}
