//! What an edge takes from an upstream (an origin, or the edge owning a file in its region)
//! before caching it: only the bytes it asked for. An upstream that answers a slice's range
//! with another range of the object, or gives the object another length, is refused, and the
//! slice comes from the next upstream instead. Nor does a slice whose fetch a purge overtook
//! stay cached.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cadenza_common::http::{
    Body, ConnInfo, Handler, ServerLimits, Shutdown, empty, full, serve_on,
};
use cadenza_common::{FileId, RangeRequest, parse_range};
use cadenza_edge::{EdgeMetrics, SliceCache, SliceMath, UpstreamConfig};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

const OBJECT: usize = 300 * 1024;
const SLICE: u64 = 64 * 1024;

fn object() -> Bytes {
    (0..OBJECT).map(|i| (i * 7 % 251) as u8).collect()
}

/// How an upstream answers a ranged GET.
#[derive(Clone, Copy)]
enum Answer {
    /// The bytes asked for.
    Honest,
    /// As many bytes, from one byte further on, and says so in `Content-Range`.
    Shifted,
    /// The bytes asked for, but the object a byte longer.
    Longer,
    /// The first slice honestly; anything else, 503.
    FirstOnly,
    /// The bytes asked for, half a second late.
    Slow,
}

struct Upstream(Answer, Bytes);

impl Handler for Upstream {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        let len = self.1.len() as u64;
        let range = req.headers().get(header::RANGE).map(|v| v.as_bytes());
        let RangeRequest::Partial(r) = parse_range(range, len) else {
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            return resp;
        };
        let (mut first, mut last, mut total) = (r.start, r.end, len);
        match self.0 {
            Answer::Honest => {}
            Answer::Shifted => {
                first += 1;
                last = (last + 1).min(len - 1);
            }
            Answer::Longer => total += 1,
            Answer::FirstOnly if first >= SLICE => {
                let mut resp = Response::new(empty());
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return resp;
            }
            Answer::FirstOnly => {}
            Answer::Slow => tokio::time::sleep(Duration::from_millis(500)).await,
        }
        let body = self.1.slice(first as usize..=last as usize);
        let mut resp = Response::new(full(body));
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let value = format!("bytes {first}-{last}/{total}");
        resp.headers_mut()
            .insert(header::CONTENT_RANGE, value.parse().unwrap());
        resp
    }
}

async fn upstream(answer: Answer, shutdown: &Shutdown) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let serving = serve_on(
        listener,
        None,
        ServerLimits::default(),
        Arc::new(Upstream(answer, object())),
        shutdown.clone(),
    )
    .unwrap();
    let addr: SocketAddr = serving.addr;
    format!("http://{addr}")
}

fn cache(origins: Vec<String>) -> Arc<SliceCache> {
    cadenza_common::http::tls::install_crypto_provider();
    let pem = cadenza_common::http::tls::self_signed(&["localhost"]).unwrap();
    let tls = cadenza_common::http::tls::client_config(pem.cert.as_bytes()).unwrap();
    Arc::new(SliceCache::new(
        SliceMath::new(SLICE),
        16 << 20,
        UpstreamConfig {
            origins,
            edge_key: "key".into(),
            timeout: Duration::from_secs(5),
            breaker_threshold: 100,
            breaker_cooldown: Duration::from_secs(1),
        },
        cadenza_common::http::client::https_client(tls),
        Arc::new(EdgeMetrics::new()),
        None,
    ))
}

#[tokio::test]
async fn only_the_bytes_asked_for_are_cached() {
    let (_stop, shutdown) = Shutdown::new();
    let honest = upstream(Answer::Honest, &shutdown).await;
    let shifted = upstream(Answer::Shifted, &shutdown).await;
    let id = FileId::random();
    let whole = object();
    let expected = |index: u64| {
        let start = (index * SLICE) as usize;
        whole.slice(start..(start + SLICE as usize).min(OBJECT))
    };

    // Alone, a shifted answer (as many bytes, from elsewhere) is refused, whatever slice.
    let alone = cache(vec![shifted.clone()]);
    for index in [0, 2] {
        let Err(err) = alone.slice(&id, index).await else {
            panic!("slice {index}: a shifted answer was taken");
        };
        assert!(err.to_string().contains("answered bytes="), "{err}");
    }
    // (The last slice, shifted, is a byte short as well.)
    assert!(alone.slice(&id, 4).await.is_err());
    // Behind it, an honest upstream gives every slice, the last one short, byte for byte.
    let both = cache(vec![shifted.clone(), honest.clone()]);
    for index in 0..5 {
        let got = both.slice(&id, index).await.unwrap();
        assert!(got == expected(index), "slice {index}");
    }

    // An upstream that gives the object another length than an earlier answer did is
    // refused: the first slice comes from one upstream, the second (the first upstream
    // failing) from one that says the object is a byte longer.
    let first_only = upstream(Answer::FirstOnly, &shutdown).await;
    let longer = upstream(Answer::Longer, &shutdown).await;
    let mixed = cache(vec![first_only, longer]);
    assert!(mixed.slice(&id, 0).await.unwrap() == expected(0));
    let Err(err) = mixed.slice(&id, 1).await else {
        panic!("an answer giving the object another length was taken");
    };
    assert!(err.to_string().contains("earlier 307200"), "{err}");
}

#[tokio::test]
async fn a_slice_fetched_across_a_purge_is_served_but_not_kept() {
    let (_stop, shutdown) = Shutdown::new();
    let slow = upstream(Answer::Slow, &shutdown).await;
    let cache = cache(vec![slow]);
    let id = FileId::random();
    let fetching = tokio::spawn({
        let (cache, id) = (cache.clone(), id.clone());
        async move { cache.slice(&id, 0).await }
    });
    // The purge lands once the fetch is under way (the upstream takes half a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.origin_fetches() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the fetch never began"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cache.purge(std::slice::from_ref(&id)).await;
    let got = fetching.await.unwrap().unwrap();
    assert!(
        got == object().slice(..SLICE as usize),
        "the request gets its bytes"
    );
    assert!(
        !cache.holds_anywhere(&id, 0),
        "a purged file's slice stayed cached"
    );
    // Fetched after the purge, it is kept.
    cache.slice(&id, 0).await.unwrap();
    assert!(cache.holds_anywhere(&id, 0));
}
