#!/usr/bin/env bash
# Forwarding with 1,000 policies in place vs none (issue 7): iperf3 TCP between two pods on two
# lab nodes (over VXLAN), in one run: no policy, then 1,000 Kubernetes NetworkPolicies that
# select the server, on nftables and then on iptables. Prints the median of RUNS 10-second
# runs each and the ratio to the no-policy run. Needs root and a build.
#   scripts/bench-policy-iperf.sh [target/release/margay] [RUNS]
set -euo pipefail
bin=$(realpath "${1:-target/release/margay}")
runs=${2:-3}
root=$(mktemp -d)
name=mgyiperf$$
export MARGAY_LAB_ROOT=$root
trap '"$bin" lab down --name "$name" >/dev/null 2>&1 || true; rm -rf "$root"' EXIT
lab() { "$bin" lab "$1" --name "$name" "${@:2}"; }

cat >"$root/spec.yaml" <<'YAML'
nodes: [node-1, node-2]
namespaces: [{name: bench}]
pods:
  - {namespace: bench, name: server, node: node-1, labels: {app: server}, ports: [{port: 80}]}
  - {namespace: bench, name: client, node: node-2, labels: {app: client}, ports: [{port: 80}]}
YAML
lab up --spec "$root/spec.yaml" >/dev/null 2>&1
server_ip=$(lab status -o json | jq -r '.pods[] | select(.pod == "bench/server") | .ip')
lab exec bench/server -- iperf3 -s -D

# 999 policies that select the server for peers that do not exist, and one that lets the
# client in: every new connection walks the whole tier; established traffic does not.
{
  for i in $(seq 1 999); do
    printf 'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d, namespace: bench}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: other-%d}}}]\n    ports: [{port: %d}]\n---\n' "$i" "$i" $((10000 + i))
  done
  printf 'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-client, namespace: bench}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 5201}]\n'
} >"$root/policies.yaml"

# Median receiver throughput in Gbit/s over $runs runs.
measure() {
  for _ in $(seq "$runs"); do
    lab exec bench/client -- iperf3 -c "$server_ip" -t 10 -J |
      jq '.end.sum_received.bits_per_second / 1e9'
  done | sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}'
}

# Until node-1's kernel holds every policy chain of the chosen dataplane.
wait_programmed() {
  local count=0
  for _ in $(seq 600); do
    case $1 in
      nftables) count=$(ip netns exec "$name-node-node-1" nft list chains ip | grep -c 'chain pi-' || true) ;;
      iptables) count=$(ip netns exec "$name-node-node-1" iptables-save -t filter | grep -c '^:mgy-pi-' || true) ;;
    esac
    [ "$count" -ge 1000 ] && return 0
    sleep 0.1
  done
  echo "only $count of 1000 policy chains programmed on $1" >&2
  exit 1
}

base=$(measure)
lab apply -f "$root/policies.yaml" >/dev/null
wait_programmed nftables
nft=$(measure)
printf 'apiVersion: margay.dev/v1\nkind: AgentConfiguration\nmetadata: {name: default}\nspec: {dataplane: iptables}\n' >"$root/iptables.yaml"
lab apply -f "$root/iptables.yaml" >/dev/null
wait_programmed iptables
ipt=$(measure)

printf '%-34s %10s %8s\n' "iperf3 TCP, node-2 -> node-1" "Gbit/s" "ratio"
printf '%-34s %10s %8s\n' "no policy (nftables)" "$base" "1.00"
printf '%-34s %10s %8s\n' "1,000 policies, nftables" "$nft" "$(awk -v a="$nft" -v b="$base" 'BEGIN {printf "%.3f", a / b}')"
printf '%-34s %10s %8s\n' "1,000 policies, iptables" "$ipt" "$(awk -v a="$ipt" -v b="$base" 'BEGIN {printf "%.3f", a / b}')"
echo "(medians of $runs runs of 10 s each, same lab, same run)"
