#!/usr/bin/env bash
# Edge cache hits against nginx serving the same bytes, HTTP/1.1 cleartext, HTTP/1.1 over TLS
# and HTTP/2 over TLS, in one run.
#
# Starts `cadenza up --edge-cleartext` (release build) with a memory cache that holds every
# object, stores OBJECTS random renditions of OBJECT_MIB MiB through the origin, pre-warms the
# edge, and writes the same files for nginx (sendfile, one worker, no access log). Then wrk,
# pinned to core 1 with the servers pinned to core 0, fetches random 128 KiB ranges over CONNS
# keep-alive connections from each. The edge checks a signed token on every request; nginx
# checks nothing. Prints requests/s, MiB/s and server CPU-seconds per GB, and beside them the
# busy time per GB of core 0 (the server's core, interrupts included) and of both cores (the
# client too): on loopback the receiver's TCP work runs on whichever core sends a segment, so a
# server whose segments go out on the client's ACKs hands part of its cost to the client.
#
# Each comparison is ROUNDS rounds of DURATION seconds on each server, taking turns at going
# first, and the figures are over all rounds. One round each is not enough on this machine:
# the kernel's share of a server's CPU (three quarters of it over cleartext) moves by up to
# 40 % from one run to the next, with the TCP segment sizes and pacing timers of the moment.
#
# HTTP/2 over TLS is driven by h2load (one thread, CONNS connections, one stream each, TLS 1.3
# with AES-128-GCM for both servers, which present the same certificate). h2load cannot vary
# a header per request, so every request asks for the same 128 KiB range (RANGE_AT, which
# spans two slices) of the next object in turn; the token rides in `?t=`.
#
# HTTP/1.1 over TLS is the cleartext run again through wrk's TLS (OpenSSL's default TLS 1.3
# suite for both servers; wrk offers no ALPN, so the edge serves it through its own
# unbuffered rustls stream and nginx through OpenSSL, both encrypting in user space).
#
# Over HTTP/1.1 the edge sends cached slices by sendfile from memory files, as nginx sends its
# files; SENDFILE=off makes it copy them instead (`--edge-no-sendfile`). Each rendition's memory
# file is an open descriptor, so the script raises the descriptor limit first.
#
# NETNS=on runs the comparisons with wrk and h2load in a network namespace of their own joined
# to the servers by a veth pair, and RPS sending each side's received packets to its own core:
# the servers' segments are then received on the client's core and the client's on the
# servers', as on a real network. Over loopback a segment's receive work runs on the core that
# sent it, so a server pays for part of its client's work, and how much depends on which
# segments it sends itself and which leave on the client's ACKs. Needs root and `ip`
# (iproute2). The edge then runs standalone (`cadenza edge --join`) on core 0.
#
# EDGE_MEMORY_MIB (default: room for every object) with EDGE_DISK_GIB (default 0) measures hits
# from the edge's disk tier instead: with a memory tier far smaller than the objects, most
# requests find their slice on disk (read, checked, promoted to memory), where nginx reads
# its files from the page cache either way. Standalone edge only (NETNS=on).
#
# PATTERN=sequential makes wrk's requests those of CONNS players, each reading a random object
# front to back in 128 KiB ranges and then another, as players do, in place of random ranges.
#
# Needs: nginx, wrk, h2load, curl, python3, taskset. Knobs: OBJECTS (200), OBJECT_MIB (5),
# CONNS (64), DURATION (10, per round), ROUNDS (4), RANGE_AT (1000000), SENDFILE (on), H1 (on; off skips HTTP/1.1
# cleartext), H1TLS (on; off skips HTTP/1.1 over TLS), H2 (on; off skips HTTP/2), NETNS (auto:
# on when run as root with `ip`, the measure the issue's targets are read against; off: loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

OBJECTS=${OBJECTS:-200}
OBJECT_MIB=${OBJECT_MIB:-5}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-4}
RANGE=131072
RANGE_AT=${RANGE_AT:-1000000}
SENDFILE=${SENDFILE:-on}
H2=${H2:-on}
H1=${H1:-on}
H1TLS=${H1TLS:-on}

source benches/lib.sh
bench_needs nginx wrk h2load curl python3 taskset
bench_init
bench_netns
# Both servers on core 0; the edge's memory tier holds every object.
# Room for slices in memory files beside the connections: as many descriptors as allowed.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
sendfile_args=() edge_sendfile_args=()
[ "$SENDFILE" = off ] && sendfile_args=(--edge-no-sendfile) edge_sendfile_args=(--no-sendfile)
if [ "$NETNS" = on ]; then
  # The stack's own edge idles on core 1; a standalone edge on core 0 serves the veth.
  bench_up --edge-memory-mib 16
  taskset -a -cp 1 "$up_pid" >/dev/null
  veth_port=$(free_port)
  EDGE_HOST=$host bench_edge 0 "$(free_port)" --memory-mib "${EDGE_MEMORY_MIB:-$((OBJECTS * OBJECT_MIB + 256))}" \
    --cleartext-listen "$host:$veth_port" "${edge_sendfile_args[@]}"
  edge=http://$host:$veth_port
  edge_tls=$edge_main
  admin=$edge_admin
  server_pid=$edge_pid
