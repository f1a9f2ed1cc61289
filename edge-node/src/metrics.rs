//! The edge's Prometheus metrics, registered in one registry the admin listener exposes at
//! `/metrics`.

use std::sync::{Arc, Mutex};

use cadenza_common::http::OpenConnections;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the edge keeps.
#[derive(Debug, Clone)]
pub struct EdgeMetrics {
    registry: Registry,
    /// Requests by protocol version and status code.
    pub requests: IntCounterVec,
    /// Response body bytes handed to clients.
    pub bytes_served: IntCounter,
    /// Slice lookups answered from memory.
    pub hits: IntCounter,
    /// Slice lookups that fetched from the origin.
    pub misses: IntCounter,
    /// Memory misses answered from the disk tier.
    pub disk_hits: IntCounter,
    /// Slices found damaged on disk (refetched, never served).
    pub disk_corrupt: IntCounter,
    /// Slice writes to the disk tier that failed (brought up to the tier's count when
    /// scraped).
    pub disk_write_errors: IntCounter,
    /// Fetched slices not written to disk because as many writes as may be were under way.
    pub disk_writes_skipped: IntCounter,
    /// Slice reads from the disk tier that failed (as the write errors are kept).
    pub disk_read_errors: IntCounter,
    /// Each disk directory: 1 while in service, and the bytes of slices it holds.
    pub disk_dir_in_service: IntGaugeVec,
    pub disk_dir_bytes: IntGaugeVec,
    /// Slice lookups that waited on another request's fetch of the same slice.
    pub collapsed: IntCounter,
    /// Read-ahead fetches started.
    pub prefetches: IntCounter,
    /// Origin fetch latency by outcome.
    pub upstream_seconds: HistogramVec,
    /// Body bytes received from origins.
    pub upstream_bytes: IntCounter,
    /// Slice fetches from the file's owner in the region (shield tier), by outcome: `ok`,
    /// or `failed` (then fetched from an origin).
    pub shield_fetches: IntCounterVec,
    /// Body bytes received from owner edges.
    pub shield_bytes: IntCounter,
    /// Time from request to response head.
    pub ttfb_seconds: Histogram,
    /// Bytes in the memory tier.
    pub cache_bytes: IntGauge,
    /// The disk tier: bytes and slices held, what its index holds in memory, and 1 while
    /// the start-up scan runs. Set when scraped.
    pub disk_bytes: IntGauge,
    pub disk_slices: IntGauge,
    pub disk_index_bytes: IntGauge,
    pub disk_scanning: IntGauge,
    /// Disks configured, and those in service (not out after failed writes).
    pub disks: IntGauge,
    pub disks_in_service: IntGauge,
    /// Open connections by listener, read from each listener's slots when scraped.
    open_connections: IntGaugeVec,
    /// 1 for each token key in service, by key id.
    token_keys: IntGaugeVec,
    /// Clients turned away because their listener was full, by listener.
    refused_connections: IntCounterVec,
    /// Idle connections closed to make room for new clients, by listener.
    reclaimed_connections: IntCounterVec,
    /// Connections closed after the keep-alive time with no request open, by listener.
    keepalive_closed: IntCounterVec,
    /// Connections closed on a PROXY protocol listener for their header.
    proxy_refused: IntCounterVec,
    /// Connections closed because their client held as many as it may, by listener.
    client_cap_refused: IntCounterVec,
    /// Under the per-client cap: clients holding connections, and those holding the cap.
    clients: IntGauge,
    clients_at_cap: IntGauge,
    listeners: Arc<Mutex<Vec<(String, OpenConnections)>>>,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are fixed and unique, so registration cannot collide.
    let _ = r.register(Box::new(m.clone()));
    m
}

