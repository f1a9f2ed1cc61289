#!/usr/bin/env bash
# The edge's HTTP/3 against its own HTTP/2 over TLS, cache hits, in one run.
#
# Starts `cadenza up` (release build) for the origin and a standalone `cadenza edge --join`
# with a memory cache that holds every object, stores OBJECTS random renditions of
# OBJECT_MIB MiB, pre-warms the edge, then drives it with
# `proto_load` (benches/proto_load.rs), one client that speaks both protocols with the same
# loop: CONNS connections, one request at a time each, random 128 KiB ranges of random
# objects with a signed token, for DURATION seconds; the protocols take ROUNDS turns each.
# h2load has no HTTP/3, and a different tool per protocol would measure the tools. The
# server is pinned to core 0 and the client to core 1. Prints requests/s, MiB/s, latency
# (the rounds' medians) and server CPU-seconds per GB for each over all rounds, then each round.
#
# NETNS=on (auto: when run as root with `ip`) puts the client in a network namespace of its own
# behind a veth pair, RPS handing each side's received packets to its own core, as
# `edge_vs_nginx.sh` does (benches/lib.sh, bench_netns): over loopback the receive work of
# every datagram the edge sends runs on the edge's core, a cost that is the client machine's
# on a real network. NETNS=off measures over loopback.
#
# Needs: curl, python3, taskset. Knobs: OBJECTS (200), OBJECT_MIB (5), CONNS (64),
# DURATION (10), ROUNDS (3), H3_MAX_UDP_PAYLOAD (1452: Ethernet; loopback allows up to 65527),
# H3_ACK_EVERY (10, the edge's default; 2 is QUIC's every other packet), EDGE_CPUS (0: the
# cores the edge is pinned to, e.g. 0-1), H3_DRIVERS (0: one QUIC driver per core it may use),
# NETNS (auto).
set -euo pipefail
cd "$(dirname "$0")/.."

OBJECTS=${OBJECTS:-200}
OBJECT_MIB=${OBJECT_MIB:-5}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}

source benches/lib.sh
bench_needs curl python3 taskset
bench_init
bench_netns
cargo build --release -q -p cadenza-benches --bin proto_load
load=target/release/proto_load
H3_MAX_UDP_PAYLOAD=${H3_MAX_UDP_PAYLOAD:-1452}
bench_up --edge-memory-mib 16
edge_port=$(free_port)
h3_args=(--h3-max-udp-payload "$H3_MAX_UDP_PAYLOAD")
h3_args+=(--h3-ack-every "${H3_ACK_EVERY:-10}" --h3-drivers "${H3_DRIVERS:-0}")
EDGE_HOST=$host bench_edge "${EDGE_CPUS:-0}" "$edge_port" --memory-mib $((OBJECTS * OBJECT_MIB + 256)) "${h3_args[@]}"
echo "storing $OBJECTS × $OBJECT_MIB MiB renditions…"
bench_store "$OBJECTS" "$OBJECT_MIB"
bench_tokens "$work/tokens"
bench_prewarm "$edge_admin" "$admin_token"
addr=$host:$edge_port

drive() { # proto secs → proto_load's RESULT line
  QUIC_MAX_UDP_PAYLOAD=$H3_MAX_UDP_PAYLOAD "${client[@]}" taskset -c 1 "$load" "$1" "$addr" "$ca" "$work/tokens" \
    $((OBJECT_MIB * 1048576)) "$CONNS" "$2" | grep RESULT
}

# The two protocols take turns, so a change in what the host gives this machine's cores
# over the run (on the 2-core VM, up to half between rounds minutes apart) falls on both.
rounds=()
for r in $(seq 1 "$ROUNDS"); do
  rounds+=("$r h2 $(bench_round "$edge_pid" drive h2)" "$r h3 $(bench_round "$edge_pid" drive h3)")
done

echo
echo "random 128 KiB ranges over $OBJECTS × $OBJECT_MIB MiB, $CONNS connections, $ROUNDS rounds × ${DURATION}s each, one client (proto_load, NETNS=$NETNS); QUIC payload ≤ $H3_MAX_UDP_PAYLOAD, ACK every ${H3_ACK_EVERY:-10}"
printf '%s\n' "${rounds[@]}" >"$work/rounds"
bench_rounds_report "$work/rounds" "h2:HTTP/2:edge HTTP/2+TLS" "h3:HTTP/3:edge HTTP/3"
