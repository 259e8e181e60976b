#!/usr/bin/env bash
# `lab up` / `lab probe` / `lab down` wall-clock times: 3 nodes x 10 pods (the issue's figure)
# on each datastore, RUNS times each, medians printed. Needs root and a release build.
#   scripts/bench-lab.sh [target/release/margay] [RUNS]
set -euo pipefail
bin=$(realpath "${1:-target/release/margay}")
runs=${2:-5}
root=$(mktemp -d)
name=mgybench$$
export MARGAY_LAB_ROOT=$root
trap '"$bin" lab down --name "$name" >/dev/null 2>&1 || true; rm -rf "$root"' EXIT

now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN {print a - b}'; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }

printf '%-8s %-6s %10s %12s %12s %10s\n' datastore pods "up (s)" "probe 4x (s)" "probe 1x (s)" "down (s)"
for ds in sqlite etcd; do
  ups=() probes=() ones=() downs=()
  for _ in $(seq "$runs"); do
    t0=$(now); "$bin" lab up --name "$name" --nodes 3 --pods-per-node 10 --datastore "$ds" >/dev/null 2>&1
    t1=$(now); out=$("$bin" lab probe --name "$name" -o json)
    t2=$(now); "$bin" lab probe --name "$name" --port 80 --protocol tcp -o json >/dev/null
    t3=$(now); "$bin" lab down --name "$name" >/dev/null
    t4=$(now)
    denied=$(jq '[.probes[].denied | length] | add' <<<"$out")
    [ "$denied" = 0 ] || { echo "probe found $denied denied pairs: the lab is not fully connected" >&2; exit 1; }
    ups+=("$(sub $t1 $t0)") probes+=("$(sub $t2 $t1)")
    ones+=("$(sub $t3 $t2)") downs+=("$(sub $t4 $t3)")
  done
  printf '%-8s %-6s %10s %12s %12s %10s\n' "$ds" 30 \
    "$(printf '%s\n' "${ups[@]}" | median)" "$(printf '%s\n' "${probes[@]}" | median)" \
    "$(printf '%s\n' "${ones[@]}" | median)" "$(printf '%s\n' "${downs[@]}" | median)"
done
echo "(medians of $runs runs; probe 4x = 80/81 over TCP/UDP, 900 pairs each; all allowed)"
