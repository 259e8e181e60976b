#!/usr/bin/env bash
# BGP convergence in `margay lab --mode bgp`: the time from a new block being claimed on one
# node (`margay ipam assign --num 64` from a pool of its own, which fills exactly one new /26
# block, written by IPAM like a pod's first address would be) until the block's route is in
# the kernel of every other node (timestamps from `ip -ts monitor route`, started in every
# node before the claim). RUNS claims, each on the next node; median and slowest printed.
# Needs root, jq and a release build.
#   scripts/bench-bgp-lab.sh [target/release/margay] [RUNS] [NODES] [ROUTE_REFLECTORS]
set -euo pipefail
bin=$(realpath "${1:-target/release/margay}")
runs=${2:-9}
nodes=${3:-10}
reflectors=${4:-0}
root=$(mktemp -d)
name=mgybgp$$
export MARGAY_LAB_ROOT=$root
monitors=()
cleanup() {
  for p in "${monitors[@]}"; do kill "$p" 2>/dev/null || true; done
  "$bin" lab down --name "$name" >/dev/null 2>&1 || true
  rm -rf "$root"
}
trap cleanup EXIT

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.0f", m}'; }
maxof() { sort -n | tail -1 | awk '{printf "%.0f", $1}'; }

t=$(now)
"$bin" lab up --name "$name" --mode bgp --nodes "$nodes" --pods-per-node 1 \
  --route-reflectors "$reflectors" >/dev/null 2>&1
echo "lab up: $nodes nodes, bgp, $reflectors route reflectors: $(awk -v a="$(now)" -v b="$t" 'BEGIN {printf "%.1f", a - b}') s"
state=$root/$name/state.json
ds=$(jq -r .datastoreUrl "$state")
mapfile -t netns < <(jq -r '.topology.nodes[].netns' "$state")
mapfile -t names < <(jq -r '.topology.nodes[].name' "$state")

cat >"$root/pool.yaml" <<'EOF'
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: bench}
spec: {cidr: 10.200.0.0/16, blockSize: 26, vxlanMode: Never, ipipMode: Never, natOutgoing: false, nodeSelector: "all()"}
EOF
# Only `ipam assign --pool` takes from it (the lab wires no pod after `up`).
"$bin" lab apply --name "$name" -f "$root/pool.yaml" >/dev/null
sleep 1

results=()
for i in $(seq 0 $((runs - 1))); do
  src=$((i % nodes))
  monitors=()
  for j in "${!netns[@]}"; do
    [ "$j" = "$src" ] && continue
    ip -n "${netns[$j]}" -ts monitor route >"$root/mon.$j" 2>/dev/null &
    monitors+=("$!")
  done
  sleep 0.3
  t0=$(now)
  ip=$("$bin" --datastore "$ds" ipam assign --node "${names[$src]}" --handle "bench-$i" \
    --pool 10.200.0.0/16 --num 64 | head -1)
  t1=$(now)
  block=$(awk -F. -v ip="$ip" 'BEGIN {split(ip, o, "."); printf "%d.%d.%d.%d/26", o[1], o[2], o[3], int(o[4] / 64) * 64}')
  deadline=$(( $(date +%s) + 20 ))
  worst=0
  for j in "${!netns[@]}"; do
    [ "$j" = "$src" ] && continue
    until grep -q "^\[.*\] $block via .* proto 78" "$root/mon.$j"; do
      [ "$(date +%s)" -lt "$deadline" ] || { echo "node ${names[$j]} never got $block" >&2; exit 1; }
      sleep 0.02
    done
    ts=$(grep -m1 "^\[.*\] $block via" "$root/mon.$j" | sed 's/^\[\([^]]*\)\].*/\1/')
    at=$(date -d "$ts" +%s.%N)
    worst=$(awk -v a="$at" -v b="$t0" -v w="$worst" 'BEGIN {d = (a - b) * 1000; print (d > w) ? d : w}')
  done
  for p in "${monitors[@]}"; do kill "$p" 2>/dev/null || true; done
  monitors=()
  assign_ms=$(awk -v a="$t1" -v b="$t0" 'BEGIN {printf "%.0f", (a - b) * 1000}')
  printf 'run %d: block %s on %s: on all %d other nodes after %.0f ms (ipam assign itself: %s ms)\n' \
    "$((i + 1))" "$block" "${names[$src]}" "$((nodes - 1))" "$worst" "$assign_ms"
  results+=("$worst")
done
echo "median $(printf '%s\n' "${results[@]}" | median) ms, slowest $(printf '%s\n' "${results[@]}" | maxof) ms over $runs claims ($nodes nodes, $reflectors route reflectors)"
