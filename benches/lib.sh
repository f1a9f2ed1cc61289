# Shared by the benchmark scripts that run a whole stack; source it after `cd` to the repo.
#
#   bench_needs TOOL…               stops at once, naming the Debian packages, when a tool
#                                   the bench runs is missing (before anything is built)
#   bench_init                      a work directory in $work, cleaned up (with every pid in
#                                   $pids) on exit; the release binary in $bin (CADENZA_BIN
#                                   names another build, e.g. a copy of an earlier commit's,
#                                   and skips the build)
#   bench_up [ARGS…]                `cadenza up` on free ports with extra ARGS, waits for it,
#                                   and sets $origin $edge (cleartext, when enabled) $edge_tls
#                                   $admin $ca $service $admin_token
#   bench_store N MIB [DIR]         N random renditions of MIB MiB stored through the origin;
#                                   their ids in $ids, copies kept in DIR when given
#   bench_tokens FILE               "id token" lines for every id in $ids
#   bench_edge CPUS PORT [ARGS…]    a standalone `cadenza edge --join` of that stack on
#                                   $EDGE_HOST (127.0.0.1):PORT, pinned to CPUS (e.g. 0, or 0-1), no
#                                   disk tier, extra ARGS; sets $edge_pid $edge_admin $edge_main;
#                                   $edge_bin (default $bin) and $edge_name (edge: its directory
#                                   and log under $work) let a script start a second one
#   bench_prewarm ADMIN_URL TOKEN   pre-warms every id in $ids into that edge's cache
#   bench_nginx PORT [PREFIX…]      nginx with $work/nginx.conf (run behind PREFIX, e.g.
#                                   taskset -c 0), waited for on cleartext PORT; sets
#                                   $nginx_master $nginx_worker
#   bench_nginx_ok PORT TLS_PORT [PREFIX…]
#                                   bench_nginx with a configuration of its own: one worker,
#                                   "ok" to every request on cleartext PORT and on TLS_PORT
#                                   (the stack's certificate, TLS 1.3 only), room for 15,000
#                                   connections
#   bench_wrk_ranges FILE RANGE     a wrk script in FILE: each request a random object of $ids
#                                   (tokens from $work/tokens), a random RANGE-byte range of
#                                   its OBJECT_MIB MiB, seeded the same every run (with
#                                   PATTERN=sequential: CONNS players each reading a random
#                                   object front to back in RANGE-byte ranges, then another);
#                                   it ends by printing "RESULT requests bytes errors p50_ms p99_ms"
#   bench_cpu PID                   the process's user + system time, clock ticks
#   bench_round PID DRIVE ARG       one measured round of a proto_load driver: `DRIVE ARG 3`
#                                   (warm-up), then `DRIVE ARG $DURATION`, which prints
#                                   proto_load's RESULT line; prints "requests body_bytes errors
#                                   p50_ms p99_ms cpu_ticks", the ticks PID used meanwhile
#   bench_rounds_report FILE A B    the totals, every round and B / A from FILE's lines
#                                   "round KEY <bench_round's line>"; A and B are KEY:SHORT:NAME
#                                   (e.g. h2:HTTP/2:edge HTTP/2+TLS)
#   bench_core_busy [CPU]           that core's busy time (user, nice, system, irq, softirq;
#                                   not idle, iowait or steal), clock ticks; without CPU,
#                                   every core's
#   free_port                       a free TCP port on 127.0.0.1
#   bench_netns                     where the load generator runs, after bench_init: with
#                                   NETNS=on (auto: when root with `ip`) a network namespace
#                                   joined to this one by a veth pair (MTU 1500), RPS handing
#                                   each side's received packets to its own core (0 here, 1
#                                   there), as two machines on a network would have it; over
#                                   loopback a packet's receive work runs on the core that sent
#                                   it, so a server pays for part of its client's. Sets $NETNS
#                                   (on or off), $host (the servers' address the client
#                                   reaches: 10.213.0.1, or 127.0.0.1) and $client (the prefix
#                                   that runs a command on the client's side); removed on exit

bench_needs() {
  local missing=() packages=() tool
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
      missing+=("$tool")
      case $tool in
        h2load) packages+=(nghttp2-client) ;;
        taskset) packages+=(util-linux) ;;
        *) packages+=("$tool") ;;
      esac
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "this bench needs ${missing[*]}: apt-get install ${packages[*]}" >&2
    exit 1
  fi
}

bench_init() {
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
  if [ -n "${CADENZA_BIN:-}" ]; then
    bin=$CADENZA_BIN
  else
    cargo build --release -q -p cadenza
    bin=target/release/cadenza
  fi
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Takes the veth pair with it.
  if [ -n "${bench_ns:-}" ]; then ip netns del "$bench_ns" 2>/dev/null || true; fi
  rm -rf "$work"
}

