#!/usr/bin/env bash
# The edge's resident memory with its memory tier full, and with 10,000 idle keep-alive
# connections open, against nginx holding the same idle connections, in one run.
#
# Starts `cadenza up` for the origin, then a standalone `cadenza edge --join` (release build,
# memory tier MEMORY_MIB, no disk tier) so the edge's memory is measured alone. Stores
# OBJECTS random renditions of OBJECT_MIB MiB (more than the tier holds) and pre-warms them
# all through the edge, then reads VmRSS. Then benches/idle_conns.py opens CONNS connections
# to the edge's cleartext port and as many over TLS, one small request each, and holds them
# idle; the same against nginx (one worker; cleartext and TLS). The TLS connections go to a
# second edge process, pre-warmed the same way, and to a second nginx, so they cannot reuse
# memory the cleartext ones freed. Then CONNS idle HTTP/3 connections to a third fresh edge
# (`proto_load h3-idle`: one GET /healthz each, then held with QUIC pings); nginx 1.22 has no
# HTTP/3, so their figure is set against the edge's own over TLS. Prints resident sizes in MiB,
# and the CPU time the HTTP/3 edge spent opening (and, at a cap, making room for) them.
#
# Needs: nginx, curl, python3. Knobs: MEMORY_MIB (256), OBJECTS (80), OBJECT_MIB (5),
# CONNS (10000), H3_MAX_CONNECTIONS (unset: the edge's default, --max-connections).
set -euo pipefail
cd "$(dirname "$0")/.."

MEMORY_MIB=${MEMORY_MIB:-256}
OBJECTS=${OBJECTS:-80}
OBJECT_MIB=${OBJECT_MIB:-5}
CONNS=${CONNS:-10000}
ulimit -n "$(ulimit -Hn)"

source benches/lib.sh
bench_needs nginx curl python3
bench_init
bench_up --edge-memory-mib 16
cargo build --release -q -p cadenza-benches --bin proto_load
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

edge_port=$(free_port)
clear_port=$(free_port)
bench_edge 0-1 "$edge_port" --cleartext-listen "127.0.0.1:$clear_port" --memory-mib "$MEMORY_MIB"
rss_start=$(rss "$edge_pid")

echo "storing $OBJECTS × $OBJECT_MIB MiB renditions…"
bench_store "$OBJECTS" "$OBJECT_MIB"
bench_prewarm "$edge_admin" "$admin_token"
sleep 1
held=$(curl -sSf --cacert "$ca" -H "Authorization: Bearer $admin_token" "$edge_admin/admin/v1/stats" |
  python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["cache_bytes"])')
rss_full=$(rss "$edge_pid")

idle() { # pid port path [tls CA | h3 CA] → RSS before, RSS with CONNS idle connections, how many opened, CPU ticks the server used meanwhile
  local pid=$1 port=$2 path=$3; shift 3
  local before cpu
  before=$(rss "$pid")
  cpu=$(bench_cpu "$pid")
  local fifo=$work/idle.$port
  mkfifo "$fifo"
  if [ "${1:-}" = h3 ]; then
    target/release/proto_load h3-idle "127.0.0.1:$port" "$2" "$CONNS" <"$fifo" >"$fifo.out" &
  else
    python3 benches/idle_conns.py 127.0.0.1 "$port" "$CONNS" "$path" "$@" <"$fifo" >"$fifo.out" &
  fi
  local py=$!
  exec 7>"$fifo"
  for _ in $(seq 1 1200); do
    grep -q '^open' "$fifo.out" 2>/dev/null && break
    sleep 0.1
  done
  sleep 1
  echo "$before $(rss "$pid") $(awk '{print $2}' "$fifo.out") $(($(bench_cpu "$pid") - cpu))"
  exec 7>&-
  wait "$py" || true
}

# The next protocol on a fresh edge, its tier full again: memory the previous connections
# freed would otherwise be reused by the next ones, and hide part of their cost.
fresh_edge() { # [extra edge arguments]
  kill "$edge_pid"
  wait "$edge_pid" 2>/dev/null || true
  rm -f "$work/edge/edge.json"
  edge_port=$(free_port)
  bench_edge 0-1 "$edge_port" --memory-mib "$MEMORY_MIB" "$@"
  bench_prewarm "$edge_admin" "$admin_token"
  sleep 1
}

