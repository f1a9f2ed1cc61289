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
#   bench_cpu PID                   the process's user + system time, clock ticks
#   bench_core_busy [CPU]           that core's busy time (user, nice, system, irq, softirq;
#                                   not idle, iowait or steal), clock ticks; without CPU,
#                                   every core's
#   free_port                       a free TCP port on 127.0.0.1

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
    --listen "${EDGE_HOST:-127.0.0.1}:$port" --admin-listen "127.0.0.1:$(free_port)" --disk-gib 0 "$@" \
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

bench_cpu() {
  awk '{print $14 + $15}' "/proc/$1/stat"
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
