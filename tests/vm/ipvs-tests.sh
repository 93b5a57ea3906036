#!/usr/bin/env bash
# The tests that need IPVS (and dummy links), run inside the VM by test.sh:
#   tests/vm/run.sh tests/vm/ipvs-tests.sh E2E_BINARY LIB_TEST_BINARY
# E2E_BINARY is tests/e2e's test executable (its `ipvs::` scenarios are #[ignore]d on hosts
# without IPVS), LIB_TEST_BINARY the library's unit-test executable (its live
# `backends::ipvs::` tests likewise). Add more binaries or filters here.
set -euo pipefail
(($# == 2)) || { echo "usage: $0 E2E_BINARY LIB_TEST_BINARY" >&2; exit 2; }
e2e="$1" lib="$2"
threads="${KPROXY_VM_TEST_THREADS:-1}"

# Warm-up, so that the tests' own deadlines (10 s waits) do not pay for first-time costs of the
# emulated VM: load the netfilter modules kproxy's nftables and iptables rules use (the kernel
# would autoload each on first use, nf_tables replaying the whole batch after every load) and
# read the binaries over 9p once. Not ip_vs and its schedulers: loading those (or coping when
# they are not loaded) is part of what the IPVS tests test. KPROXY_VM_PRELOAD replaces the list.
# shellcheck disable=SC2086 # a list of module names
modprobe -a -q ${KPROXY_VM_PRELOAD-nf_tables nft_chain_nat nft_ct nft_masq nft_nat nft_fib_ipv4 \
    nft_fib_ipv6 nft_reject_ipv4 nft_reject_ipv6 nft_compat nf_conntrack nf_nat \
    nf_conntrack_netlink ip_set veth dummy ip_tables iptable_nat iptable_filter ip6_tables \
    ip6table_nat ip6table_filter xt_conntrack xt_comment xt_mark xt_addrtype xt_MASQUERADE \
    xt_statistic xt_recent xt_nat} || true
for f in "$lib" "$e2e" target/debug/kproxy target/release/kproxy; do
    if [ -f "$f" ]; then cat "$f" >/dev/null; fi
done

status=0
echo "== $lib backends::ipvs:: --include-ignored"
"$lib" backends::ipvs:: --include-ignored --test-threads="$threads" || status=1
echo "== $e2e ipvs:: --include-ignored"
"$e2e" ipvs:: --include-ignored --test-threads="$threads" || status=1
exit "$status"