impl EdgeMetrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("cadenza_edge".into()), None).unwrap_or_default();
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let counter = |name: &str, help: &str| {
            IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric())
        };
        Self {
            requests: register(
                &r,
                IntCounterVec::new(
                    Opts::new("requests_total", "Requests by protocol and status"),
                    &["protocol", "status"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            bytes_served: register(
                &r,
                counter("bytes_served_total", "Response body bytes sent"),
            ),
            hits: register(
                &r,
                counter("cache_hits_total", "Slice lookups answered from memory"),
            ),
            misses: register(
                &r,
                counter(
                    "cache_misses_total",
                    "Slice lookups fetched from the origin",
                ),
            ),
            disk_hits: register(
                &r,
                counter("disk_hits_total", "Memory misses answered from disk"),
            ),
            disk_corrupt: register(
                &r,
                counter(
                    "disk_corrupt_total",
                    "Slices found damaged on disk and refetched",
                ),
            ),
            disk_write_errors: register(
                &r,
                counter(
                    "disk_write_errors_total",
                    "Slice writes to the disk tier that failed (a full or failing disk)",
                ),
            ),
            disk_writes_skipped: register(
                &r,
                counter(
                    "disk_writes_skipped_total",
                    "Fetched slices not written to disk because 64 writes were under way (a disk slower than the misses)",
                ),
            ),
            collapsed: register(
                &r,
                counter(
                    "collapsed_waiters_total",
                    "Slice lookups that joined another request's fetch",
                ),
            ),
            prefetches: register(
                &r,
                counter("prefetches_total", "Read-ahead slice fetches started"),
            ),
            upstream_bytes: register(
                &r,
                counter("upstream_bytes_total", "Body bytes received from origins"),
            ),
            shield_fetches: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "shield_fetches_total",
                        "Slice fetches from the owning edge of the region, by outcome",
                    ),
                    &["outcome"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            shield_bytes: register(
                &r,
                counter(
                    "shield_bytes_total",
                    "Body bytes received from owning edges",
                ),
            ),
            upstream_seconds: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("upstream_seconds", "Origin slice fetch latency")
                        .buckets(buckets.clone()),
                    &["outcome"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            ttfb_seconds: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("time_to_first_byte_seconds", "Request to response head")
                        .buckets(buckets),
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            cache_bytes: register(
                &r,
                IntGauge::new("cache_bytes", "Bytes held in the memory tier")
                    .unwrap_or_else(|_| unreachable_metric()),
            ),
            disk_bytes: register(
                &r,
                IntGauge::new("disk_bytes", "Bytes of slice files in the disk tier")
                    .unwrap_or_else(|_| unreachable_metric()),
            ),
            disk_slices: register(
                &r,
                IntGauge::new("disk_slices", "Slices in the disk tier")
                    .unwrap_or_else(|_| unreachable_metric()),
            ),
            disk_index_bytes: register(
                &r,
                IntGauge::new(
                    "disk_index_bytes",
                    "Memory the disk tier's index of slices holds",
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            disk_read_errors: register(
                &r,
                counter(
                    "disk_read_errors_total",
                    "Slice reads from the disk tier that failed (a failing disk; the slice is fetched again)",
                ),
            ),
            disk_dir_in_service: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "disk_dir_in_service",
                        "1 while the disk tier in this directory is in service, 0 while it is left out after failing reads or writes",
                    ),
                    &["dir"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            disk_dir_bytes: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "disk_dir_bytes",
                        "Bytes of slice files in the disk tier in this directory",
                    ),
                    &["dir"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            disks: register(
                &r,
                IntGauge::new("disks", "Disk tiers configured (one per --disk)")
                    .unwrap_or_else(|_| unreachable_metric()),
            ),
            disks_in_service: register(
                &r,
                IntGauge::new(
                    "disks_in_service",
                    "Disk tiers in service (a disk whose writes keep failing is left out for 60 s at a time)",
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            disk_scanning: register(
                &r,
                IntGauge::new(
                    "disk_scanning",
                    "1 while the disk tier's start-up scan runs (slices it has not reached are looked for on disk)",
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            open_connections: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("open_connections", "Connections open, by listener"),
                    &["listener"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            refused_connections: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "refused_connections_total",
                        "Clients turned away at the connection limit, by listener",
                    ),
                    &["listener"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            reclaimed_connections: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "reclaimed_connections_total",
                        "Idle connections closed to make room for new clients, by listener",
                    ),
                    &["listener"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            keepalive_closed: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "keepalive_closed_connections_total",
                        "Connections closed after the keep-alive time with no request open, by listener",
                    ),
                    &["listener"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            proxy_refused: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "proxy_header_refused_total",
                        "Connections closed on a PROXY protocol listener for their header, by \
                         listener: one from a peer not trusted to send it, or a trusted peer's \
                         missing, broken or late one",
                    ),
                    &["listener"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            clients: register(
                &r,
                IntGauge::new(
                    "clients",
                    "Clients (IPv4 addresses, IPv6 /64s) holding connections to the player \
                     listeners, when --max-connections-per-client counts them",
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            clients_at_cap: register(
                &r,
                IntGauge::new(
                    "clients_at_cap",
                    "Clients holding as many connections as --max-connections-per-client allows",
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            client_cap_refused: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "client_cap_refused_total",
                        "Connections closed because their client held as many as the \
                         per-client limit allows, by listener",
                    ),
                    &["listener"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            token_keys: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "token_keys",
                        "Token-signing keys this edge accepts (1 each), by key id",
                    ),
                    &["kid"],
                )
                .unwrap_or_else(|_| unreachable_metric()),
            ),
            listeners: Arc::default(),
            registry: r,
        }
    }

    /// Reports `kids` as the token keys in service (and no others), so a fleet's readiness
    /// for a key rotation can be read from its metrics.
    pub fn token_keys_in_service(&self, kids: &[String]) {
        self.token_keys.reset();
        for kid in kids {
            self.token_keys.with_label_values(&[kid.as_str()]).set(1);
        }
    }

    /// Reports `connections` as the open connections of `listener` (`tls`, `cleartext`,
    /// `quic`, `admin`) at every scrape, with the clients it refused at its cap and the idle
    /// connections it closed to make room.
    pub fn count_connections(&self, listener: &str, connections: OpenConnections) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.push((listener.to_owned(), connections));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        {
            let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            for (listener, connections) in listeners.iter() {
                let open = i64::try_from(connections.count()).unwrap_or(i64::MAX);
                self.open_connections
                    .with_label_values(&[listener.as_str()])
                    .set(open);
                // The listener keeps the tallies; bring each counter up to its tally.
                for (counter, tally) in [
                    (&self.refused_connections, connections.refused()),
                    (&self.reclaimed_connections, connections.reclaimed()),
                    (&self.keepalive_closed, connections.kept_alive_out()),
                    (&self.proxy_refused, connections.unproxied()),
                    (&self.client_cap_refused, connections.over_client_cap()),
                ] {
                    let counter = counter.with_label_values(&[listener.as_str()]);
                    counter.inc_by(tally.saturating_sub(counter.get()));
                }
            }
            // The player listeners share one count of clients: read it once.
            if let Some(cap) = listeners.iter().find_map(|(_, c)| c.client_cap()) {
                let (clients, at_cap) = cap.census();
                self.clients.set(i64::try_from(clients).unwrap_or(i64::MAX));
                self.clients_at_cap
                    .set(i64::try_from(at_cap).unwrap_or(i64::MAX));
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metric constructors fail only on invalid names or label sets, which are constants here.
fn unreachable_metric() -> ! {
    panic!("invalid constant metric definition")
}
