//! What each subcommand does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use cadenza_common::{Quality, Territories, TrackStatus, TrackView};
use cadenza_player::{PlayOptions, PlayReport, Player};
use cadenza_transcoder::{TranscodeOptions, seal, transcode};

use cadenza_common::http::client::call_json;

use crate::cli::{Cli, Command, EdgeArgs, LabelAction};
use crate::edge_node::TokenKeySource;
use crate::ingest::{Release, TrackMeta, ingest_file};
use crate::stack::{ClusterInfo, Stack, StackConfig};
use crate::synth;

/// Logs to stderr, as text or JSON lines; `RUST_LOG` overrides the level chosen by `-v`.
/// Access-log events (target `access`) pass at every level: they are only emitted when the
/// edge's access log is switched on. With `access`, they go to that file instead, in the
/// same format, whatever `RUST_LOG` says.
pub fn init_logging(verbose: u8, json: bool, access: Option<crate::access_file::AccessFile>) {
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    use tracing_subscriber::{Layer, Registry, fmt, layer::SubscriberExt, util::SubscriberInitExt};
    let default = match verbose {
        0 => "warn,access=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let to_stderr = fmt::layer().with_writer(std::io::stderr);
    let to_stderr = if json {
        to_stderr.json().boxed()
    } else {
        to_stderr.boxed()
    };
    let is_access = |m: &tracing::Metadata<'_>| m.target() == "access";
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    match access {
        None => layers.push(to_stderr.with_filter(filter).boxed()),
        Some(file) => {
            layers.push(
                to_stderr
                    .with_filter(filter.and(filter_fn(move |m| !is_access(m))))
                    .boxed(),
            );
            let to_file = fmt::layer().with_ansi(false).with_writer(file.clone());
            let to_file = if json {
                to_file.json().boxed()
            } else {
                to_file.boxed()
            };
            layers.push(to_file.with_filter(filter_fn(is_access)).boxed());
        }
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
}

/// Runs a parsed command line; `access` is the edge's access log file, if logging was set
/// up with one.
pub async fn run(args: Cli, access: Option<crate::access_file::AccessFile>) -> anyhow::Result<()> {
    match args.command {
        Command::Up {
            data,
            port_base,
            demo,
            demo_dir,
            exit_after_demo,
            workers,
            lease_secs,
            geoip,
            trusted_proxy,
            cors_origin,
            edge_cleartext,
            access_log,
            access_log_file,
            edge_memory_mib,
            edge_read_ahead,
            edge_slice_kib,
            edge_no_sendfile,
            s3,
            database_url,
            rotate_master_key,
            token_key_add,
            token_key_sign,
            token_key_drop,
            edge_site,
        } => {
            let mut config = StackConfig::new(&data);
            config.database_url = database_url;
            config.rotate_master_key = rotate_master_key;
            config.token_keys = crate::stack::TokenKeyChanges {
                add: token_key_add,
                sign_with: token_key_sign,
                drop: token_key_drop,
            };
            config.edge_sites = edge_site;
            config.edge_cache_bytes = edge_memory_mib.saturating_mul(1024 * 1024);
            config.edge_read_ahead = edge_read_ahead;
            config.slice_bytes = edge_slice_kib.clamp(4, 16 * 1024) * 1024;
            config.s3 = s3.config()?;
            config.geoip = geoip;
            config.trusted_proxies = trusted_proxy;
            if !cors_origin.is_empty() {
                config.cors = cadenza_control_plane::CorsOrigins::Only(cors_origin);
            }
            config.edge_cleartext = edge_cleartext;
            config.edge_sendfile = !edge_no_sendfile;
            config.access_log = access_log || access_log_file.is_some();
            config.port_base = port_base;
            config.workers = workers;
            config.job_lease = Duration::from_secs(lease_secs.max(4));
            up(config, demo.then_some(demo_dir), exit_after_demo, access).await
        }
        Command::Edge(args) => run_edge(*args, access).await,
        Command::Worker {
            endpoint,
            lease_secs,
        } => {
            let (trigger, shutdown) = cadenza_common::http::Shutdown::new();
            let stop = stop_signals(true);
            tokio::spawn(async move {
                stop.await;
                trigger.trigger();
            });
            crate::stack::run_worker(
                &endpoint.data,
                Duration::from_secs(lease_secs.max(4)),
                shutdown,
            )
            .await
        }
        Command::Ingest {
            endpoint,
            paths,
            title,
            artist,
            territories,
            isrc,
            album,
            track_number,
            featuring,
            release_at,
            licences,
        } => {
            let info = ClusterInfo::load(&endpoint.data)?;
            let mut failed = 0;
            for path in &paths {
                let meta = TrackMeta {
                    title: title.clone().unwrap_or_else(|| file_title(path)),
                    artist: artist.clone(),
                    territories: territories.clone(),
                    isrc: isrc.clone(),
                    release: Release {
                        album: album.clone(),
                        track_number,
                        featuring: featuring.clone(),
                        release_at,
                        licences: licences.clone(),
                    },
                };
                let view = ingest_file(&info.client()?, &info, path, &meta, true).await?;
                print_track(&view);
                failed += usize::from(view.status == TrackStatus::Failed);
            }
            if failed > 0 {
                bail!("{failed} of {} masters were refused", paths.len());
            }
            Ok(())
        }
        Command::Token {
            endpoint,
            file_ids,
            ttl_secs,
        } => {
            let key = crate::stack::signing_key(&endpoint.data)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            for file_id in file_ids {
                let token = key.sign(&cadenza_common::TokenClaims {
                    file_id: file_id.clone(),
                    expires_at: now + ttl_secs,
                    territories: Territories::worldwide(),
                });
                println!("{file_id} {}", token.0);
            }
            Ok(())
        }
        Command::Label { endpoint, action } => {
            let info = ClusterInfo::load(&endpoint.data)?;
            let service = crate::stack::service_token(&endpoint.data)?;
            let client = info.client()?;
            let timeout = Duration::from_secs(30);
            match action {
                LabelAction::Create { name } => {
                    let url = format!("{}/internal/v1/labels", info.control_plane);
                    let key: cadenza_common::LabelKey = call_json(
                        &client,
                        http::Method::POST,
                        &url,
                        Some(&service),
                        Some(&serde_json::json!({ "name": name })),
                        timeout,
                    )
                    .await?;
                    println!("label   {}  {}", key.label_id, key.name);
                    println!("api key {}", key.api_key);
                    eprintln!("(the key is shown once; only its hash is stored)");
                }
                LabelAction::Revoke { api_key } => {
                    let url = format!("{}/internal/v1/label-keys/revoke", info.control_plane);
                    let answer: serde_json::Value = call_json(
                        &client,
                        http::Method::POST,
                        &url,
                        Some(&service),
                        Some(&serde_json::json!({ "api_key": api_key })),
                        timeout,
                    )
                    .await?;
                    if answer["revoked"] != serde_json::Value::Bool(true) {
                        bail!("no live key matched");
                    }
                    println!("revoked (origins stop accepting it within a minute)");
                }
            }
            Ok(())
        }
        Command::Play {
            endpoint,
            track,
            quality,
            out,
            email,
        } => {
            let info = ClusterInfo::load(&endpoint.data)?;
            let player = match email {
                None => info.player().await?,
                Some(email) => {
                    let password = std::env::var("CADENZA_PASSWORD")
                        .context("--email needs the password in CADENZA_PASSWORD")?;
                    let client_id = info
                        .listener
                        .as_ref()
                        .map(|l| l.client_id.clone())
                        .context("cluster.json names no first-party app")?;
                    let login = cadenza_player::Login {
                        client_id,
                        email,
                        password,
                    };
                    Player::sign_in(info.client()?, info.control_plane.clone(), &login).await?
                }
            };
            let mut options = PlayOptions::new(track, quality);
            options.wav_out = out;
            let report = player.play(&options).await?;
            print_play(&report);
            Ok(())
        }
        Command::Transcode {
            master,
            out,
            plain,
            mode,
        } => transcode_cmd(&master, &out, plain, mode).await,
    }
}

fn file_title(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Untitled".into())
}

fn print_track(view: &TrackView) {
    match view.status {
        TrackStatus::Ready => {
            let tiers: Vec<String> = view
                .renditions
                .iter()
                .map(|r| {
                    format!(
                        "{} {} kbps {} B",
                        r.quality.as_str(),
                        r.bitrate_kbps,
                        r.size
                    )
                })
                .collect();
            println!(
                "ready   {}  {} — {}  {:.2} s  [{}]",
                view.track_id,
                view.artist,
                view.title,
                view.duration_ms.unwrap_or(0) as f64 / 1000.0,
                tiers.join(", ")
            );
        }
        _ => println!(
            "failed  {}  {} — {}: {}",
            view.track_id,
            view.artist,
            view.title,
            view.failure.as_deref().unwrap_or("unknown reason")
        ),
    }
}

fn print_play(r: &PlayReport) {
    println!(
        "played {} ({} kbps nominal {}): {} bytes from {} requests, decoded {:.3} s at {} Hz × {} ch, time to first audio {:.1} ms, total {:.1} ms",
        r.grant.track_id,
        r.grant.bitrate_kbps,
        r.grant.quality.as_str(),
        r.bytes,
        r.requests,
        r.decoded.duration().as_secs_f64(),
        r.decoded.sample_rate,
        r.decoded.channels,
        r.time_to_first_audio.as_secs_f64() * 1000.0,
        r.total_time.as_secs_f64() * 1000.0,
    );
}

/// Listens, from now on, for Ctrl-C (SIGINT) and SIGTERM, and with `hangup_stops` SIGHUP too;
/// the future resolves when one comes. `cadenza up` and `cadenza worker` run in a terminal,
/// whose closing sends SIGHUP: they stop as on SIGTERM (plays written, a job under way
/// finished) rather than die by the signal's default. `cadenza edge` takes SIGHUP as "look at
/// the certificate, GeoIP and key files again" and never stops on it: here it is only kept
/// from killing the process. Each is registered at once, before a command starts its work:
/// until then a signal kills by its default action, so one sent during start-up cut the
/// start short; now the command stops cleanly once it is up.
fn stop_signals(hangup_stops: bool) -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    async fn recv(sig: Option<tokio::signal::unix::Signal>) {
        match sig {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    let interrupt = signal(SignalKind::interrupt()).ok();
    let term = signal(SignalKind::terminate()).ok();
    // Registered either way; dropped, it leaves tokio's handler in place, which ignores it.
    let hangup = signal(SignalKind::hangup()).ok().filter(|_| hangup_stops);
    async move {
        tokio::select! {
            _ = recv(interrupt) => {}
            _ = recv(term) => {}
            _ = recv(hangup) => tracing::info!("SIGHUP: stopping"),
        }
    }
}

/// Masters in `dir` that look like audio, sorted by name.
fn masters_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "flac" | "wav" | "aiff" | "aif" | "mp3" | "ogg"
                )
            })
        })
        .collect();
    found.sort();
    Ok(found)
}

