#!/usr/bin/env bash
# Transcoding throughput: one 4-minute 44.1 kHz 24-bit stereo master into the 96/160/320 kbps
# tiers, by `cadenza transcode` (decode once, three encoders in parallel) against the peers
# run once per tier, as an operator would without Cadenza: `oggenc -b N` (libvorbis, VBR at a
# target bitrate, as Cadenza uses it) and `ffmpeg -c:a libvorbis -b:a Nk`. Same master, same
# run. Prints wall and CPU seconds, the ratios, and each output's mean bitrate.
#
# Needs: sox, oggenc (vorbis-tools), ffmpeg, GNU time, bc (`apt-get install sox vorbis-tools ffmpeg time bc`).
# Usage: benches/transcode.sh [SECONDS]   (default 240)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-240}
for tool in sox oggenc ffmpeg /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done
cargo build --release -q -p cadenza
bin=target/release/cadenza
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A music-like master: pink noise under a slow tremolo (dense, varying spectrum) mixed with
# plucked tones, 24-bit.
sox -n -r 44100 -b 24 -c 2 "$work/noise.wav" synth "$secs" pinknoise vol 0.2 tremolo 3 60
sox -n -r 44100 -b 24 -c 2 "$work/tones.wav" synth "$secs" pluck 110 pluck 164.8 tremolo 2 40
sox -m "$work/noise.wav" "$work/tones.wav" "$work/master.wav" gain -n -3
master="$work/master.wav"

# run NAME CMD... : records wall and user+sys seconds of CMD into $work/NAME.time, its
# output into $work/NAME.out
run() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$work/$name.time" "$@" >"$work/$name.out" 2>"$work/$name.err" \
    || { cat "$work/$name.err" >&2; exit 1; }
}
wall() { awk '{print $1}' "$work/$1.time"; }
cpu() { awk '{print $2 + $3}' "$work/$1.time"; }

mkdir -p "$work"/{cadenza,cadenza-vbr,cadenza-abr,oggenc-q,ffmpeg-q,oggenc-b,ffmpeg-b}
run cadenza "$bin" transcode "$master" --out "$work/cadenza" --plain
run cadenza-vbr "$bin" transcode "$master" --out "$work/cadenza-vbr" --plain --mode vbr
run cadenza-abr "$bin" transcode "$master" --out "$work/cadenza-abr" --plain --mode abr
# The qualities the fitted mode chose (oggenc's scale), so the peers encode at matched quality.
read -r q96 q160 q320 < <(awk '$1 ~ /^(low|normal|high)$/ { gsub(/\*/, "", $4); printf "%s ", $4 } END { print "" }' \
  "$work/cadenza.out")
run oggenc-q bash -c "oggenc -Q -q $q96 -o '$work/oggenc-q/96.ogg' '$master' &&
  oggenc -Q -q $q160 -o '$work/oggenc-q/160.ogg' '$master' &&
  oggenc -Q -q $q320 -o '$work/oggenc-q/320.ogg' '$master'"
run ffmpeg-q bash -c "ffmpeg -v error -y -i '$master' -c:a libvorbis -q:a $q96 '$work/ffmpeg-q/96.ogg' &&
  ffmpeg -v error -y -i '$master' -c:a libvorbis -q:a $q160 '$work/ffmpeg-q/160.ogg' &&
  ffmpeg -v error -y -i '$master' -c:a libvorbis -q:a $q320 '$work/ffmpeg-q/320.ogg'"
# What an operator types without Cadenza: a target bitrate, one run per tier.
run oggenc-b bash -c "for b in 96 160 320; do oggenc -Q -b \$b -o '$work/oggenc-b/'\$b.ogg '$master'; done"
run ffmpeg-b bash -c "for b in 96 160 320; do ffmpeg -v error -y -i '$master' -c:a libvorbis -b:a \${b}k '$work/ffmpeg-b/'\$b.ogg; done"

kbps() { echo "scale=1; $(stat -c %s "$1") * 8 / $secs / 1000" | bc; }
row() { # LABEL NAME FILE96 FILE160 FILE320
  printf '%-34s %8s %8s   %s / %s / %s\n' "$1" "$(wall "$2")" "$(cpu "$2")" \
    "$(kbps "$work/$2/$3")" "$(kbps "$work/$2/$4")" "$(kbps "$work/$2/$5")"
}
ratio() { # NAME PEER
  echo "$1 vs $2: $(echo "scale=2; $(wall "$2") / $(wall "$1")" | bc)x faster in wall time," \
       "$(echo "scale=2; $(cpu "$2") / $(cpu "$1")" | bc)x less CPU"
}
echo "master: ${secs} s, 44.1 kHz, 24-bit stereo ($(nproc) cores); fitted qualities $q96 / $q160 / $q320"
printf '%-34s %8s %8s   %s\n' "three tiers by" "wall s" "cpu s" "mean kbps (96 / 160 / 320)"
row "cadenza transcode (fitted)" cadenza low.ogg normal.ogg high.ogg
row "oggenc -q, matched quality" oggenc-q 96.ogg 160.ogg 320.ogg
row "ffmpeg -q:a, matched quality" ffmpeg-q 96.ogg 160.ogg 320.ogg
row "cadenza transcode --mode vbr" cadenza-vbr low.ogg normal.ogg high.ogg
row "oggenc -b N" oggenc-b 96.ogg 160.ogg 320.ogg
row "ffmpeg -b:a Nk" ffmpeg-b 96.ogg 160.ogg 320.ogg
row "cadenza transcode --mode abr" cadenza-abr low.ogg normal.ogg high.ogg
ratio cadenza oggenc-q
ratio cadenza ffmpeg-q
ratio cadenza-vbr oggenc-b
ratio cadenza-vbr ffmpeg-b
