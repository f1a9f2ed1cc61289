//! How much an HTTP/2 server lets a client send ahead of its reading, read from the client's
//! side with the `h2` crate. Include with
//! `#[path = "../../tests/support/h2_credit.rs"] mod h2_credit;`.

use std::time::Duration;

/// The send credit `body` is given, asking for 4 MiB: what it has once a second passes with
/// no change (or all 4 MiB).
pub async fn settled<B: bytes::Buf>(body: &mut h2::SendStream<B>) -> usize {
    const ASKED: usize = 4 << 20;
    body.reserve_capacity(ASKED);
    let mut granted = 0;
    while let Ok(Some(Ok(now))) = tokio::time::timeout(
        Duration::from_secs(1),
        std::future::poll_fn(|cx| body.poll_capacity(cx)),
    )
    .await
    {
        granted = now;
        if now >= ASKED {
            break;
        }
    }
    granted
}
