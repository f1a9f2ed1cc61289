#!/usr/bin/env bash
# Runs Cadenza's fuzz targets under libFuzzer: cargo fuzz, nightly Rust, AddressSanitizer.
#
#   fuzz/run.sh                              # every target, 60 s each
#   SECONDS_EACH=1800 fuzz/run.sh h1_conn    # one target, half an hour
#
# Each target starts from its seeds (fuzz/seeds/<target>), the findings already fixed
# (fuzz/regressions/<target>) and, for `geoip` and `master`, the repository's GeoIP databases
# and the first 32 KiB of its FLAC masters; what it learns stays in target/fuzz-corpus
# between runs. A crash stops the run with the input in fuzz/artifacts/<target>/: once
# fixed, copy it into fuzz/regressions/<target>/, where `cargo test -p cadenza-fuzz`
# replays it on stable Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_EACH:-60}
all=(h1_head h1_conn tls_conn h3_request h3_control proxy_header ranges client_fields geoip master tls_hello tus_headers coalesce)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

max_len() {
    case $1 in
        h1_head) echo 4096 ;;
        h1_conn | tls_conn) echo 8192 ;;
        ranges | client_fields | tus_headers | h3_control) echo 1024 ;;
        proxy_header) echo 2048 ;;
        tls_hello | coalesce | h3_request) echo 4096 ;;
        geoip) echo 32768 ;;
        master) echo 65536 ;;
        *) echo "fuzz/run.sh: no target $1 (${all[*]})" >&2; exit 2 ;;
    esac
}

for t in "${targets[@]}"; do
    len=$(max_len "$t")
    corpus=target/fuzz-corpus/$t
    mkdir -p "$corpus"
    for d in fuzz/seeds/$t fuzz/regressions/$t; do
        [ -d "$d" ] && cp -n "$d"/* "$corpus"/ 2>/dev/null || true
    done
    case $t in
        geoip) cp -n tests/fixtures/geoip/*.mmdb "$corpus"/ ;;
        master) for f in tests/fixtures/flac/*.flac; do
                    head -c 32768 "$f" > "$corpus/$(basename "$f" .flac).head"
                done ;;
    esac
    echo "== $t: ${secs} s, inputs up to $len bytes, $(ls "$corpus" | wc -l) in the corpus"
    cargo +nightly fuzz run --fuzz-dir fuzz --features libfuzzer "$t" "$corpus" -- \
        -max_total_time="$secs" -max_len="$len" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1
done
