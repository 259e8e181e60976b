#!/usr/bin/env bash
# Installs what Margay's build, tests and lab need, and nothing when it is all there already.
# Called by `make lab` and `make test`; safe to run by hand.
set -euo pipefail

packages=(
  etcd-server protobuf-compiler nftables iptables ipset iproute2 bird2 gobgpd
  containerd runc containernetworking-plugins iperf3 jq openssl
  iputils-ping busybox-static
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# Debian's etcd-server starts a system etcd on 2379; tests run their own on free ports, so the
# system one only costs memory. Leave it as the administrator configured it.
command -v cargo >/dev/null || { echo "setup: cargo is required (rustup)" >&2; exit 1; }
command -v protoc >/dev/null || { echo "setup: protoc missing after install" >&2; exit 1; }
command -v etcd >/dev/null || { echo "setup: etcd missing after install" >&2; exit 1; }