else
  bench_up --edge-cleartext --edge-memory-mib $((OBJECTS * OBJECT_MIB + 256)) "${sendfile_args[@]}"
  taskset -a -cp 0 "$up_pid" >/dev/null
  server_pid=$up_pid
fi
echo "storing $OBJECTS × $OBJECT_MIB MiB renditions…"
bench_store "$OBJECTS" "$OBJECT_MIB" "$work/files"
bench_tokens "$work/tokens"
bench_prewarm "$admin" "$admin_token"
edge_stat() { # field → its value in the edge's admin stats
  curl -sSf --cacert "$ca" -H "Authorization: Bearer $admin_token" "$admin/admin/v1/stats" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}
echo "sendfile $SENDFILE: $(edge_stat memory_files) memory files"

# nginx's worker drops to an unprivileged user: let it read the files.
chmod a+x "$work"
chmod -R a+rX "$work/files"
nginx_port=$(free_port)
nginx_tls_port=$(free_port)
nginx_veth= nginx_tls_veth=
if [ "$NETNS" = on ]; then
  nginx_veth="listen $host:$nginx_port;"
  nginx_tls_veth="listen $host:$nginx_tls_port ssl;"
fi
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$nginx_port;
    $nginx_veth
    location /a/ { alias $work/files/; }
  }
  server {
    listen 127.0.0.1:$nginx_tls_port ssl http2;
    $nginx_tls_veth
    ssl_certificate $work/data/tls/cert.pem;
    ssl_certificate_key $work/data/tls/key.pem;
    ssl_protocols TLSv1.3;
    http2_max_concurrent_streams 128;
    location /a/ { alias $work/files/; }
  }
}
EOF
bench_nginx "$nginx_port" taskset -c 0

# One request: a random object, a random 128 KiB range, that object's token (or, with
# PATTERN=sequential, a player's next 128 KiB).
bench_wrk_ranges "$work/ranges.lua" "$RANGE"


# PID → "process core0 machine": the server's CPU time, core 0's busy time and both cores',
# in clock ticks; the runners take one before and one after a run.
counters() {
  echo "$(bench_cpu "$1") $(bench_core_busy 0) $(bench_core_busy)"
}

