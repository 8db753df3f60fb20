#!/usr/bin/env bash
# Re-creates the app's example speech clips (espeak-ng, 16 kHz mono 16-bit wav).
# Prosody (rate -s, pitch -p, amplitude -a, voice variant) hints at each emotion.
set -euo pipefail
cd "$(dirname "$0")"
ffmpeg=$(python3 -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())")
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
gen() {  # name voice "espeak args" "text"
  espeak-ng -v "$2" $3 -w "$tmp/$1.wav" "$4"
  "$ffmpeg" -v error -y -i "$tmp/$1.wav" -ac 1 -ar 16000 -c:a pcm_s16le -fflags +bitexact -map_metadata -1 "$1.wav"
}
gen neutral   en-us     "-s 150 -p 45 -a 100" "The weather report says it will be cloudy tomorrow, with a light wind from the west."
gen happy     en-us+f3  "-s 175 -p 75 -a 140" "Oh wonderful, we won the prize! I can hardly believe how lucky we are today!"
gen sad       en-us+m3  "-s 140 -p 25 -a 70"  "I waited all evening, but nobody came. It feels so empty now."
gen angry     en-us+m7  "-s 185 -p 40 -a 190" "Stop it right now! I told you three times already, and you never listen!"
gen surprised en-us+f2  "-s 160 -p 85 -a 150" "Wait, what? You mean the whole thing was a surprise party, for me?"