read -r _ edge_clear opened_clear _ < <(idle "$edge_pid" "$clear_port" /healthz)
fresh_edge
read -r edge_tls_before edge_tls opened_tls _ < <(idle "$edge_pid" "$edge_port" /healthz tls "$ca")
fresh_edge ${H3_MAX_CONNECTIONS:+--h3-max-connections "$H3_MAX_CONNECTIONS"}
read -r edge_h3_before edge_h3 opened_h3 h3_ticks < <(idle "$edge_pid" "$edge_port" /healthz h3 "$ca")

nginx_port=$(free_port)
nginx_tls_port=$(free_port)
bench_nginx_ok "$nginx_port" "$nginx_tls_port"
read -r nginx_base nginx_clear n_opened_clear _ < <(idle "$nginx_worker" "$nginx_port" /)
# TLS on a fresh nginx too, for the same reason as the edge.
kill "$nginx_master"
wait "$nginx_master" 2>/dev/null || true
bench_nginx "$nginx_port"
read -r nginx_tls_before nginx_tls n_opened_tls _ < <(idle "$nginx_worker" "$nginx_tls_port" / tls "$ca")

python3 - "$MEMORY_MIB" "$held" "$rss_start" "$rss_full" "$edge_clear" "$edge_tls" \
  "$nginx_base" "$nginx_clear" "$nginx_tls" "$CONNS" "$opened_clear" "$opened_tls" \
  "$n_opened_clear" "$n_opened_tls" "$edge_tls_before" "$nginx_tls_before" \
  "$edge_h3_before" "$edge_h3" "$opened_h3" "$h3_ticks" "$(getconf CLK_TCK)" <<'PY'
import sys
a = sys.argv[1:]
mem, held = int(a[0]), int(a[1]) / 1048576
start, full, e_clear, e_tls, n_base, n_clear, n_tls = map(float, a[2:9])
conns = int(a[9])
opened = a[10:14]
e_tls_before, n_tls_before = float(a[14]), float(a[15])
e_h3_before, e_h3, opened_h3 = float(a[16]), float(a[17]), a[18]
print()
print(f"edge memory tier {mem} MiB, holding {held:.1f} MiB after the pre-warm")
print(f"  edge RSS at start            {start:8.1f} MiB")
print(f"  edge RSS, memory tier full   {full:8.1f} MiB  (tier + {full - mem:.1f} MiB; target ≤ tier + 64)")
print(f"  + {conns} idle, cleartext    {e_clear:8.1f} MiB  (+{e_clear - full:.1f} MiB, {1024 * (e_clear - full) / conns:.1f} KiB each; {opened[0]} open)")
print(f"  {conns} idle over TLS       {e_tls:8.1f} MiB  (+{e_tls - e_tls_before:.1f} MiB from {e_tls_before:.1f}, a fresh edge with its tier full; {opened[1]} open)")
print(f"  {conns} idle over HTTP/3    {e_h3:8.1f} MiB  (+{e_h3 - e_h3_before:.1f} MiB from {e_h3_before:.1f}, a third fresh edge, {1024 * (e_h3 - e_h3_before) / conns:.1f} KiB each; {opened_h3} open; edge CPU {int(a[19]) / int(a[20]):.2f} s meanwhile)")
print(f"nginx worker RSS               {n_base:8.1f} MiB")
print(f"  + {conns} idle, cleartext    {n_clear:8.1f} MiB  (+{n_clear - n_base:.1f} MiB, {1024 * (n_clear - n_base) / conns:.1f} KiB each; {opened[2]} open)")
print(f"  {conns} idle over TLS       {n_tls:8.1f} MiB  (+{n_tls - n_tls_before:.1f} MiB from {n_tls_before:.1f}; {opened[3]} open)")
ec, et = e_clear - full, e_tls - e_tls_before
nc, nt = max(n_clear - n_base, 0.1), max(n_tls - n_tls_before, 0.1)
print(f"idle-connection memory, edge/nginx: cleartext {ec/nc:.2f}×, TLS {et/nt:.2f}×")
print(f"idle-connection memory, edge HTTP/3 / edge TLS: {(e_h3 - e_h3_before) / max(et, 0.1):.2f}× (target: 10,000 add ≤ 100 MiB)")
PY