bench_up() {
  "$bin" up --port-base 0 --workers 0 --data "$work/data" "$@" >"$work/up.log" 2>&1 &
  up_pid=$!
  pids+=("$up_pid")
  for _ in $(seq 1 300); do
    [ -f "$work/data/cluster.json" ] && break
    sleep 0.1
  done
  read -r origin edge admin ca service admin_token edge_tls < <(python3 - "$work/data" <<'PY'
import json, sys
d = sys.argv[1]
c = json.load(open(d + "/cluster.json"))
s = json.load(open(d + "/secrets.json"))
print(c["origin"], c.get("edge_cleartext") or c["edge"], c["edge_admin"], c["ca"],
      s["service_token"], c["admin_token"], c["edge"])
PY
)
}

bench_store() {
  local n=$1 mib=$2 keep=${3:-}
  ids=()
  [ -n "$keep" ] && mkdir -p "$keep"
  for _ in $(seq 1 "$n"); do
    head -c $((mib * 1048576)) /dev/urandom >"$work/obj"
    local id
    id=$(sha256sum "$work/obj" | cut -c1-40)
    curl -sSf --cacert "$ca" -o /dev/null -X PUT --data-binary "@$work/obj" \
      -H "Authorization: Bearer $service" "$origin/internal/v1/objects/$id"
    if [ -n "$keep" ]; then mv "$work/obj" "$keep/$id"; fi
    ids+=("$id")
  done
  rm -f "$work/obj"
}

bench_tokens() {
  "$bin" token --data "$work/data" --ttl-secs 7200 "${ids[@]}" >"$1"
}

bench_edge() {
  local cpus=$1 port=$2 dir="$work/${edge_name:-edge}"; shift 2
  mkdir -p "$dir"
  taskset -c "$cpus" "${edge_bin:-$bin}" edge --join "$work/data" --data "$dir" \
    --listen "${EDGE_HOST:-127.0.0.1}:$port" --admin-listen "127.0.0.1:$(free_port)" --disk-gib "${EDGE_DISK_GIB:-0}" "$@" \
    >"$dir.log" 2>&1 &
  edge_pid=$!
  pids+=("$edge_pid")
  for _ in $(seq 1 300); do
    [ -f "$dir/edge.json" ] && break
    sleep 0.1
  done
  [ -f "$dir/edge.json" ] || { echo "the edge did not start:" >&2; tail -5 "$dir.log" >&2; exit 1; }
  read -r edge_admin edge_main < <(python3 -c \
    'import json,sys; j = json.load(open(sys.argv[1])); print(j["edge_admin"], j["edge"])' \
    "$dir/edge.json")
}

bench_prewarm() {
  python3 -c 'import json, sys; print(json.dumps({"file_ids": sys.argv[1:]}))' "${ids[@]}" \
    >"$work/prewarm.json"
  curl -sSf --cacert "$ca" -H "Authorization: Bearer $2" \
    --data-binary "@$work/prewarm.json" "$1/admin/v1/prewarm" >/dev/null
}

