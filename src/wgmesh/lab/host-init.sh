#!/bin/bash
# PID 1 of one lab host. Started by `wgmesh lab up` inside the host's network namespace and
# fresh mount, UTS and PID namespaces. It gives the host a private /etc, /var, /run, /root and
# /tmp, starts the host's sshd, then stays as the holder and reaper of the namespace: killing
# this one process (by the PID it records) ends everything the host ever started.
#
# usage: host-init.sh HOST_DIR HOSTNAME
set -eu
dir=$1 name=$2
# Later mounts cover ancestors of $dir; relative paths through the working directory still
# reach the original folder, wherever the lab state lives.
cd "$dir"

# Our PID as the root namespace sees it, read with a builtin (an external command would
# report its own PID).
while read -r key outer _; do
    if [ "$key" = "NSpid:" ]; then echo "$outer" > init.pid.tmp; break; fi
done < /proc/self/status
mv init.pid.tmp init.pid

mount --make-rprivate /
mount -t proc proc /proc
# sysfs shows the network namespace of whoever mounts it: /sys/class/net lists our links.
mount -t sysfs sysfs /sys
# Whole-directory overlays rather than bind-mounted files, so atomic renames (Ansible's
# file writes) into /etc and /var work.
mount -t overlay wgmesh-etc -o "lowerdir=/etc,upperdir=$dir/etc.upper,workdir=$dir/etc.work" /etc
mount -t overlay wgmesh-var -o "lowerdir=/var,upperdir=$dir/var.upper,workdir=$dir/var.work" /var
mount --bind root /root
mount --bind run /run
hostname "$name"

mkdir -p /run/sshd /run/wireguard /var/log
/usr/sbin/sshd -f /etc/ssh/sshd_config -E /var/log/sshd.log
# sshd daemonizes before it binds: wait for the listener before saying we are ready.
for _ in $(seq 1 200); do
    if [ -n "$(ss -Hltn 'sport = :22')" ]; then break; fi
    sleep 0.02
done
[ -n "$(ss -Hltn 'sport = :22')" ] || { echo "sshd did not start" >&2; exit 1; }

# /tmp last: the lab state may itself live under /tmp.
touch ready
mount --bind tmp /tmp

# Bash as PID 1 reaps the orphans that get re-parented to it (daemons, stray sessions).
trap 'exit 0' TERM
while :; do
    sleep 3600 &
    wait $! || true
done
