#!/usr/bin/env bash
# TLS 1.3 handshakes on the edge against nginx, new sessions and resumed ones, in one run.
#
# Starts `cadenza up` (release build; pinned to core 1, where it idles) and a standalone
# `cadenza edge --join` on core 0, and nginx (one worker, core 0) with the same certificate
# and its default session tickets (both negotiate TLS 1.3). Then `openssl s_time` on core 1 opens
# connections one after another for DURATION seconds: each completes a handshake, sends
# `GET / HTTP/1.0` and reads the answer to its close (the edge refuses the request, nginx
# answers "ok": a few hundred bytes either way). `-new` makes every handshake a full one;
# `-reuse` resumes the first connection's session with its ticket. ROUNDS rounds, the
# servers taking turns. Prints connections per second and server CPU-milliseconds per
# thousand handshakes for each, and edge / nginx.
#
# Needs: nginx, openssl, curl, python3, taskset. Knobs: DURATION (10), ROUNDS (2),
# EDGE_ARGS (more `cadenza edge` flags, split on spaces).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}

source benches/lib.sh
bench_needs nginx openssl curl python3 taskset
bench_init
bench_up --edge-memory-mib 16
taskset -a -cp 1 "$up_pid" >/dev/null
# shellcheck disable=SC2086 # EDGE_ARGS is a list of flags
bench_edge 0 "$(free_port)" --memory-mib 64 ${EDGE_ARGS:-}
edge_port=${edge_main##*:}

nginx_port=$(free_port)
nginx_tls_port=$(free_port)
bench_nginx_ok "$nginx_port" "$nginx_tls_port" taskset -c 0

measure() { # name pid port mode → "name mode connections cpu_ticks"
  local c0 c1 out
  c0=$(bench_cpu "$2")
  out=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$3" "-$4" -time "$DURATION" -www / \
    2>/dev/null | grep "connections in" | tail -1)
  c1=$(bench_cpu "$2")
  echo "$1 $4 $(awk '{print $1}' <<<"$out") $((c1 - c0))"
}

rows=()
for r in $(seq 1 "$ROUNDS"); do
  for mode in new reuse; do
    if [ $((r % 2)) = 1 ]; then
      rows+=("$(measure edge "$edge_pid" "$edge_port" "$mode")")
      rows+=("$(measure nginx "$nginx_worker" "$nginx_tls_port" "$mode")")
    else
      rows+=("$(measure nginx "$nginx_worker" "$nginx_tls_port" "$mode")")
      rows+=("$(measure edge "$edge_pid" "$edge_port" "$mode")")
    fi
  done
done

echo
echo "TLS 1.3 handshakes by openssl s_time (one connection at a time, GET / HTTP/1.0 on each), $ROUNDS rounds × ${DURATION}s per server and mode"
printf '%s\n' "${rows[@]}" >"$work/rows"
python3 - "$work/rows" "$DURATION" "$ROUNDS" "$(getconf CLK_TCK)" <<'PY'
import sys
dur, rounds, tck = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tot = {}
for line in open(sys.argv[1]):
    name, mode, conns, ticks = line.split()
    c, t = tot.get((name, mode), (0, 0))
    tot[(name, mode)] = (c + int(conns), t + int(ticks))
print(f"{'':16} {'conn/s':>9} {'server CPU-ms per 1000':>24}")
per = {}
for mode, label in (("new", "full handshakes"), ("reuse", "resumed")):
    for name in ("edge", "nginx"):
        c, t = tot[(name, mode)]
        per[(name, mode)] = 1e6 * t / tck / c if c else float("nan")
        print(f"{name + ', ' + label:24} {c / (dur * rounds):9.0f} {per[(name, mode)]:16.1f}")
for mode, label in (("new", "full"), ("reuse", "resumed")):
    print(f"edge / nginx, {label}: server CPU per handshake {per[('edge', mode)] / per[('nginx', mode)]:.2f}×")
print(f"resumed / full, edge: {per[('edge', 'reuse')] / per[('edge', 'new')]:.2f}×; "
      f"nginx: {per[('nginx', 'reuse')] / per[('nginx', 'new')]:.2f}×")
PY
