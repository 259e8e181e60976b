#!/usr/bin/env bash
# `make lab` until the multi-node lab lands: apply the examples (Calico YAML as users have it)
# to a fresh embedded datastore and list what was stored.
set -euo pipefail
bin=$(realpath "${1:-target/release/margay}")
dir=$(mktemp -d)
tag=mgydemo$$
cleanup() {
  for ns in "$tag-node" "$tag-pod1" "$tag-pod2"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
export MARGAY_DATASTORE="sqlite://$dir/margay.db"

run() { printf '\n$ %s\n' "$*"; "$@"; }
run "$bin" version
run "$bin" apply -f examples/
run "$bin" get ippools -o wide
run "$bin" get ippool default-ipv4-ippool -o yaml
run "$bin" get ipamconfig
run "$bin" get felixconfiguration default -o yaml
cat > "$dir/node.yaml" <<'YAML'
apiVersion: margay.dev/v1
kind: Node
metadata:
  name: demo-node
YAML
run "$bin" apply -f "$dir/node.yaml"
run "$bin" ipam assign --node demo-node --handle demo-pod --num 3
run "$bin" ipam show --show-blocks
run "$bin" ipam check

[ "$(id -u)" -eq 0 ] || { echo "(the CNI part of the demo needs root; skipped)"; exit 0; }

# Two pods wired by the CNI plugin, driven the way a container runtime drives it. A network
# namespace plays the node (with a dead-end default route, as proxy ARP needs), so nothing
# touches this machine's own network.
ip netns add "$tag-node"
ip -n "$tag-node" link set lo up
ip -n "$tag-node" link add uplink type veth peer name uplink-peer
ip -n "$tag-node" link set uplink up
ip -n "$tag-node" link set uplink-peer up
ip -n "$tag-node" route add default dev uplink
run "$bin" install-cni --bin-dir "$dir/cni/bin" --conf-dir "$dir/cni/net.d" --nodename demo-node \
  --state-dir "$dir/state"
conf=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); p=c["plugins"][0]; p["name"]=c["name"]; p["cniVersion"]=c["cniVersion"]; print(json.dumps(p))' \
  "$dir/cni/net.d/10-margay.conflist")
cni() { # cni COMMAND POD
  CNI_COMMAND=$1 CNI_CONTAINERID="demo-$2" CNI_NETNS="/var/run/netns/$tag-$2" CNI_IFNAME=eth0 \
    CNI_PATH="$dir/cni/bin" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$2" \
    ip netns exec "$tag-node" "$dir/cni/bin/margay" <<<"$conf"
}
for pod in pod1 pod2; do
  ip netns add "$tag-$pod"
  printf '\n$ CNI_COMMAND=ADD margay  # %s\n' "$pod"
  cni ADD "$pod" | python3 -m json.tool
done
run ip -n "$tag-pod1" addr show eth0
run ip -n "$tag-pod1" route
pod2_ip=$(ip -n "$tag-pod2" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
run ip netns exec "$tag-pod1" ping -c 2 "$pod2_ip"
run "$bin" get wep -A -o wide
for pod in pod1 pod2; do printf '\n$ CNI_COMMAND=DEL margay  # %s\n' "$pod"; cni DEL "$pod"; done
run "$bin" get wep -A
run "$bin" ipam show
