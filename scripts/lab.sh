#!/usr/bin/env bash
# `make lab`: a three-node Margay cluster in network namespaces on this machine (VXLAN, the
# embedded datastore, two pods per node), then every pod tries every pod.
set -euo pipefail
bin=${1:-target/release/margay}
if [ "$(id -u)" -ne 0 ]; then
  echo "make lab needs root: it creates network namespaces (try: sudo make lab)" >&2
  exit 1
fi
# The lab an earlier `make lab` left up, if any.
"$bin" lab down

printf '\n$ margay lab up --nodes 3 --pods-per-node 2 --mode vxlan\n'
"$bin" lab up --nodes 3 --pods-per-node 2 --mode vxlan

printf '\n$ margay lab probe\n'
"$bin" lab probe

cat <<EOT
The lab stays up (namespaces margay-*, state in /var/lib/margay/lab/margay). Explore it:
  $bin lab status                                 # nodes, agents, pods
  $bin lab probe --port 80 --protocol tcp -o json # the matrix as JSON
  $bin lab exec default/pod-1-1 -- ip route       # any command inside a pod
  $bin lab apply -f policy.yaml                   # resources into the lab's datastore
  ip netns exec margay-node-node-1 ip route       # a node's routes (VXLAN to the others)
  $bin lab up --name other --spec examples/lab/xyz.yaml   # a second lab beside it
Take it down:
  $bin lab down
EOT
