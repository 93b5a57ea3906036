# kproxy's container image: `docker build -t kproxy:latest .` (deploy/README.md says how to load
# it onto the nodes). deploy/daemonset.yaml runs it as root with NET_ADMIN and NET_RAW.

# Build stage: the toolchain Cargo.toml's rust-version asks for, on the runtime's Debian release
# (same glibc).
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Cargo.toml names the benches, so cargo wants them present even for the binary alone; build.rs
# records the compiler version and git facts for /statusz and kubernetes_build_info.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
# kubernetes_build_info's git_commit and git_tree_state (build.rs asks git, but the context has
# no .git): `--build-arg KPROXY_GIT_COMMIT=$(git rev-parse HEAD)`, and KPROXY_GIT_TREE_STATE
# (clean or dirty); SOURCE_DATE_EPOCH fixes its build_date. Unset, they read unknown.
ARG KPROXY_GIT_COMMIT=""
ARG KPROXY_GIT_TREE_STATE=""
ARG SOURCE_DATE_EPOCH
# The cache mounts keep the registry and the target directory between builds (BuildKit); the
# binary is copied out of the cached target in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kproxy \
    && install -D -m 0755 target/release/kproxy /out/kproxy

# Runtime stage: the tools kproxy runs or loads.
#   nftables  nft and libnftables.so.1 (nftables mode, IPVS mode's companion table)
#   iptables  iptables-nft-* and iptables-legacy-* (iptables mode; leftovers in every mode)
#   ipset     removing kproxy's ipsets (leftovers, --cleanup)
#   kmod      modprobe (ipvs mode loads ip_vs when it is missing)
# and, for debugging inside the pod: conntrack, ipvsadm, iproute2 (ip).
FROM debian:bookworm-slim
# Unpinned on purpose: the release's current packages, security fixes included.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nftables iptables ipset kmod conntrack ipvsadm iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/kproxy /usr/local/bin/kproxy
# Root: kproxy needs CAP_NET_ADMIN and CAP_NET_RAW, and the capabilities a pod adds reach uid 0
# only (Kubernetes sets no ambient capabilities).
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["/usr/local/bin/kproxy"]
