#!/usr/bin/env bash
# CNI ADD/DEL latency: margay (embedded SQLite datastore, in-process IPAM, endpoint written)
# beside the reference ptp + host-local chain, alternating in one run with
# ../shared/tools/cni-bench. Then 100 pods added in parallel on one node, same comparison.
# Usage: scripts/bench-cni.sh [margay-binary]   (N=50 sequential rounds, P=100 parallel pods)
set -euo pipefail
bin=$(realpath "${1:-target/release/margay}")
n=${N:-50}
parallel=${P:-100}
rounds=${ROUNDS:-3}
bench=${CNI_BENCH:-$(dirname "$0")/../../shared/tools/cni-bench}
ref=${REFERENCE_PLUGINS:-/usr/lib/cni}
[ -x "$ref/ptp" ] || { echo "bench-cni: $ref/ptp missing (run scripts/setup.sh)" >&2; exit 1; }
[ -e "$bench" ] || { echo "bench-cni: $bench missing" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

mkdir "$dir/bin"
ln -s "$bin" "$dir/bin/margay"
ln -s "$ref/ptp" "$dir/bin/ptp"
ln -s "$ref/host-local" "$dir/bin/host-local"

db="sqlite://$dir/margay.db"
cat > "$dir/pool.yaml" <<YAML
apiVersion: margay.dev/v1
kind: IPPool
metadata: {name: bench}
spec: {cidr: 10.200.0.0/16, blockSize: 26}
---
apiVersion: margay.dev/v1
kind: Node
metadata: {name: bench-node}
YAML
env -u CNI_COMMAND "$bin" --datastore "$db" apply -f "$dir/pool.yaml" >/dev/null

cat > "$dir/margay.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
  {"type": "margay", "datastore": "$db", "nodename": "bench-node", "state_dir": "$dir/state",
   "ipam": {"type": "margay-ipam"}}]}
JSON
cat > "$dir/ptp-host-local.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "bench-ref", "plugins": [
  {"type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.201.0.0/16"}]],
   "dataDir": "$dir/host-local"}}]}
JSON

echo "== sequential: $n pods each, alternating (median of ADD and DEL per pod)"
python3 "$bench" "$dir/margay.conflist" "$dir/ptp-host-local.conflist" --n "$n" --path "$dir/bin"
echo "== parallel: $parallel pods at once (ADD+DEL wall time per batch), $rounds batches each"
python3 "$bench" "$dir/margay.conflist" "$dir/ptp-host-local.conflist" --n "$rounds" \
  --parallel "$parallel" --path "$dir/bin"