/// `cadenza edge`: one edge node alone until SIGTERM or Ctrl-C.
/// Writes the access log file's buffer out every second and reopens the file on SIGHUP
/// (after logrotate has moved it), until shutdown.
fn spawn_access_file_upkeep(
    file: crate::access_file::AccessFile,
    mut shutdown: cadenza_common::http::Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let failed = |what: &str, e: std::io::Error| {
            tracing::warn!(path = %file.path().display(), error = %e, "access log file: {what} failed");
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = file.flush() {
                        failed("write", e);
                    }
                }
                _ = hangup.recv() => match file.reopen() {
                    Ok(()) => tracing::info!(path = %file.path().display(), "SIGHUP: access log file reopened"),
                    Err(e) => failed("reopen", e),
                },
                _ = shutdown.wait() => return,
            }
        }
    }))
}

/// The listener for `addr`: the socket the service manager passed for it, else one bound now.
async fn tcp_listener(
    inherited: &mut cadenza_common::listen_fds::Inherited,
    addr: std::net::SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    match inherited.tcp(addr) {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            Ok(tokio::net::TcpListener::from_std(listener)?)
        }
        None => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}")),
    }
}

async fn run_edge(
    args: EdgeArgs,
    access: Option<crate::access_file::AccessFile>,
) -> anyhow::Result<()> {
    use crate::edge_node::{EdgeListeners, EdgeNodeConfig};
    let stop = stop_signals(false);
    // Made only when something goes in it, so a refused start leaves no directory behind.
    let make_data = || {
        std::fs::create_dir_all(&args.data)
            .with_context(|| format!("creating {}", args.data.display()))
    };
    let joined = args
        .join
        .as_deref()
        .map(crate::stack::join_info)
        .transpose()
        .context("--join")?;
    let cert = match (&args.cert, &args.key, &joined) {
        (Some(cert), Some(key), _) => cadenza_common::http::tls::CertPem {
            cert: std::fs::read_to_string(cert)
                .with_context(|| format!("reading {}", cert.display()))?,
            key: std::fs::read_to_string(key)
                .with_context(|| format!("reading {}", key.display()))?,
        },
        (_, _, Some(j)) => j.cert.clone(),
        _ => {
            make_data()?;
            crate::stack::load_or_create_cert(&args.data)?.0
        }
    };
    let upstream_ca = match &args.upstream_ca {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => {
            // This edge's certificate (its region's peers present the same), and the joined
            // stack's, whose origin presents that one.
            let mut ca = cert.cert.clone();
            if let Some(j) = joined.as_ref().filter(|j| j.cert.cert != cert.cert) {
                ca.push('\n');
                ca.push_str(&j.cert.cert);
            }
            ca.into_bytes()
        }
    };
    let origins = match (&args.origins[..], &joined) {
        ([], Some(j)) => vec![j.origin.clone()],
        ([], None) => bail!("no origin: pass --origin URL (or --join DIR)"),
        (given, _) => given.to_vec(),
    };
    let edge_key = args
        .edge_key
        .clone()
        .or_else(|| joined.as_ref().map(|j| j.edge_key.clone()))
        .context("no edge key: pass --edge-key or CADENZA_EDGE_KEY (or --join DIR)")?;
    // Keys from a file, or from the joined stack's cluster.json, are followed while the edge
    // runs; keys given on the command line are for the process's life.
    let key_source = match (&args.token_keys_file, &args.token_keys[..], &args.join) {
        (Some(path), _, _) => Some(TokenKeySource::File(path.clone())),
        (None, [], Some(dir)) => Some(TokenKeySource::Cluster(dir.clone())),
        _ => None,
    };
    let token_keys = match (&key_source, &args.token_keys[..]) {
        (Some(source), _) => source.read()?,
        (None, []) => bail!(
            "no token key: pass --token-key KID=HEX or --token-keys-file FILE (or --join DIR)"
        ),
        (None, given) => crate::stack::parse_token_keys(given.iter().cloned())?,
    };
    let admin_token = args
        .admin_token
        .clone()
        .or_else(|| joined.as_ref().map(|j| j.admin_token.clone()))
        .unwrap_or_else(crate::stack::secret);
    let (trigger, shutdown) = cadenza_common::http::Shutdown::new();
    let mut config = EdgeNodeConfig::new(
        cert,
        upstream_ca,
        origins,
        edge_key,
        admin_token.clone(),
        token_keys,
    );
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        config.cert_files = Some((cert.clone(), key.clone()));
    }
    let mut reloaders = Vec::new();
    if let Some(path) = &args.geoip {
        let geo = std::sync::Arc::new(cadenza_geo::ReloadingGeo::open(path)?);
        reloaders.push(cadenza_edge::spawn_geo_reloader(
            geo.clone(),
            Duration::from_secs(10),
            shutdown.clone(),
        )?);
        config.geo = Some(geo);
    }
    if args.cert.is_none()
        && args.geoip.is_none()
        && key_source.is_none()
        && args.access_log_file.is_none()
    {
        // Nothing to look at again; `systemctl reload` is answered in the log (it cannot stop
        // the edge: `stop_signals` has SIGHUP's handler in place).
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut stop = shutdown.clone();
        reloaders.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait() => return,
                    _ = hangup.recv() => {
                        tracing::info!("SIGHUP: no --cert, --geoip or --token-keys-file to look at again")
                    }
                }
            }
        }));
    }
    config.trusted_proxies = args.trusted_proxy.clone();
    if let Some(listeners) = args.proxy_protocol {
        use crate::cli::ProxyListeners::{Both, Cleartext, Tls};
        config.proxy_protocol_tls = matches!(listeners, Tls | Both);
        config.proxy_protocol_cleartext = matches!(listeners, Cleartext | Both);
    }
    config.alt_svc_port = args.alt_svc_port;
    if !args.cors_origin.is_empty() {
        config.cors = cadenza_common::http::CorsOrigins::Only(args.cors_origin.clone());
    }
    if args.deny_unknown_country {
        config.unknown_country = cadenza_edge::UnknownCountry::Deny;
    }
    config.memory_bytes = args.memory_mib.saturating_mul(1 << 20);
    config.slice_bytes = args.slice_kib.clamp(4, 16 * 1024) * 1024;
    config.read_ahead = args.read_ahead;
    config.access_log = args.access_log || args.access_log_file.is_some();
    if let Some(file) = &access {
        reloaders.push(spawn_access_file_upkeep(file.clone(), shutdown.clone())?);
    }
    apply_limits(&mut config, &args.limits);
    config.limits.max_connections = args.max_connections.max(1);
    config.h3.max_connections = args
        .h3_max_connections
        .map_or(config.limits.max_connections, |n| n.max(1));
    config.max_connections_per_client = args.max_connections_per_client;
    config.h3.max_udp_payload = args.h3_max_udp_payload.clamp(1200, 65527);
    config.h3.ack_every = (args.h3_ack_every > 2).then_some(args.h3_ack_every);
    config.h3.drivers = args.h3_drivers;
    config.sendfile = !args.no_sendfile;
    if !args.tls_ticket_keys.is_empty() {
        let secrets = args
            .tls_ticket_keys
            .iter()
            .map(|path| std::fs::read(path).with_context(|| format!("reading {}", path.display())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        config.ticket_keys = Some(cadenza_common::http::tls::TicketKeys::new(&secrets)?);
    }
    if !args.disk.is_empty() {
        config.disk = args.disk.clone();
    } else if args.disk_gib > 0 {
        config.disk = vec![(
            args.data.join("cache"),
            args.disk_gib.saturating_mul(1 << 30),
        )];
    }
    make_data()?;
    // Sockets a service manager holds for the edge (systemd socket activation) are taken
    // for the listeners whose addresses they are bound to; the rest are bound here.
    let mut inherited = cadenza_common::listen_fds::Inherited::from_env()?;
    let listeners = EdgeListeners {
        main: tcp_listener(&mut inherited, args.listen).await?,
        admin: tcp_listener(&mut inherited, args.admin_listen).await?,
        cleartext: match args.cleartext_listen {
            Some(addr) => Some(tcp_listener(&mut inherited, addr).await?),
            None => None,
        },
        udp: inherited.udp(args.listen),
    };
    let (tcp, udp) = inherited.left();
    if !tcp.is_empty() || !udp.is_empty() {
        bail!(
            "the service manager passed sockets no listener takes (TCP {tcp:?}, UDP {udp:?}): \
             --listen (TCP and UDP), --admin-listen and --cleartext-listen must name their \
             addresses exactly"
        );
    }
    let main_url = format!("https://{}", listeners.main.local_addr()?);
    let admin_url = format!("https://{}", listeners.admin.local_addr()?);
    let cleartext_url = match &listeners.cleartext {
        Some(l) => Some(format!("http://{}", l.local_addr()?)),
        None => None,
    };
    if !args.region_peers.is_empty() {
        let me = args.advertise.clone().unwrap_or_else(|| main_url.clone());
        config.region = Some((me, args.region_peers.clone()));
    }
    let region = config.region.clone();
    let node = crate::edge_node::start(config, listeners, shutdown.clone()).await?;
    if let Some(source) = key_source {
        reloaders.push(crate::edge_node::spawn_token_key_reloader(
            node.edge.clone(),
            source,
            Duration::from_secs(10),
            shutdown,
        )?);
    }
    let about = serde_json::json!({
        "edge": main_url,
        "edge_admin": admin_url,
        "edge_cleartext": cleartext_url,
        "admin_token": admin_token,
        "region": region.as_ref().map(|(me, peers)| serde_json::json!({"me": me, "peers": peers})),
    });
    crate::stack::write_private(
        &args.data.join("edge.json"),
        &serde_json::to_vec_pretty(&about)?,
    )?;
    println!("cadenza edge is up (state in {})", args.data.display());
    println!("  players        {main_url} (HTTP/1.1, HTTP/2; HTTP/3 on the same UDP port)");
    if let Some(url) = &cleartext_url {
        println!("  players, clear {url}");
    }
    println!("  admin          {admin_url} (admin_token in edge.json)");
    if let Some((me, peers)) = &region {
        println!("  region         {me} among {} peer(s)", peers.len());
    }
    stop.await;
    let delay = args.limits.drain_delay;
    if !delay.is_zero() {
        node.admin.drain();
        tracing::info!(
            ?delay,
            "stopping: /readyz says draining; serving on until the delay ends"
        );
        let again = stop_signals(false);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = again => tracing::info!("stopping now: signalled again"),
        }
    }
    trigger.trigger();
    for task in node.tasks.into_iter().chain(reloaders) {
        let _ = task.await;
    }
    // After the drain: the last requests' lines too.
    if let Some(file) = &access {
        file.flush()
            .with_context(|| format!("writing {}", file.path().display()))?;
    }
    Ok(())
}

