#!/usr/bin/env bash
# Boots a throwaway VM (Debian's own kernel, a busybox initramfs, the host's root shared over 9p
# read-only) and runs COMMAND in it as root, for tests the host kernel cannot run (IPVS, dummy
# links). See tests/vm/README.md.
#
#   tests/vm/run.sh [--] 'shell command line'    # one argument: a script line for bash
#   tests/vm/run.sh [--] PROGRAM ARG...          # several: quoted and run as one command
#
# Streams the VM's serial console to stdout and exits with COMMAND's status; 124 if the VM ran
# past KPROXY_VM_TIMEOUT seconds (default 1800), 125 if it stopped without reporting one (boot
# failure). COMMAND runs in the repo root; $KPROXY_VM_OUT (target/vm/out, the same path inside
# and out) is the one writable directory the host sees afterwards.
#
# Environment: KPROXY_VM_TIMEOUT, KPROXY_VM_MEM (default 4G), KPROXY_VM_SMP (default 2),
# KPROXY_VM_ENV (more variable names to pass in; CI, RUST_* and KPROXY_* are passed always),
# KPROXY_VM_PATH (PATH inside), KPROXY_VM_VERBOSE=1 (all kernel messages on the console),
# KPROXY_VM_9P_CACHE (cache mode of the root share, default loose), KPROXY_VM_QEMU_ARGS (more
# qemu arguments, split on spaces).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd -P)"
cache="$root/target/vm"
out="$cache/out"
here="$root/tests/vm"
log() { echo "kproxy-vm: $*" >&2; }
die() {
    log "$*"
    exit 125
}

