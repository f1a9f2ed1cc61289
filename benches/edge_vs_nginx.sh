#!/usr/bin/env bash
# Edge cache hits against nginx serving the same bytes, HTTP/1.1 cleartext, in one run.
#
# Starts `cadenza up --edge-cleartext` (release build) with a memory cache that holds every
# object, stores OBJECTS random renditions of OBJECT_MIB MiB through the origin, pre-warms the
# edge, and writes the same files for nginx (sendfile, one worker, no access log). Then wrk,
# pinned to core 1 with the servers pinned to core 0, fetches random 128 KiB ranges over CONNS
# keep-alive connections from each for DURATION seconds. The edge checks a signed token on
# every request; nginx checks nothing. Prints requests/s, MiB/s and server CPU-seconds per GB.
#
# Needs: nginx, wrk, curl, python3, taskset. Knobs: OBJECTS (200), OBJECT_MIB (5),
# CONNS (64), DURATION (15).
set -euo pipefail
cd "$(dirname "$0")/.."

OBJECTS=${OBJECTS:-200}
OBJECT_MIB=${OBJECT_MIB:-5}
CONNS=${CONNS:-64}
DURATION=${DURATION:-15}
RANGE=131072

source benches/lib.sh
bench_init
# Both servers on core 0; the edge's memory tier holds every object.
bench_up --edge-cleartext --edge-memory-mib $((OBJECTS * OBJECT_MIB + 256))
taskset -a -cp 0 "$up_pid" >/dev/null
echo "storing $OBJECTS × $OBJECT_MIB MiB renditions…"
bench_store "$OBJECTS" "$OBJECT_MIB" "$work/files"
bench_tokens "$work/tokens"
python3 - "${ids[@]}" >"$work/prewarm.json" <<'EOF'
import json, sys
print(json.dumps({"file_ids": sys.argv[1:]}))
EOF
curl -sSf --cacert "$ca" -H "Authorization: Bearer $admin_token" \
  --data-binary "@$work/prewarm.json" "$admin/admin/v1/prewarm" >/dev/null

# nginx's worker drops to an unprivileged user: let it read the files.
chmod a+x "$work"
chmod -R a+rX "$work/files"
nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
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
    location /a/ { alias $work/files/; }
  }
}
EOF
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" &
nginx_master=$!
pids+=("$nginx_master")
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$nginx_port/" && break
  sleep 0.05
done
nginx_worker=$(pgrep -P "$nginx_master" | head -1)

# One request: a random object, a random 128 KiB range, that object's token.
cat >"$work/ranges.lua" <<EOF
local objects = {}
for line in io.lines("$work/tokens") do
  local id, token = line:match("(%S+) (%S+)")
  objects[#objects + 1] = { id = id, auth = "Bearer " .. token }
end
local size = $((OBJECT_MIB * 1048576))
math.randomseed(7)
request = function()
  local o = objects[math.random(#objects)]
  local a = math.random(0, size - $RANGE - 1)
  return wrk.format("GET", "/a/" .. o.id, {
    ["Range"] = "bytes=" .. a .. "-" .. (a + $RANGE - 1),
    ["Authorization"] = o.auth,
  })
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %.3f\n", summary.requests, summary.bytes,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(99) / 1000))
end
EOF

cpu() { # pid → utime + stime, clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

run() { # name url pid → "req/s MiB/s cpu_s_per_GB p99_ms errors"
  taskset -c 1 wrk -t1 -c"$CONNS" -d3s -s "$work/ranges.lua" "$2" >/dev/null
  local c0 c1 out
  c0=$(cpu "$3")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$work/ranges.lua" "$2" | grep RESULT)
  c1=$(cpu "$3")
  python3 - "$out" "$c0" "$c1" "$DURATION" "$(getconf CLK_TCK)" <<'EOF'
import sys
_, reqs, body, errors, p99 = sys.argv[1].split()
c0, c1, dur, tck = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
reqs, body, errors = int(reqs), int(body), int(errors)
cpu = (c1 - c0) / tck
gb = body / 1e9
print(f"{reqs/dur:.0f} {body/dur/1048576:.1f} {cpu/gb:.3f} {float(p99):.2f} {errors}")
EOF
}

read -r e_rps e_mib e_cpu e_p99 e_err < <(run edge "$edge" "$up_pid")
read -r n_rps n_mib n_cpu n_p99 n_err < <(run nginx "http://127.0.0.1:$nginx_port" "$nginx_worker")

echo
echo "random 128 KiB ranges over $OBJECTS × $OBJECT_MIB MiB, HTTP/1.1 cleartext, $CONNS connections, ${DURATION}s"
printf '%-22s %10s %10s %14s %10s %8s\n' "" "req/s" "MiB/s" "CPU-s per GB" "p99 ms" "errors"
printf '%-22s %10s %10s %14s %10s %8s\n' "cadenza edge (token)" "$e_rps" "$e_mib" "$e_cpu" "$e_p99" "$e_err"
printf '%-22s %10s %10s %14s %10s %8s\n' "nginx (sendfile)" "$n_rps" "$n_mib" "$n_cpu" "$n_p99" "$n_err"
python3 - "$e_rps" "$n_rps" "$e_cpu" "$n_cpu" <<'EOF'
import sys
e_rps, n_rps, e_cpu, n_cpu = map(float, sys.argv[1:])
print(f"edge/nginx: throughput {e_rps/n_rps:.2f}×, CPU per GB {e_cpu/n_cpu:.2f}× (lower is better)")
EOF
