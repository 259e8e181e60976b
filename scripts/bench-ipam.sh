#!/usr/bin/env bash
# IPAM one operation per process, as a CNI runtime drives it, beside the reference
# `host-local` IPAM plugin (containernetworking-plugins), alternating in one run:
#   - `margay version` (process start-up alone),
#   - `margay ipam assign` beside host-local ADD, N times, one process each,
#   - `margay ipam release --handle` beside host-local DEL, N times,
#   - PAR assignments started at once (one node), then PAR releases, beside host-local,
#     ROUNDS times.
# Usage: scripts/bench-ipam.sh [MARGAY_BINARY...]  (default target/release/margay). Several
# binaries (say, before and after a change) take turns in the same loop, each with its own
# SQLite database. Prints the median and mean milliseconds per operation (for the parallel
# rows: per round, the wall time of the whole batch).
set -euo pipefail
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/margay)
n=${N:-200}
par=${PAR:-100}
rounds=${ROUNDS:-5}
hostlocal=${HOST_LOCAL:-/usr/lib/cni/host-local}
[ -x "$hostlocal" ] || { echo "bench-ipam: $hostlocal missing (run scripts/setup.sh)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
samples=$dir/samples

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
for b in "${!bins[@]}"; do
  MARGAY_DATASTORE="sqlite://$dir/db$b/margay.db" "${bins[$b]}" apply -f "$dir/pool.yaml" >/dev/null
done
conf='{"cniVersion":"1.0.0","name":"bench","type":"host-local","ipam":{"type":"host-local","ranges":[[{"subnet":"10.201.0.0/16"}]],"dataDir":"'"$dir"'/host-local"}}'

# `timed LABEL OP COMMAND…`: runs the command once and records its wall time. $EPOCHREALTIME
# (bash 5) reads the clock without forking, so nothing else falls inside the window.
timed() {
  local label=$1 op=$2 t0 t1
  shift 2
  t0=$EPOCHREALTIME
  "$@" >/dev/null
  t1=$EPOCHREALTIME
  echo "$label $op $t0 $t1" >>"$samples"
}
margay() { # BIN_INDEX ARGS…
  local b=$1
  shift
  MARGAY_DATASTORE="sqlite://$dir/db$b/margay.db" "${bins[$b]}" "$@"
}
cni() { # COMMAND CONTAINER_ID
  CNI_COMMAND=$1 CNI_CONTAINERID=$2 CNI_NETNS=/dev/null CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
    "$hostlocal" <<<"$conf"
}
parallel() { # LABEL OP COMMAND… (the last argument gets a job name appended)
  local label=$1 op=$2 t0 t1 j
  shift 2
  t0=$EPOCHREALTIME
  for j in $(seq 1 "$par"); do "$@" "par-$r-$j" >/dev/null & done
  wait
  t1=$EPOCHREALTIME
  echo "$label $op $t0 $t1" >>"$samples"
}

for i in $(seq 1 "$n"); do
  for b in "${!bins[@]}"; do
    timed "${bins[$b]}" version margay "$b" version
    timed "${bins[$b]}" assign margay "$b" ipam assign --node bench-node --handle "bench-$i"
  done
  timed host-local ADD cni ADD "bench-$i"
done
for i in $(seq 1 "$n"); do
  for b in "${!bins[@]}"; do
    timed "${bins[$b]}" release margay "$b" ipam release --handle "bench-$i"
  done
  timed host-local DEL cni DEL "bench-$i"
done
for r in $(seq 1 $((par > 0 ? rounds : 0))); do
  for b in "${!bins[@]}"; do
    parallel "${bins[$b]}" "assign-x$par" margay "$b" ipam assign --node bench-node --handle
  done
  parallel host-local "ADD-x$par" cni ADD
  for b in "${!bins[@]}"; do
    parallel "${bins[$b]}" "release-x$par" margay "$b" ipam release --handle
  done
  parallel host-local "DEL-x$par" cni DEL
done

echo "N=$n per row, alternating; -x$par rows: $par processes at once, $rounds rounds"
awk '{ printf "%s %s %.3f\n", $1, $2, ($4 - $3) * 1000 }' "$samples" | sort -k1,1 -k2,2 -k3,3n |
  awk '
    { key = $1 "\t" $2; if (!(key in count)) order[++keys] = key
      v[key, ++count[key]] = $3; sum[key] += $3 }
    END {
      printf "%-40s %-14s %9s %9s\n", "binary", "operation", "median ms", "mean ms"
      for (k = 1; k <= keys; k++) {
        key = order[k]; c = count[key]
        med = (c % 2) ? v[key, (c + 1) / 2] : (v[key, c / 2] + v[key, c / 2 + 1]) / 2
        split(key, f, "\t")
        printf "%-40s %-14s %9.2f %9.2f\n", f[1], f[2], med, sum[key] / c
      }
    }'
