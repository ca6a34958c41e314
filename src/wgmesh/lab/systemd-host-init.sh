#!/bin/bash
# The supervisor of one systemd lab host. Started by `wgmesh lab up` in a private mount
# namespace: it mounts the host's root (the shared Debian root file system below, the host's
# own layer above, so what the host writes survives its reboots) and boots it with
# systemd-nspawn inside the host's network namespace, systemd as the container's PID 1. A
# reboot inside the host ends nspawn with 133; the host is then booted again, as
# systemd-nspawn@.service does. Killing this process, then the container's PID 1, ends the host.
#
# usage: systemd-host-init.sh HOST_DIR HOSTNAME ROOTFS NETNS_PATH
set -eu
dir=$1 name=$2 lower=$3 netns=$4
cd "$dir"
# unshare exec'd this shell without forking: $$ is our PID as the root namespace sees it.
echo $$ > init.pid.tmp
mv init.pid.tmp init.pid

# The network namespace outlives the container, as a machine's NICs and their static
# addresses outlive its power: everything else a power cycle loses goes before each boot
# (the ruleset, links but lo and the lab's eth*, routing rules but the kernel's own three,
# forwarding), so a reboot here starts from what a real one does.
power_cycle_network() {
    nsenter --net="$netns" /bin/sh -c '
        nft flush ruleset
        ip -o link show | sed "s/^[0-9]*: \([^:@]*\).*/\1/" | while read -r link; do
            case $link in lo|eth*) ;; *) ip link delete dev "$link" ;; esac
        done
        for v in 4 6; do
            ip -$v rule show | while read -r prio _; do
                case ${prio%:} in 0|32766|32767) ;; *) ip -$v rule delete priority "${prio%:}" ;; esac
            done
        done
        sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0'
}

mount --make-rprivate /
mount -t overlay wgmesh-root -o "lowerdir=$lower,upperdir=$dir/upper,workdir=$dir/work" \
    "$dir/root"
while :; do
    power_cycle_network
    rc=0
    # --keep-unit --register=no: this machine runs no systemd to register with.
    # --resolv-conf=off: the host's own /etc/resolv.conf (resolved's stub), not a copy of
    # this machine's, which names a resolver the lab cannot reach.
    # /dev/net/tun: wireguard-go, where the kernel has no WireGuard. CAP_NET_ADMIN and a
    # writable /proc/sys/net (the container's own network namespace, as every process sees
    # /proc/sys/net of its own): nspawn grants them only to a network namespace it made
    # itself, and this one is the lab's.
    SYSTEMD_NSPAWN_API_VFS_WRITABLE=network systemd-nspawn --quiet --directory="$dir/root" --boot --keep-unit --register=no --resolv-conf=off \
        --network-namespace-path="$netns" --hostname="$name" --machine="$(basename "$netns")" \
        --capability=CAP_NET_ADMIN --bind=/dev/net/tun </dev/null || rc=$?
    echo "== $(date -u +%FT%TZ) $name: systemd-nspawn ended with $rc"
    [ "$rc" = 133 ] || exit "$rc"
done