/// The operator's timeouts and limits (`cadenza edge`'s "Timeouts and limits" flags).
fn apply_limits(config: &mut crate::edge_node::EdgeNodeConfig, args: &crate::cli::EdgeLimitArgs) {
    let rate = cadenza_common::http::MinRate {
        bytes_per_sec: args.min_send_rate,
        window: args.min_send_window,
    };
    config.token_leeway = args.token_leeway;
    config.upstream_timeout = args.upstream_timeout;
    config.breaker_threshold = args.upstream_failures;
    config.breaker_cooldown = args.upstream_cooldown;
    let tcp = &mut config.limits;
    tcp.handshake_timeout = args.handshake_timeout;
    tcp.header_read_timeout = args.header_timeout;
    tcp.idle_timeout = args.idle_timeout;
    tcp.send_timeout = args.send_timeout;
    tcp.min_send_rate = rate;
    tcp.max_header_bytes = args.max_header_bytes as usize;
    tcp.max_h2_streams = args.h2_max_streams;
    tcp.drain_timeout = args.drain_timeout;
    let quic = &mut config.h3;
    quic.min_send_rate = rate;
    quic.max_streams = args.h3_max_streams;
    quic.idle_timeout = args.h3_idle_timeout;
    quic.keepalive_timeout = args.h3_keepalive_timeout;
    quic.drain_timeout = args.drain_timeout;
    quic.max_field_section = u64::from(args.max_header_bytes);
}

