#!/usr/bin/env bash
# Runs every kproxy test: unit, integration, and the root-only end-to-end tests that build hosts
# out of network namespaces. Installs the Debian packages those need when they are missing.
# With CI=true, a test that cannot run (no root, a missing tool) fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")"

need=()
for pair in nft:nftables iptables:iptables conntrack:conntrack ip:iproute2 ipset:ipset python3:python3 strace:strace; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
    else
        echo "test.sh: missing ${need[*]} and cannot install them (not root or no apt-get)" >&2
        [ "${CI:-}" = true ] && exit 1
    fi
fi

# RUST_TEST_THREADS, not --test-threads: the criterion benches (run once each in test mode by
# --all-targets) refuse libtest's flags.
RUST_TEST_THREADS="${KPROXY_TEST_THREADS:-4}" cargo test --all-targets