run() { # url pid → "req/s MiB/s cpu_s_per_GB p99_ms errors core_s_per_GB machine_s_per_GB"
  local before after out
  before=$(counters "$2")
  out=$("${client[@]}" taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$work/ranges.lua" "$1" | grep RESULT)
  after=$(counters "$2")
  python3 - "$out" "$before" "$after" "$DURATION" "$(getconf CLK_TCK)" <<'EOF'
import sys
_, reqs, body, errors, _p50, p99 = sys.argv[1].split()
dur, tck = float(sys.argv[4]), int(sys.argv[5])
cpu, core, machine = (
    (int(a) - int(b)) / tck for b, a in zip(sys.argv[2].split(), sys.argv[3].split()))
reqs, body, errors = int(reqs), int(body), int(errors)
gb = body / 1e9
print(f"{reqs/dur:.0f} {body/dur/1048576:.1f} {cpu/gb:.3f} {float(p99):.2f} {errors} {core/gb:.3f} {machine/gb:.3f}")
EOF
}

# h2load over TLS: URI list file, server pid → "req/s MiB/s cpu_s_per_GB - errors"
run_h2() {
  local h2="h2load -t1 -c$CONNS -m1 --tls13-ciphers=TLS_AES_128_GCM_SHA256 -i $1"
  local hdr="range: bytes=$RANGE_AT-$((RANGE_AT + RANGE - 1))"
  local before after out
  before=$(counters "$2")
  out=$("${client[@]}" taskset -c 1 $h2 -H "$hdr" -D "$DURATION")
  after=$(counters "$2")
  python3 - "$out" "$before" "$after" "$DURATION" "$(getconf CLK_TCK)" "$RANGE" <<'EOF'
import re, sys
out = sys.argv[1]
dur, tck, rng = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
cpu, core, machine = (
    (int(a) - int(b)) / tck for b, a in zip(sys.argv[2].split(), sys.argv[3].split()))
m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
if not m or not codes:
    sys.exit("h2load printed no summary:\n" + out)
done, failed, errored = int(m.group(3)), int(m.group(5)), int(m.group(6))
ok = int(codes.group(1))
refused = sum(int(codes.group(i)) for i in (2, 3, 4))
body = ok * rng
print(f"{done/dur:.0f} {body/dur/1048576:.1f} {cpu/(body/1e9):.3f} - {failed + errored + refused} {core/(body/1e9):.3f} {machine/(body/1e9):.3f}")
EOF
}

# compare TITLE RUNNER EDGE_TARGET NGINX_TARGET: a 3-second warm-up of each server, then
# ROUNDS rounds of DURATION seconds on each, taking turns at going first, so that a drift
# in this machine's speed falls on both. Prints each round and the sums.
compare() {
  local title=$1 runner=$2 edge_target=$3 nginx_target=$4 r e n
  local rounds="$work/rounds"
  : >"$rounds"
  DURATION=3 "$runner" "$edge_target" "$server_pid" >/dev/null
  DURATION=3 "$runner" "$nginx_target" "$nginx_worker" >/dev/null
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
      e=$("$runner" "$edge_target" "$server_pid")
      n=$("$runner" "$nginx_target" "$nginx_worker")
    else
      n=$("$runner" "$nginx_target" "$nginx_worker")
      e=$("$runner" "$edge_target" "$server_pid")
    fi
    echo "$e $n" >>"$rounds"
  done
  echo
  echo "$title"
  python3 - "$rounds" "$DURATION" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
dur = float(sys.argv[2])
def whole(cols):
    """req/s, MiB/s, and CPU-s, core-0 busy s and both cores' busy s per GB over all
    rounds; the median p99; errors summed."""
    rps = sum(float(c[0]) for c in cols) / len(cols)
    mib = sum(float(c[1]) for c in cols) / len(cols)
    gbs = [float(c[1]) * dur * 1048576 / 1e9 for c in cols]
    cpu = sum(float(c[2]) * gb for c, gb in zip(cols, gbs)) / sum(gbs)
    core = sum(float(c[5]) * gb for c, gb in zip(cols, gbs)) / sum(gbs)
    machine = sum(float(c[6]) * gb for c, gb in zip(cols, gbs)) / sum(gbs)
    p99s = [float(c[3]) for c in cols if c[3] != "-"]
    p99 = f"{statistics.median(p99s):.2f}" if p99s else "-"
    return rps, mib, cpu, p99, sum(int(c[4]) for c in cols), core, machine
edge = whole([r[:7] for r in rows])
nginx = whole([r[7:] for r in rows])
fmt = "{:<22} {:>9} {:>9} {:>13} {:>14} {:>17} {:>9} {:>7}"
print(fmt.format("", "req/s", "MiB/s", "CPU-s per GB", "core-s per GB", "machine-s per GB", "p99 ms",
                 "errors"))
for name, (rps, mib, cpu, p99, err, core, machine) in (("cadenza edge (token)", edge),
                                                        ("nginx", nginx)):
    print(fmt.format(name, f"{rps:.0f}", f"{mib:.1f}", f"{cpu:.3f}", f"{core:.3f}",
                     f"{machine:.3f}", p99, err))
def by_round(i):
    return " ".join(f"{float(r[i]) / float(r[7 + i]):.2f}" for r in rows)
print(f"edge/nginx: throughput {edge[0] / nginx[0]:.2f}×, CPU per GB {edge[2] / nginx[2]:.2f}×, "
      f"core 0 busy per GB {edge[5] / nginx[5]:.2f}×, both cores per GB {edge[6] / nginx[6]:.2f}×")
print(f"  (lower is better; {len(rows)} rounds of {dur:.0f} s each; by round: CPU per GB "
      f"{by_round(2)}; core 0 {by_round(5)}; both cores {by_round(6)})")
EOF
}

if [ "$H1" != off ]; then
  compare "${PATTERN:-random} 128 KiB ranges over $OBJECTS × $OBJECT_MIB MiB, HTTP/1.1 cleartext (nginx: sendfile), $CONNS connections" \
    run "$edge" "http://$host:$nginx_port"
  echo "edge body bytes sent by sendfile: $(($(edge_stat sendfile_bytes) / 1048576)) MiB"
fi

tls_port=${edge_tls##*:}
if [ "$H1TLS" != off ]; then
  compare "${PATTERN:-random} 128 KiB ranges over $OBJECTS × $OBJECT_MIB MiB, HTTP/1.1 over TLS 1.3, $CONNS connections" \
    run "https://$host:$tls_port" "https://$host:$nginx_tls_port"
fi

[ "$H2" = off ] && exit 0
while read -r id token; do
  echo "https://$host:$tls_port/a/$id?t=$token"
done <"$work/tokens" >"$work/edge_uris"
for id in "${ids[@]}"; do
  echo "https://$host:$nginx_tls_port/a/$id"
done >"$work/nginx_uris"
compare "128 KiB ranges at byte $RANGE_AT of each object in turn, HTTP/2 over TLS 1.3, $CONNS connections" \
  run_h2 "$work/edge_uris" "$work/nginx_uris"