async fn up(
    config: StackConfig,
    demo: Option<Option<PathBuf>>,
    exit_after_demo: bool,
    access: Option<crate::access_file::AccessFile>,
) -> anyhow::Result<()> {
    // The access log file is written out every second, and once more when the stack is
    // down (SIGHUP stops `up`, so it does not reopen the file as `cadenza edge` does).
    let flushing = access.clone().map(|file| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = file.flush() {
                    tracing::warn!(path = %file.path().display(), error = %e, "access log file: write failed");
                }
            }
        })
    });
    let served = serve_up(config, demo, exit_after_demo).await;
    if let Some(task) = flushing {
        task.abort();
    }
    if let Some(file) = &access {
        file.flush()
            .with_context(|| format!("writing {}", file.path().display()))?;
    }
    served
}

/// `cadenza up` itself: starts the stack, runs the demo if asked, serves until stopped.
async fn serve_up(
    config: StackConfig,
    demo: Option<Option<PathBuf>>,
    exit_after_demo: bool,
) -> anyhow::Result<()> {
    let data = config.data.clone();
    let workers = config.workers;
    let mut stop = tokio::spawn(stop_signals(true));
    tracing::info!(data = %data.display(), "cadenza up: starting");
    let stack = Stack::start(config).await?;
    println!("cadenza is up (data in {})", data.display());
    println!("  control plane  {}", stack.info.control_plane);
    println!("  origin         {}", stack.info.origin);
    println!("  edge           {}", stack.info.edge);
    if let Some(url) = &stack.info.edge_cleartext {
        println!("  edge (clear)   {url}");
    }
    println!(
        "  edge admin     {} (/metrics, /healthz; purge, pre-warm and stats with the admin_token in secrets.json)",
        stack.info.edge_admin
    );
    println!("  transcoder     {workers} worker(s) in process");
    println!("  trust          {}", stack.info.ca.display());
    if let Some(dir) = demo
        && !stop.is_finished()
        && let Err(e) = run_demo(&stack, &data, dir).await
    {
        stack.shutdown().await;
        return Err(e.context("demo failed"));
    }
    if !exit_after_demo {
        println!("serving; Ctrl-C to stop");
        let _ = (&mut stop).await;
    }
    stack.shutdown().await;
    Ok(())
}

