#!/usr/bin/env bash
# Two builds of the edge on the same load, in one run: a change's effect on cache hits, with
# the host's drift falling on both.
#
# Starts `cadenza up` (release build, CADENZA_BIN or built here) for the origin and two
# standalone `cadenza edge --join`, "new" (that build) and "base" (BASE_BIN, required), each
# with a memory cache that holds every object, both pinned to core 0; stores OBJECTS random
# renditions of OBJECT_MIB MiB and pre-warms both edges. Then `proto_load` on core 1 drives
# them in turn, base then new, ROUNDS times: CONNS connections over PROTO (h2: HTTP/2 over
# TLS, or h3), one request at a time each, random 128 KiB ranges with a signed token,
# for DURATION seconds each. PROTO=h1 drives each edge's cleartext listener with wrk instead
# (HTTP/1.1, the same ranges). Only the edge being driven is busy; the other waits idle. Prints
# each build's totals, every round, and new / base for throughput and CPU-seconds per GB.
#
# Needs: curl, python3, taskset (and wrk for h1). Knobs: BASE_BIN (required), PROTO (h2), OBJECTS (200),
# OBJECT_MIB (5), CONNS (64), DURATION (10), ROUNDS (3), H3_MAX_UDP_PAYLOAD (1452).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${BASE_BIN:?BASE_BIN: the cadenza binary to compare against}"
PROTO=${PROTO:-h2}
OBJECTS=${OBJECTS:-200}
OBJECT_MIB=${OBJECT_MIB:-5}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}

source benches/lib.sh
bench_needs curl python3 taskset
if [ "$PROTO" = h1 ]; then bench_needs wrk; fi
bench_init
cargo build --release -q -p cadenza-benches --bin proto_load
load=target/release/proto_load
H3_MAX_UDP_PAYLOAD=${H3_MAX_UDP_PAYLOAD:-1452}
bench_up --edge-memory-mib 16
edge_args=(--memory-mib $((OBJECTS * OBJECT_MIB + 256)) --h3-max-udp-payload "$H3_MAX_UDP_PAYLOAD")
port_new=$(free_port) clear_new=$(free_port)
bench_edge 0 "$port_new" "${edge_args[@]}" --cleartext-listen "127.0.0.1:$clear_new"
pid_new=$edge_pid admin_new=$edge_admin
port_base=$(free_port) clear_base=$(free_port)
edge_bin=$BASE_BIN edge_name=edge-base bench_edge 0 "$port_base" "${edge_args[@]}" \
  --cleartext-listen "127.0.0.1:$clear_base"
pid_base=$edge_pid admin_base=$edge_admin
echo "storing $OBJECTS × $OBJECT_MIB MiB renditions…"
bench_store "$OBJECTS" "$OBJECT_MIB"
bench_tokens "$work/tokens"
bench_prewarm "$admin_new" "$admin_token"
bench_prewarm "$admin_base" "$admin_token"

bench_wrk_ranges "$work/ranges.lua" 131072

drive() { # port secs → proto_load's RESULT line
  if [ "$PROTO" = h1 ]; then
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$2s" -s "$work/ranges.lua" "http://127.0.0.1:$1" | grep RESULT
    return
  fi
  QUIC_MAX_UDP_PAYLOAD=$H3_MAX_UDP_PAYLOAD taskset -c 1 "$load" "$PROTO" "127.0.0.1:$1" "$ca" \
    "$work/tokens" $((OBJECT_MIB * 1048576)) "$CONNS" "$2" | grep RESULT
}

if [ "$PROTO" = h1 ]; then
  port_new=$clear_new port_base=$clear_base
fi
rounds=()
for r in $(seq 1 "$ROUNDS"); do
  rounds+=("$r base $(bench_round "$pid_base" drive "$port_base")")
  rounds+=("$r new $(bench_round "$pid_new" drive "$port_new")")
done

echo
echo "$PROTO, random 128 KiB ranges over $OBJECTS × $OBJECT_MIB MiB, $CONNS connections, $ROUNDS rounds × ${DURATION}s each"
echo "base: $BASE_BIN; new: $bin"
printf '%s\n' "${rounds[@]}" >"$work/rounds"
bench_rounds_report "$work/rounds" "base:base:base" "new:new:new"
