#!/usr/bin/env bash
# Runs every kproxy test: unit, integration, and the root-only end-to-end tests that build hosts
# out of network namespaces. Installs the Debian packages those need when they are missing.
# With CI=true, a test that cannot run (no root, a missing tool) fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")"

need=()
# promtool (tests/dashboards.rs) ships only in Debian's prometheus package.
for pair in cc:gcc nft:nftables iptables:iptables conntrack:conntrack ip:iproute2 ipset:ipset python3:python3 strace:strace systemd-analyze:systemd setpriv:util-linux promtool:prometheus; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing ${need[*]}"
        # Packages install only their tools: no service (prometheus' server) is started.
        policy=
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
        [ -n "$policy" ] && rm -f /usr/sbin/policy-rc.d
    else
        echo "test.sh: missing ${need[*]} and cannot install them (not root or no apt-get)" >&2
        [ "${CI:-}" = true ] && exit 1
    fi
fi

# RUST_TEST_THREADS, not --test-threads: the criterion benches (run once each in test mode by
# --all-targets) refuse libtest's flags.
RUST_TEST_THREADS="${KPROXY_TEST_THREADS:-4}" cargo test --all-targets

# IPVS (and dummy links) are not in every host kernel: those tests run in a VM on Debian's own
# kernel (tests/vm/README.md), through $KPROXY_VM_TESTS given the e2e and the library test
# executables. KPROXY_SKIP_VM=1 skips them, except under CI=true.
if [ "${KPROXY_SKIP_VM:-}" = 1 ]; then
    if [ "${CI:-}" = true ]; then
        echo "test.sh: KPROXY_SKIP_VM=1 is not allowed under CI=true" >&2
        exit 1
    fi
    echo "test.sh: skipping the VM tests (KPROXY_SKIP_VM=1)"
else
    bins="$(cargo test --no-run --lib --test e2e --message-format=json | python3 -c '
import json, sys
found = {}
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind = "lib" if "lib" in m["target"]["kind"] else m["target"]["name"]
        found[kind] = m["executable"]
missing = [k for k in ("e2e", "lib") if k not in found]
if missing:
    sys.exit("test.sh: cargo built no test executable for " + ", ".join(missing))
print(found["e2e"])
print(found["lib"])
')"
    { read -r e2e_bin && read -r lib_bin; } <<<"$bins"
    tests/vm/run.sh "${KPROXY_VM_TESTS:-tests/vm/ipvs-tests.sh}" "$e2e_bin" "$lib_bin"
fi