async fn run_demo(stack: &Stack, data: &Path, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let fixtures = Path::new("../shared/fixtures/flac/good");
    let masters = if let Some(dir) = &dir {
        masters_in(dir)?
    } else if fixtures.is_dir() {
        masters_in(fixtures)?
    } else {
        let path = data.join("demo-master.wav");
        synth::write_demo_master(&path, 20)?;
        vec![path]
    };
    if masters.is_empty() {
        bail!("no masters to ingest");
    }
    println!("demo: ingesting {} masters", masters.len());
    let client = stack.client()?;
    let mut ready = Vec::new();
    for path in &masters {
        let meta = TrackMeta {
            title: file_title(path),
            artist: "Cadenza Demo".into(),
            territories: Territories::worldwide(),
            isrc: None,
            release: Default::default(),
        };
        let view = ingest_file(&client, &stack.info, path, &meta, false).await?;
        print_track(&view);
        if view.status == TrackStatus::Ready {
            ready.push(view);
        }
    }
    let Some(track) = ready.first() else {
        bail!("no master became playable");
    };
    let player = stack.info.player().await?;
    let mut options = PlayOptions::new(track.track_id.clone(), Quality::High);
    options.wav_out = Some(data.join("demo-play.wav"));
    let report = tokio::time::timeout(Duration::from_secs(120), player.play(&options))
        .await
        .context("playback timed out")??;
    print_play(&report);
    println!(
        "demo: time to first audio {:.1} ms; decoded audio in {}",
        report.time_to_first_audio.as_secs_f64() * 1000.0,
        data.join("demo-play.wav").display()
    );
    Ok(())
}

