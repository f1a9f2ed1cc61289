//! External peers (curl, ffmpeg, …) the tests run: a missing one skips its check with a
//! notice, unless `CADENZA_REQUIRE_PEERS` is set (as CI sets it), where it fails the test.
//! Include with `#[path = "../../tests/support/peers.rs"] mod peers;`.

/// Skips, or fails under `CADENZA_REQUIRE_PEERS`, for a `tool` that is not installed.
pub fn skip_or_fail(tool: &str) {
    assert!(
        std::env::var_os("CADENZA_REQUIRE_PEERS").is_none(),
        "{tool} is required (CADENZA_REQUIRE_PEERS is set) but not installed"
    );
    eprintln!("SKIPPED: {tool} is not installed");
}
