#!/usr/bin/env bash
# Cold misses at the edge: origin bytes per client byte, and origin requests under a crowd.
#
# Starts `cadenza up --edge-cleartext` (release build) and stores OBJECTS random renditions of
# OBJECT_MIB MiB. Then, read from the edge's own Prometheus counters:
#  1. one random 128 KiB range from each object, all cold, 8 at a time:
#     origin body bytes per client body byte;
#  2. CROWD concurrent identical requests for a range of one more cold object:
#     how many origin requests they caused (collapsing should make it one per slice).
# Run with READ_AHEAD=0 too: `up` reads two slices ahead by default, which sequential
# players want and random readers pay for. SLICE_KIB sets the slice size (a random 128 KiB
# range spans 1.5 slices of 256 KiB on average, 2 of 128 KiB).
#
# Needs: curl ≥ 7.66 (--parallel), python3. Knobs: OBJECTS (100), OBJECT_MIB (5),
# CROWD (100), READ_AHEAD (2), SLICE_KIB (256).
set -euo pipefail
cd "$(dirname "$0")/.."

OBJECTS=${OBJECTS:-100}
OBJECT_MIB=${OBJECT_MIB:-5}
CROWD=${CROWD:-100}
RANGE=131072

source benches/lib.sh
bench_needs curl python3
bench_init
READ_AHEAD=${READ_AHEAD:-2}
SLICE_KIB=${SLICE_KIB:-256}
bench_up --edge-cleartext --edge-read-ahead "$READ_AHEAD" --edge-slice-kib "$SLICE_KIB"
echo "storing $((OBJECTS + 1)) × $OBJECT_MIB MiB renditions…"
bench_store $((OBJECTS + 1)) "$OBJECT_MIB"
bench_tokens "$work/tokens"

metric() { # name → value of cadenza_edge_<name>
  curl -s --cacert "$ca" "$admin/metrics" | awk -v m="cadenza_edge_$1" '$1 == m {print $2}'
}

# 1. One cold random range per object (the last object is kept for the crowd).
python3 - "$work/tokens" "$edge" "$RANGE" $((OBJECT_MIB * 1048576)) "$OBJECTS" >"$work/cold.cfg" <<'EOF'
import random, sys
tokens, edge, r, size, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(11)
lines = [l.split() for l in open(tokens)][:n]
for i, (fid, tok) in enumerate(lines):
    a = rng.randrange(0, size - r)
    if i:
        print("next")
    print(f'url = "{edge}/a/{fid}"\nheader = "Authorization: Bearer {tok}"\nrange = "{a}-{a + r - 1}"\noutput = "/dev/null"\nsilent\nfail')
EOF
up0=$(metric upstream_bytes_total)
sent0=$(metric bytes_served_total)
curl --parallel --parallel-max 8 -K "$work/cold.cfg"
sleep 1 # read-ahead fetches started by those requests finish
up1=$(metric upstream_bytes_total)
sent1=$(metric bytes_served_total)

# 2. A crowd asking for the same cold range at once.
read -r crowd_id crowd_tok < <(tail -1 "$work/tokens")
python3 - "$edge" "$crowd_id" "$crowd_tok" "$CROWD" "$RANGE" >"$work/crowd.cfg" <<'EOF'
import sys
edge, fid, tok, n, r = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
for i in range(n):
    if i:
        print("next")
    print(f'url = "{edge}/a/{fid}"\nheader = "Authorization: Bearer {tok}"\nrange = "1000000-{1000000 + r - 1}"\noutput = "/dev/null"\nsilent\nfail')
EOF
fetches0=$(metric cache_misses_total)
collapsed0=$(metric collapsed_waiters_total)
curl --parallel --parallel-max "$CROWD" --parallel-immediate -K "$work/crowd.cfg"
sleep 1
fetches1=$(metric cache_misses_total)
collapsed1=$(metric collapsed_waiters_total)

python3 - "$up0" "$up1" "$sent0" "$sent1" "$fetches0" "$fetches1" "$collapsed0" "$collapsed1" "$OBJECTS" "$CROWD" <<'EOF'
import sys
up0, up1, s0, s1, f0, f1, c0, c1 = map(float, sys.argv[1:9])
n, crowd = int(sys.argv[9]), int(sys.argv[10])
print()
print(f"{n} cold random 128 KiB ranges: {(s1 - s0) / 1048576:.1f} MiB to clients, "
      f"{(up1 - up0) / 1048576:.1f} MiB from the origin: "
      f"{(up1 - up0) / (s1 - s0):.2f} origin bytes per client byte")
print(f"{crowd} identical concurrent cold requests: {int(f1 - f0)} origin slice fetches, "
      f"{int(c1 - c0)} requests joined another's fetch")
EOF
