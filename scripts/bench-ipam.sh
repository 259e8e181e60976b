#!/usr/bin/env bash
# One allocation per process, as a CNI runtime drives IPAM: `margay ipam assign` (SQLite)
# beside the reference `host-local` IPAM plugin (containernetworking-plugins), alternating,
# in one run. Prints each tool's allocations per second and the ratio.
set -euo pipefail
bin=${1:-target/release/margay}
n=${N:-200}
hostlocal=${HOST_LOCAL:-/usr/lib/cni/host-local}
[ -x "$hostlocal" ] || { echo "bench-ipam: $hostlocal missing (run scripts/setup.sh)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

export MARGAY_DATASTORE="sqlite://$dir/margay.db"
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
"$bin" apply -f "$dir/pool.yaml" >/dev/null
conf='{"cniVersion":"1.0.0","name":"bench","type":"host-local","ipam":{"type":"host-local","ranges":[[{"subnet":"10.201.0.0/16"}]],"dataDir":"'"$dir"'/host-local"}}'

margay_ns=0 ref_ns=0
for i in $(seq 1 "$n"); do
  t0=$(date +%s%N)
  "$bin" ipam assign --node bench-node --handle "bench-$i" >/dev/null
  t1=$(date +%s%N)
  CNI_COMMAND=ADD CNI_CONTAINERID="bench-$i" CNI_NETNS=/dev/null CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
    "$hostlocal" <<<"$conf" >/dev/null
  t2=$(date +%s%N)
  margay_ns=$((margay_ns + t1 - t0)) ref_ns=$((ref_ns + t2 - t1))
done
awk -v n="$n" -v m="$margay_ns" -v r="$ref_ns" 'BEGIN {
  mr = n / (m / 1e9); rr = n / (r / 1e9)
  printf "allocations: %d each, alternating\n", n
  printf "margay ipam assign (sqlite)  %8.1f /s  %6.2f ms each\n", mr, m / n / 1e6
  printf "host-local (reference)       %8.1f /s  %6.2f ms each\n", rr, r / n / 1e6
  printf "ratio margay/host-local      %8.2f\n", mr / rr
}'
