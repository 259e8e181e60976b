#!/usr/bin/env bash
# `make lab` until the multi-node lab lands: apply the examples (Calico YAML as users have it)
# to a fresh embedded datastore and list what was stored.
set -euo pipefail
bin=${1:-target/release/margay}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
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
