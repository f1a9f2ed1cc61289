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

# run NAME CMD... : records wall and user+sys seconds of CMD into $work/NAME.time
run() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$work/$name.time" "$@" >/dev/null 2>"$work/$name.err" \
    || { cat "$work/$name.err" >&2; exit 1; }
}
wall() { awk '{print $1}' "$work/$1.time"; }
cpu() { awk '{print $2 + $3}' "$work/$1.time"; }

mkdir -p "$work/cadenza" "$work/cadenza-abr" "$work/oggenc" "$work/ffmpeg"
run cadenza "$bin" transcode "$master" --out "$work/cadenza" --plain
run cadenza-abr "$bin" transcode "$master" --out "$work/cadenza-abr" --plain --mode abr
run oggenc bash -c "for b in 96 160 320; do oggenc -Q -b \$b -o '$work/oggenc/'\$b.ogg '$master'; done"
run ffmpeg bash -c "for b in 96 160 320; do ffmpeg -v error -y -i '$master' -c:a libvorbis -b:a \${b}k '$work/ffmpeg/'\$b.ogg; done"

kbps() { echo "scale=1; $(stat -c %s "$1") * 8 / $secs / 1000" | bc; }
echo "master: ${secs} s, 44.1 kHz, 24-bit stereo ($(nproc) cores)"
printf '%-28s %8s %8s   %s\n' "three tiers by" "wall s" "cpu s" "mean kbps (96 / 160 / 320)"
printf '%-28s %8s %8s   %s / %s / %s\n' "cadenza transcode (vbr)" "$(wall cadenza)" "$(cpu cadenza)" \
  "$(kbps "$work/cadenza/low.ogg")" "$(kbps "$work/cadenza/normal.ogg")" "$(kbps "$work/cadenza/high.ogg")"
printf '%-28s %8s %8s   %s / %s / %s\n' "cadenza transcode --mode abr" "$(wall cadenza-abr)" "$(cpu cadenza-abr)" \
  "$(kbps "$work/cadenza-abr/low.ogg")" "$(kbps "$work/cadenza-abr/normal.ogg")" "$(kbps "$work/cadenza-abr/high.ogg")"
for peer in oggenc ffmpeg; do
  printf '%-28s %8s %8s   %s / %s / %s\n' "$peer, once per tier" "$(wall $peer)" "$(cpu $peer)" \
    "$(kbps "$work/$peer/96.ogg")" "$(kbps "$work/$peer/160.ogg")" "$(kbps "$work/$peer/320.ogg")"
done
for peer in oggenc ffmpeg; do
  echo "cadenza vs $peer: $(echo "scale=2; $(wall $peer) / $(wall cadenza)" | bc)x faster in wall time," \
       "$(echo "scale=2; $(cpu $peer) / $(cpu cadenza)" | bc)x less CPU"
done