[ "${1:-}" = -- ] && shift
(($#)) || die "usage: tests/vm/run.sh [--] COMMAND..."
case "$root" in *[[:space:]]*) die "the repo path must not contain whitespace: $root" ;; esac

# 1. Host packages.
need=()
for pair in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static cpio:cpio depmod:kmod \
    ipvsadm:ipvsadm; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] \
        || [ -x "/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
# busybox (dynamic) would not run in the initramfs: the static one is what counts.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' \
    || [[ " ${need[*]-} " == *" busybox-static "* ]] || need+=(busybox-static)
if ((${#need[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; } \
            || die "cannot install ${need[*]}"
    else
        die "missing ${need[*]} and cannot install them (not root or no apt-get)"
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
busybox=/bin/busybox # busybox-static's

mkdir -p "$cache" "$out"
exec 9>"$cache/.lock"
flock 9 # one setup at a time; released before the VM boots

# 2. Debian's kernel: the package linux-image-amd64 depends on, unpacked and depmod'ed once.
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'; }
pkg="$(kernel_pkg || true)"
if [ -z "$pkg" ] && ! ls -d "$cache"/kernel/*/.ok >/dev/null 2>&1; then
    log "apt-get update (no linux-image-amd64 in the package lists)"
    apt-get update >/dev/null || true
    pkg="$(kernel_pkg || true)"
fi
if [ -n "$pkg" ]; then
    kver="${pkg#linux-image-}"
else # offline and the lists say nothing: the newest kernel already in the cache
    kver="$(basename "$(dirname "$(ls -d "$cache"/kernel/*/.ok | sort -V | tail -n1)")")"
    [ -n "$kver" ] || die "cannot find Debian's kernel package (apt-cache depends linux-image-amd64)"
    log "no package lists: using the cached kernel $kver"
fi
kdir="$cache/kernel/$kver"
if [ ! -e "$kdir/.ok" ]; then
    log "fetching $pkg"
    rm -rf "$kdir" && mkdir -p "$kdir"
    (cd "$kdir" && apt-get download "$pkg" >/dev/null 2>&1) \
        || { apt-get update >/dev/null && (cd "$kdir" && apt-get download "$pkg" >/dev/null); } \
        || die "apt-get download $pkg failed"
    dpkg -x "$kdir"/linux-image-*.deb "$kdir/root"
    rm -f "$kdir"/linux-image-*.deb
    depmod -b "$kdir/root" "$kver"
    touch "$kdir/.ok"
fi
vmlinuz="$kdir/root/boot/vmlinuz-$kver"
moddir="$kdir/root/lib/modules/$kver"
{ [ -f "$vmlinuz" ] && [ -d "$moddir" ]; } || die "broken kernel cache $kdir: remove it"

# 3. The initramfs: static busybox, tests/vm/init, and the virtio/9p/overlay modules that are not
# built in, in the order modprobe would load them.
key="$(cat "$here/init" "$busybox" "$here/run.sh" | sha256sum | cut -c1-16)"
initrd="$cache/initramfs-$kver-$key.cpio.gz"
if [ ! -f "$initrd" ]; then
    log "building $(basename "$initrd")"
    stage="$(mktemp -d "$cache/initramfs.XXXXXX")"
    mkdir -p "$stage"/{bin,dev,proc,sys,newroot,modules}
    cp "$busybox" "$stage/bin/busybox"
    install -m 755 "$here/init" "$stage/init"
    : >"$stage/modules.list"
    for m in netfs fscache virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
        9pnet 9p 9pnet_virtio overlay; do
        if ! deps="$(modprobe -d "$kdir/root" -S "$kver" --show-depends "$m" 2>/dev/null)"; then
            case "$m" in virtio_pci | 9pnet_virtio | 9p | overlay) die "kernel $kver has no module $m" ;; esac
            continue # not in this kernel at all (older or newer split)
        fi
        while read -r what path params; do
            [ "$what" = insmod ] || continue # "builtin NAME": nothing to load
            name="$(basename "$path")"
            name="${name%.xz}" name="${name%.zst}" name="${name%.gz}"
            [ -e "$stage/modules/$name" ] && continue
            case "$path" in # busybox insmod takes only plain .ko
                *.xz) xz -dc "$path" >"$stage/modules/$name" ;;
                *.zst) zstd -qdc "$path" >"$stage/modules/$name" ;;
                *.gz) gzip -dc "$path" >"$stage/modules/$name" ;;
                *) cp "$path" "$stage/modules/$name" ;;
            esac
            echo "$name $params" >>"$stage/modules.list"
        done <<<"$deps"
    done
    (cd "$stage" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 >"$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    rm -rf "$stage"
    # Older builds (another init or busybox): gone once no run can still be booting them.
    find "$cache" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -name "$(basename "$initrd")" -mmin +60 -delete
fi
flock -u 9

# 4. The run's control directory in the writable share: the command, its environment and cwd;
# the VM writes back exit (the status) and dmesg.
ctl="$(mktemp -d "$out/.run.XXXXXX")"
trap 'rm -rf "$ctl"' EXIT
if (($# == 1)); then
    printf '%s\n' "$1" >"$ctl/cmd"
else
    printf '%q ' "$@" >"$ctl/cmd" && echo >>"$ctl/cmd"
fi
echo "$root" >"$ctl/cwd"
{
    printf 'export PATH=%q\n' "${KPROXY_VM_PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}"
    for name in $(compgen -e | grep -E '^(CI|RUST_[A-Z_]+|KPROXY_[A-Z0-9_]+)$' || true) ${KPROXY_VM_ENV:-}; do
        [ -n "${!name+x}" ] && printf 'export %s=%q\n' "$name" "${!name}"
    done
} >"$ctl/env"

# 5. Boot. TCG only: KVM hangs at boot on this kind of machine.
timeout_s="${KPROXY_VM_TIMEOUT:-1800}"
append="console=ttyS0 panic=-1 quiet mitigations=off kproxy.stage2=$here/stage2.sh"
append+=" kproxy.out=$out kproxy.ctl=$ctl kproxy.9pcache=${KPROXY_VM_9P_CACHE:-loose}"
[ "${KPROXY_VM_VERBOSE:-}" = 1 ] && append="${append/ quiet/}"
# shellcheck disable=SC2054 # commas inside qemu option values
qemu=(qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m "${KPROXY_VM_MEM:-4G}"
    -smp "${KPROXY_VM_SMP:-2}" -nodefaults -no-user-config -display none -no-reboot -nic none
    -chardev stdio,id=con,signal=on -serial chardev:con
    -kernel "$vmlinuz" -initrd "$initrd" -append "$append"
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap
    -virtfs "local,path=$moddir,mount_tag=modules,security_model=none,readonly=on"
    -virtfs "local,path=$out,mount_tag=out,security_model=none,multidevs=remap")
# shellcheck disable=SC2206 # extra qemu arguments, split on spaces
qemu+=(${KPROXY_VM_QEMU_ARGS:-})
log "booting $kver (timeout ${timeout_s}s)"
t0="$EPOCHREALTIME"
t_start=
# The filter strips the serial console's CRs and notes when the command started.
while IFS= read -r line || [ -n "$line" ]; do
    line="${line%$'\r'}"
    case "$line" in
        KPROXY-VM-START*) t_start="$EPOCHREALTIME" ;;
    esac
    printf '%s\n' "$line"
done < <(timeout --foreground -k 10 "$timeout_s" "${qemu[@]}" </dev/null 2>&1 && echo 0 >"$ctl/qemu-status" || echo "$?" >"$ctl/qemu-status")
wait "$!" 2>/dev/null || true # the process substitution, which writes qemu-status last
t1="$EPOCHREALTIME"
qstatus="$(cat "$ctl/qemu-status" 2>/dev/null || echo unknown)"
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
[ -f "$ctl/dmesg" ] && cp "$ctl/dmesg" "$out/dmesg.txt"
if [ -f "$ctl/exit" ]; then
    status="$(cat "$ctl/exit")"
    log "boot $(elapsed "$t0" "${t_start:-$t0}")s, command $(elapsed "${t_start:-$t0}" "$t1")s, exit status $status"
    exit "$status"
fi
if [ "$qstatus" = 124 ] || [ "$qstatus" = 137 ]; then
    log "timed out after ${timeout_s}s (KPROXY_VM_TIMEOUT)"
    exit 124
fi
log "the VM stopped (qemu status $qstatus) without reporting the command's exit status: boot failure? (output above)"
exit 125
