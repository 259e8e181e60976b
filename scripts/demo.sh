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
