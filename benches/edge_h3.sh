#!/usr/bin/env bash
# The edge's HTTP/3 against its own HTTP/2 over TLS, cache hits, in one run.
#
# Starts `cadenza up` (release build) for the origin and a standalone `cadenza edge --join`
# with a memory cache that holds every object, stores OBJECTS random renditions of
# OBJECT_MIB MiB, pre-warms the edge, then drives it with
# `proto_load` (benches/proto_load.rs), one client that speaks both protocols with the same
# loop: CONNS connections, one request at a time each, random 128 KiB ranges of random
# objects with a signed token, for DURATION seconds. h2load has no HTTP/3, and a different
# tool per protocol would measure the tools. The server is pinned to core 0 and the client
# to core 1. Prints requests/s, MiB/s, latency and server CPU-seconds per GB for each.
#
# Needs: curl, python3, taskset. Knobs: OBJECTS (200), OBJECT_MIB (5), CONNS (64),
# DURATION (15), H3_MAX_UDP_PAYLOAD (1452: Ethernet; loopback allows up to 65527),
# H3_ACK_EVERY (10, the edge's default; 2 is QUIC's every other packet), EDGE_CPUS (0: the
# cores the edge is pinned to, e.g. 0-1), H3_DRIVERS (0: one QUIC driver per core it may use).
set -euo pipefail
cd "$(dirname "$0")/.."

OBJECTS=${OBJECTS:-200}
OBJECT_MIB=${OBJECT_MIB:-5}
CONNS=${CONNS:-64}
DURATION=${DURATION:-15}

source benches/lib.sh
bench_needs curl python3 taskset
bench_init
cargo build --release -q -p cadenza-benches --bin proto_load
load=target/release/proto_load
H3_MAX_UDP_PAYLOAD=${H3_MAX_UDP_PAYLOAD:-1452}
bench_up --edge-memory-mib 16
edge_port=$(free_port)
h3_args=(--h3-max-udp-payload "$H3_MAX_UDP_PAYLOAD")
h3_args+=(--h3-ack-every "${H3_ACK_EVERY:-10}" --h3-drivers "${H3_DRIVERS:-0}")
bench_edge "${EDGE_CPUS:-0}" "$edge_port" --memory-mib $((OBJECTS * OBJECT_MIB + 256)) "${h3_args[@]}"
echo "storing $OBJECTS × $OBJECT_MIB MiB renditions…"
bench_store "$OBJECTS" "$OBJECT_MIB"
bench_tokens "$work/tokens"
bench_prewarm "$edge_admin" "$admin_token"
addr=127.0.0.1:$edge_port

run() { # proto → "req/s MiB/s p50_ms p99_ms cpu_s_per_GB errors"
  QUIC_MAX_UDP_PAYLOAD=$H3_MAX_UDP_PAYLOAD taskset -c 1 "$load" "$1" "$addr" "$ca" "$work/tokens" $((OBJECT_MIB * 1048576)) "$CONNS" 3 >/dev/null
  local c0 c1 out
  c0=$(bench_cpu "$edge_pid")
  out=$(QUIC_MAX_UDP_PAYLOAD=$H3_MAX_UDP_PAYLOAD taskset -c 1 "$load" "$1" "$addr" "$ca" "$work/tokens" $((OBJECT_MIB * 1048576)) "$CONNS" "$DURATION" | grep RESULT)
  c1=$(bench_cpu "$edge_pid")
  python3 - "$out" "$c0" "$c1" "$DURATION" "$(getconf CLK_TCK)" <<'PY'
import sys
_, reqs, body, errors, p50, p99 = sys.argv[1].split()
c0, c1, dur, tck = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
cpu = (c1 - c0) / tck
print(f"{int(reqs)/dur:.0f} {int(body)/dur/1048576:.1f} {float(p50):.2f} {float(p99):.2f} {cpu/(int(body)/1e9):.3f} {errors}")
PY
}

read -r h2_rps h2_mib h2_p50 h2_p99 h2_cpu h2_err < <(run h2)
read -r h3_rps h3_mib h3_p50 h3_p99 h3_cpu h3_err < <(run h3)

echo
echo "random 128 KiB ranges over $OBJECTS × $OBJECT_MIB MiB, $CONNS connections, ${DURATION}s, one client (proto_load); QUIC payload ≤ $H3_MAX_UDP_PAYLOAD, ACK every ${H3_ACK_EVERY:-10}"
printf '%-16s %9s %9s %8s %8s %14s %7s\n' "" "req/s" "MiB/s" "p50 ms" "p99 ms" "CPU-s per GB" "errors"
printf '%-16s %9s %9s %8s %8s %14s %7s\n' "edge HTTP/2+TLS" "$h2_rps" "$h2_mib" "$h2_p50" "$h2_p99" "$h2_cpu" "$h2_err"
printf '%-16s %9s %9s %8s %8s %14s %7s\n' "edge HTTP/3" "$h3_rps" "$h3_mib" "$h3_p50" "$h3_p99" "$h3_cpu" "$h3_err"
python3 - "$h3_rps" "$h2_rps" "$h3_cpu" "$h2_cpu" <<'PY'
import sys
h3, h2, c3, c2 = map(float, sys.argv[1:])
print(f"HTTP/3 / HTTP/2: throughput {h3/h2:.2f}×, server CPU per GB {c3/c2:.2f}×")
PY