bench_wrk_ranges() {
  cat >"$1" <<EOF
local objects = {}
for line in io.lines("$work/tokens") do
  local id, token = line:match("(%S+) (%S+)")
  objects[#objects + 1] = { id = id, auth = "Bearer " .. token }
end
local size = $((OBJECT_MIB * 1048576))
math.randomseed(7)
-- PATTERN=sequential: as many players as connections, each reading a random object front to
-- back in ranges of the given size, then another; requests go to them in turn.
local sequential = "${PATTERN:-random}" == "sequential"
local players, turn = {}, 0
request = function()
  local o, a
  if sequential then
    turn = turn % ${CONNS:-64} + 1
    local p = players[turn]
    if p == nil or p.at >= size then
      p = { o = objects[math.random(#objects)], at = 0 }
      players[turn] = p
    end
    o, a = p.o, p.at
    p.at = p.at + $2
  else
    o = objects[math.random(#objects)]
    a = math.random(0, size - $2 - 1)
  end
  local last = math.min(a + $2, size) - 1
  return wrk.format("GET", "/a/" .. o.id, {
    ["Range"] = "bytes=" .. a .. "-" .. last,
    ["Authorization"] = o.auth,
  })
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %.3f %.3f\n", summary.requests, summary.bytes,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
EOF
}

bench_cpu() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}

bench_round() {
  local pid=$1 drive=$2 arg=$3 c0 c1 out
  "$drive" "$arg" 3 >/dev/null # warm-up: connections, handshakes, the client's caches
  c0=$(bench_cpu "$pid")
  out=$("$drive" "$arg" "$DURATION")
  c1=$(bench_cpu "$pid")
  read -r _ reqs body errors p50 p99 <<<"$out"
  echo "$reqs $body $errors $p50 $p99 $((c1 - c0))"
}

bench_rounds_report() {
  python3 - "$1" "$DURATION" "$(getconf CLK_TCK)" "$2" "$3" <<'PY'
import statistics, sys
dur, tck = float(sys.argv[2]), int(sys.argv[3])
(ka, sa, na), (kb, sb, nb) = (arg.split(":", 2) for arg in sys.argv[4:6])
runs = {}  # key → [(round, reqs, body, errors, p50, p99, cpu_s)]
for line in open(sys.argv[1]):
    r, key, reqs, body, errors, p50, p99, ticks = line.split()
    runs.setdefault(key, []).append(
        (int(r), int(reqs), int(body), int(errors), float(p50), float(p99), int(ticks) / tck))
def cpu_per_gb(rows):
    return sum(x[6] for x in rows) / (sum(x[2] for x in rows) / 1e9)
print(f"{'':16} {'req/s':>9} {'MiB/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU-s per GB':>14} {'errors':>7}")
for key, name in ((ka, na), (kb, nb)):
    rows = runs[key]
    n = len(rows) * dur
    print(f"{name:16} {sum(x[1] for x in rows)/n:9.0f} {sum(x[2] for x in rows)/n/1048576:9.1f} "
          f"{statistics.median(x[4] for x in rows):8.2f} {statistics.median(x[5] for x in rows):8.2f} "
          f"{cpu_per_gb(rows):14.3f} {sum(x[3] for x in rows):7}")
pairs = list(zip(runs[ka], runs[kb]))
tput = [b[2] / a[2] for a, b in pairs]
for (a, b), t in zip(pairs, tput):
    print(f"round {a[0]}: {sa} {a[2]/dur/1048576:.0f} MiB/s at {cpu_per_gb([a]):.3f} CPU-s per GB, "
          f"{sb} {b[2]/dur/1048576:.0f} at {cpu_per_gb([b]):.3f}: throughput {t:.2f}×")
total = sum(x[2] for x in runs[kb]) / sum(x[2] for x in runs[ka])
print(f"{sb} / {sa}: throughput {total:.2f}× (rounds' median {statistics.median(tput):.2f}×), "
      f"server CPU per GB {cpu_per_gb(runs[kb]) / cpu_per_gb(runs[ka]):.2f}×")
PY
}

bench_core_busy() {
  awk -v c="cpu${1:-}" '$1 == c {print $2 + $3 + $4 + $7 + $8}' /proc/stat
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_nginx() {
  local port=$1
  shift
  "$@" nginx -c "$work/nginx.conf" -p "$work" &
  nginx_master=$!
  pids+=("$nginx_master")
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.05
  done
  nginx_worker=$(pgrep -P "$nginx_master" | head -1)
}

bench_netns() {
  if [ "${NETNS:-auto}" = auto ]; then
    NETNS=off
    [ "$(id -u)" = 0 ] && command -v ip >/dev/null && NETNS=on
  fi
  client=()
  host=127.0.0.1
  if [ "$NETNS" != on ]; then
    echo "clients over loopback (NETNS=off): the servers' CPU includes some of the client's receive work"
    return
  fi
  bench_needs ip
  echo "clients in a network namespace behind a veth pair (NETNS=on)"
  bench_ns=cadenza-bench-$$
  host=10.213.0.1
  ip netns add "$bench_ns"
  ip link add "cb$$s" type veth peer name "cb$$c"
  ip link set "cb$$c" netns "$bench_ns"
  ip addr add "$host/24" dev "cb$$s"
  ip link set "cb$$s" up
  ip netns exec "$bench_ns" ip addr add 10.213.0.2/24 dev "cb$$c"
  ip netns exec "$bench_ns" ip link set "cb$$c" up
  ip netns exec "$bench_ns" ip link set lo up
  echo 1 >"/sys/class/net/cb$$s/queues/rx-0/rps_cpus"
  ip netns exec "$bench_ns" sh -c "echo 2 >/sys/class/net/cb$$c/queues/rx-0/rps_cpus"
  client=(ip netns exec "$bench_ns")
}

bench_nginx_ok() {
  local port=$1 tls_port=$2
  shift 2
  cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 15000; }
http {
  access_log off;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$port;
    location / { return 200 "ok"; }
  }
  server {
    listen 127.0.0.1:$tls_port ssl;
    ssl_certificate $work/data/tls/cert.pem;
    ssl_certificate_key $work/data/tls/key.pem;
    # As the edge speaks: nginx 1.22's default stops at TLS 1.2.
    ssl_protocols TLSv1.3;
    location / { return 200 "ok"; }
  }
}
NGINX
  # nginx's worker drops to an unprivileged user: let it read the certificate.
  chmod a+x "$work"
  bench_nginx "$port" "$@"
}