async fn transcode_cmd(
    master: &Path,
    out: &Path,
    plain: bool,
    mode: cadenza_transcoder::BitrateMode,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let path = master.to_path_buf();
    let started = std::time::Instant::now();
    let options = TranscodeOptions {
        bitrate_mode: mode,
        spool_dir: Some(out.to_path_buf()),
        ..Default::default()
    };
    let done = tokio::task::spawn_blocking(move || transcode(&path, &options)).await??;
    let elapsed = started.elapsed();
    let seconds = done.output_frames as f64 / f64::from(cadenza_transcoder::OUTPUT_RATE);
    let l = done.loudness;
    let loudness = format!("{:.1} LUFS", l.integrated_lufs);
    let encoded_twice = done.renditions.iter().any(|r| r.encodes > 1);
    println!(
        "{:<8} {:>10} {:>6} {:>7} {:>10} {:>12} {:>9}  file",
        "tier", "bytes", "kbps", "quality", "duration", "loudness", "encode"
    );
    for r in done.renditions {
        let (quality, size, bitrate_kbps) = (r.quality, r.size, r.bitrate_kbps);
        // The libvorbis quality on oggenc's scale, and a mark on a tier encoded twice.
        let vorbis = r.vorbis_quality.map_or("-".to_owned(), |q| {
            format!("{:.2}{}", q * 10.0, if r.encodes > 1 { "*" } else { "" })
        });
        let name = if plain {
            let name = format!("{}.ogg", quality.as_str());
            r.file.persist(&out.join(&name))?;
            name
        } else {
            let sealed = seal(&r)?;
            let name = format!("{}.{}.enc", quality.as_str(), sealed.record.file_id);
            let label = format!(
                "{name} (key {} iv {})",
                sealed.record.key.key_hex(),
                sealed.record.key.iv_hex()
            );
            sealed.file.persist(&out.join(&name))?;
            label
        };
        // The tiers encode in parallel from one decode, so each took the whole run.
        println!(
            "{:<8} {:>10} {:>6} {:>7} {:>9.3}s {:>12} {:>8.2}s  {}",
            quality.as_str(),
            size,
            bitrate_kbps,
            vorbis,
            seconds,
            loudness,
            elapsed.as_secs_f64(),
            name
        );
    }
    let f = done.features;
    println!(
        "loudness {:.1} LUFS, true peak {:.1} dBTP, track gain {:+.1} dB; tempo {}, centroid {:.0} Hz, energy {:.1} dBFS, dynamics {:.1} dB",
        l.integrated_lufs,
        l.true_peak_dbtp,
        l.track_gain_db,
        f.tempo_bpm
            .map_or("n/a".to_owned(), |t| format!("{t:.1} BPM")),
        f.spectral_centroid_hz,
        f.energy_dbfs,
        f.dynamics_db
    );
    println!(
        "all tiers in {:.2} s ({:.1}x real time){}",
        elapsed.as_secs_f64(),
        seconds / elapsed.as_secs_f64().max(1e-9),
        if encoded_twice {
            "; * encoded twice to meet the nominal mean"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The "Timeouts and limits" flags repeat the library's defaults so `--help` can show
    /// them; given none, `cadenza edge` must end up with exactly the library's values.
    #[test]
    fn the_limit_flags_default_to_the_librarys_values() {
        let Command::Edge(args) = Cli::parse_from(["cadenza", "edge"]).command else {
            panic!("not the edge command");
        };
        let library = crate::edge_node::EdgeNodeConfig::new(
            cadenza_common::http::tls::CertPem {
                cert: String::new(),
                key: String::new(),
            },
            Vec::new(),
            Vec::new(),
            String::new(),
            String::new(),
            cadenza_common::VerifyingKeys::default(),
        );
        let mut flagged = library.clone();
        apply_limits(&mut flagged, &args.limits);
        let settings = |c: &crate::edge_node::EdgeNodeConfig| {
            format!(
                "{:?} {:?} {:?} {} {:?} {:?}",
                c.limits,
                c.h3,
                c.token_leeway,
                c.breaker_threshold,
                c.breaker_cooldown,
                c.upstream_timeout
            )
        };
        assert_eq!(settings(&flagged), settings(&library));
    }
}
