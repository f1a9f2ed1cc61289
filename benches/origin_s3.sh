#!/usr/bin/env bash
# Origin ranged reads against the same ranges read straight from the S3 server, in one run.
#
# Starts SeaweedFS (`weed mini`) and `cadenza up` on it (release build), stores N random
# renditions through the origin, then fetches R random 128 KiB ranges twice with curl —
# through the origin's edge-facing object API (HTTPS, edge key) and straight from S3 (HTTP,
# SigV4) — first one at a time on one connection (time to first byte), then 16 at a time
# (throughput). Prints both and the ratios.
#
# Needs: curl ≥ 7.75 (--aws-sigv4), python3, SeaweedFS (CADENZA_WEED or `weed` on PATH).
# Knobs: OBJECTS (20), OBJECT_MIB (5), REQUESTS (400).
set -euo pipefail
cd "$(dirname "$0")/.."

WEED=${CADENZA_WEED:-weed}
OBJECTS=${OBJECTS:-20}
OBJECT_MIB=${OBJECT_MIB:-5}
REQUESTS=${REQUESTS:-400}
RANGE=131072
BASE=18500
S3="http://127.0.0.1:$((BASE + 7))"
ACCESS=bench-key
SECRET=bench-secret

source benches/lib.sh
bench_needs curl python3
bench_init

mkdir -p "$work/weed"
cat > "$work/ids.json" <<EOF
{"identities":[{"name":"bench","credentials":[{"accessKey":"$ACCESS","secretKey":"$SECRET"}],"actions":["Admin","Read","Write","List"]}]}
EOF
ports=()
names=(master.port master.port.grpc volume.port volume.port.grpc filer.port filer.port.grpc
  s3.port s3.port.grpc admin.port admin.port.grpc webdav.port debug.port metricsPort
  s3.port.iceberg s3.port.lance)
for i in "${!names[@]}"; do ports+=("-${names[$i]}=$((BASE + i + 1))"); done
"$WEED" mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false \
  -s3.config="$work/ids.json" "${ports[@]}" >"$work/weed.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  curl -s -o /dev/null "$S3/" && break
  sleep 0.1
done

export CADENZA_S3_ACCESS_KEY=$ACCESS CADENZA_S3_SECRET_KEY=$SECRET
bench_up --s3-endpoint "$S3" --s3-bucket bench
edge_key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["edge_key"])' \
  "$work/data/secrets.json")
echo "storing $OBJECTS × $OBJECT_MIB MiB renditions through the origin…"
bench_store "$OBJECTS" "$OBJECT_MIB"

# The same random ranges for both targets.
python3 - "$REQUESTS" "$RANGE" $((OBJECT_MIB * 1048576)) "${ids[@]}" >"$work/ranges" <<'EOF'
import random, sys
n, r, size, ids = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
rng = random.Random(7)
for _ in range(n):
    a = rng.randrange(0, size - r)
    print(rng.choice(ids), a, a + r - 1)
EOF

config() { # target → a curl config with one transfer per range
  local first=1
  while read -r id a b; do
    [ $first = 1 ] || printf 'next\n'
    first=0
    if [ "$1" = origin ]; then
      printf 'url = "%s/v1/objects/%s"\nheader = "Authorization: Bearer %s"\ncacert = "%s"\n' \
        "$origin" "$id" "$edge_key" "$ca"
    else
      printf 'url = "%s/bench/renditions/%s"\naws-sigv4 = "aws:amz:us-east-1:s3"\nuser = "%s:%s"\n' \
        "$S3" "$id" "$ACCESS" "$SECRET"
    fi
    printf 'range = "%s-%s"\noutput = "/dev/null"\nsilent\nfail\n' "$a" "$b"
    printf 'write-out = "%%{http_code} %%{time_pretransfer} %%{time_starttransfer} %%{size_download}\\n"\n'
  done <"$work/ranges"
}
config origin >"$work/origin.cfg"
config s3 >"$work/s3.cfg"

run() { # target mode → "ttfb_p50 ttfb_p99 MiB/s"
  local extra=()
  [ "$2" = parallel ] && extra=(--parallel --parallel-max 16)
  local t0 t1
  t0=$(date +%s.%N)
  curl -s --no-progress-meter "${extra[@]}" -K "$work/$1.cfg" >"$work/$1.$2.out"
  t1=$(date +%s.%N)
  python3 - "$work/$1.$2.out" "$t0" "$t1" "$RANGE" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
bad = [r for r in rows if r[0] != "206" or int(r[3]) != int(sys.argv[4])]
if bad:
    sys.exit(f"{len(bad)} bad answers, e.g. {bad[0]}")
ttfb = sorted(float(r[2]) - float(r[1]) for r in rows)
wall = float(sys.argv[3]) - float(sys.argv[2])
mib = sum(int(r[3]) for r in rows) / 1048576
print(f"{ttfb[len(ttfb)//2]*1000:.2f} {ttfb[int(len(ttfb)*0.99)]*1000:.2f} {mib/wall:.1f}")
EOF
}

# Warm both paths once (connections, page cache), then measure.
run origin serial >/dev/null
run s3 serial >/dev/null
read -r o50 o99 _ < <(run origin serial)
read -r s50 s99 _ < <(run s3 serial)
read -r _ _ otp < <(run origin parallel)
read -r _ _ stp < <(run s3 parallel)

echo
echo "$REQUESTS random 128 KiB ranges over $OBJECTS × $OBJECT_MIB MiB objects"
printf '%-34s %12s %12s %14s\n' "" "TTFB p50 ms" "TTFB p99 ms" "MiB/s (16 par)"
printf '%-34s %12s %12s %14s\n' "origin (HTTPS, edge key) → S3" "$o50" "$o99" "$otp"
printf '%-34s %12s %12s %14s\n' "SeaweedFS S3 directly (HTTP)" "$s50" "$s99" "$stp"
python3 - "$o50" "$s50" "$otp" "$stp" <<'EOF'
import sys
o50, s50, otp, stp = map(float, sys.argv[1:])
print(f"origin/S3: TTFB p50 {o50/s50:.2f}×, throughput {otp/stp:.2f}×")
EOF
