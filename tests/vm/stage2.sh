#!/bin/bash
# Second stage of the test VM (PID 1 after tests/vm/init's switch_root): the root is the host's
# filesystem over 9p, read-only. Makes the few writable places a Linux userland needs, mounts the
# kernel's module tree where modprobe looks, runs the command that tests/vm/run.sh left in its
# control directory, reports its exit status and powers off.
#
# Kernel command line words read here (set by run.sh): kproxy.out=<host path of the writable
# share, <checkout>/target/vm/out> kproxy.ctl=<control directory inside it>. The checkout may be
# anywhere, /tmp included.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

poweroff_now() {
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
}

fail() {
    echo "kproxy-vm stage2: $*"
    echo "KPROXY-VM-EXIT=boot-failed"
    poweroff_now
}

step() { "$@" || fail "failed: $*"; }

step mount -t proc proc /proc
step mount -t sysfs sysfs /sys
mountpoint -q /dev || step mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
step mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
step mount -t tmpfs -o mode=1777 tmpfs /dev/shm
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
mountpoint -q /sys/fs/cgroup 2>/dev/null || mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null

out='' ctl=''
for word in $(cat /proc/cmdline); do
    case "$word" in
        kproxy.out=*) out="${word#kproxy.out=}" ;;
        kproxy.ctl=*) ctl="${word#kproxy.ctl=}" ;;
    esac
done
[ -n "$out" ] && [ -n "$ctl" ] || fail "no kproxy.out= or kproxy.ctl= on the kernel command line"
# The checkout is the directory of target/vm/out.
root="${out%/target/vm/out}"
[ "$root" != "$out" ] || fail "kproxy.out=$out is not <checkout>/target/vm/out"

# Writable scratch places. /var/run and /var/lock are symlinks into /run on Debian; where they
# are directories they get their own tmpfs. A checkout inside one of them (/tmp/kproxy, say)
# would be hidden by that tmpfs: the host's view of it is bound back over it, from a bind of
# the host's root made before the tmpfs's (which it does not see).
mkdir -p /dev/.kproxy-host
step mount --bind / /dev/.kproxy-host
scratch() { # MODE DIR
    step mount -t tmpfs -o "mode=$1" tmpfs "$2"
    case "$root/" in
        "$2"/?*)
            mkdir -p "$root"
            step mount --bind "/dev/.kproxy-host$root" "$root"
            ;;
    esac
}
scratch 1777 /tmp
scratch 755 /run
scratch 1777 /var/tmp
for d in /var/run /var/lock; do
    [ -d "$d" ] && [ ! -L "$d" ] && step mount -t tmpfs -o mode=755 tmpfs "$d"
done
mkdir -p /run/lock /run/netns

step mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none out "$out"
[ -f "$ctl/cmd" ] || fail "no command file $ctl/cmd"

# The module tree (9p tag `modules`) at /lib/modules/$(uname -r), where modprobe (and the
# kernel's request_module, through /proc/sys/kernel/modprobe = /sbin/modprobe) look. The host's
# root is read-only and may have no /lib/modules at all: a tmpfs goes over /lib/modules when it
# exists, else an overlay (tmpfs upper) over the directory that holds it (/usr/lib on Debian).
kver="$(uname -r)"
libdir="$(readlink -f /lib)"
if [ -d "$libdir/modules" ]; then
    step mount -t tmpfs -o mode=755 tmpfs "$libdir/modules"
else
    mkdir -p /run/kproxy-vm/lib/upper /run/kproxy-vm/lib/work
    step mount -t overlay overlay \
        -o "lowerdir=$libdir,upperdir=/run/kproxy-vm/lib/upper,workdir=/run/kproxy-vm/lib/work" "$libdir"
fi
mkdir -p "$libdir/modules/$kver"
step mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose modules "$libdir/modules/$kver"
echo /sbin/modprobe >/proc/sys/kernel/modprobe

hostname kproxy-vm
step ip link set lo up
ulimit -n 65536
umask 022
export HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb LANG=C.UTF-8
export KPROXY_VM=1 KPROXY_VM_OUT="$out"
# shellcheck disable=SC1091 # written by run.sh: `export NAME=value` lines (CI, RUST_*, PATH, ...)
[ -f "$ctl/env" ] && . "$ctl/env"
cd "$(cat "$ctl/cwd")" || fail "cannot cd into $(cat "$ctl/cwd")"

# Kernel messages go to $ctl/dmesg (run.sh keeps it as target/vm/out/dmesg.txt), not in between
# the command's output; KPROXY_VM_VERBOSE=1 leaves them on the console.
[ "${KPROXY_VM_VERBOSE:-}" = 1 ] || dmesg -n 1
read -r up _ </proc/uptime
echo "KPROXY-VM-START uptime=${up}s"
bash "$ctl/cmd" </dev/null
status=$?
read -r up _ </proc/uptime
dmesg >"$ctl/dmesg" 2>&1
echo "$status" >"$ctl/exit"
echo "KPROXY-VM-EXIT=$status uptime=${up}s"
poweroff_now
