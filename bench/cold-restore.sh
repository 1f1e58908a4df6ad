#!/usr/bin/env bash
# bench/cold-restore.sh [ROUNDS]: the 3 a.m. restore, diskvault against restic. Each round restores night3
# with both tools in turns (which goes first alternates), each into memory the kernel has just freed: the
# page cache is dropped, then the repositories (and restic's cache) are read back in, untimed, so only the
# restored image lands in fresh memory. `npm run bench` counts the better of two restores instead, whose
# second writes into memory the first one's deleted output gave back.
#
# Needs root (it writes /proc/sys/vm/drop_caches), a built checkout, and the repositories a full
# `npm run bench` leaves under DV_BENCH_WORK (diskvault's default section and restic's).
# Prints one line per restore: wall, user and system seconds of the command, and diskvault's server CPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${DV_BENCH_WORK:-$root/bench/.work}
rounds=${1:-3}
data=$work/diskvault/data
restic_repo=$work/restic/restic-repo
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/restic/restic-cache
for need in "$data/admin.token" "$restic_repo/config"; do
  [ -e "$need" ] || { echo "cold-restore: $need is missing: run npm run bench first" >&2; exit 1; }
done
[ -w /proc/sys/vm/drop_caches ] || { echo "cold-restore: needs root to drop the page cache" >&2; exit 1; }

out=$(mktemp -d "$work/cold-restore.XXXX")
log=$out/server.log
"$root/agent/diskvault" server --data "$data" --listen 127.0.0.1:0 >"$log" 2>&1 &
server=$!
cleanup() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT
url=
for _ in $(seq 1 400); do
  url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$log" | head -1 || true)
  [ -n "$url" ] && break
  sleep 0.05
done
[ -n "$url" ] || { echo "cold-restore: the server did not start: $(tail -3 "$log")" >&2; exit 1; }
token=$(cat "$data/admin.token")

server_cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$server/stat"; }
fresh_memory() {
  rm -rf "$out/dv.img" "$out/restic"
  sync
  echo 3 >/proc/sys/vm/drop_caches
  find "$data" "$restic_repo" "$RESTIC_CACHE_DIR" -type f -exec cat {} + >/dev/null
}
diskvault_restore() {
  fresh_memory
  local before
  before=$(server_cpu)
  /usr/bin/time -f "diskvault %e s wall, %U s user, %S s system" -o "$out/time" "$root/agent/diskvault" restore latest \
    "$out/dv.img" --host bench --disk sda --server "$url" --token "$token" >/dev/null
  echo "$(cat "$out/time"), server $(echo "$(server_cpu) - $before" | bc) s CPU"
}
restic_restore() {
  fresh_memory
  /usr/bin/time -f "restic    %e s wall, %U s user, %S s system" -o "$out/time" restic -r "$restic_repo" restore latest \
    --target "$out/restic" >/dev/null
  cat "$out/time"
}
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then diskvault_restore; restic_restore; else restic_restore; diskvault_restore; fi
done
