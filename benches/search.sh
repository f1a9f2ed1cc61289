#!/usr/bin/env bash
# Search on one thread over the same synthetic catalogue and queries (benches/search_data.rs):
# Cadenza's index (benches/search_bench.rs, with an exhaustive scan on a few queries for the
# recall ceiling) against tantivy's fuzzy query (benches/search-peer, its own workspace so the
# normal build never compiles tantivy). Prints both and the ratios.
#
# Usage: benches/search.sh [TRACKS] [QUERIES] [SCANNED]   (default 1000000 2000 20)
set -euo pipefail
cd "$(dirname "$0")/.."
tracks=${1:-1000000}
queries=${2:-2000}
scanned=${3:-20}
cargo build --release -q -p cadenza-benches --bin search_bench
CARGO_TARGET_DIR=target/search-peer cargo build --release -q \
  --manifest-path benches/search-peer/Cargo.toml
ours=$(target/release/search_bench "$tracks" "$queries" "$scanned")
peer=$(target/search-peer/release/tantivy_peer "$tracks" "$queries")
echo "$ours"
echo "$peer"
p50=$(grep '^cadenza search' <<<"$ours" | sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p')
p99=$(grep '^cadenza search' <<<"$ours" | sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p')
tp50=$(sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p' <<<"$peer")
tp99=$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p' <<<"$peer")
echo "ratio: tantivy's p50 is $(echo "scale=2; $tp50 / $p50" | bc)× Cadenza's, its p99 $(echo "scale=2; $tp99 / $p99" | bc)×"
