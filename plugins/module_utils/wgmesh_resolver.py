"""Split DNS and the mesh's names on the host: per-link DNS where systemd-resolved runs, else
a dnsmasq of wgmesh's own; and the nameserver node's resolver. Standard library only."""

from __future__ import annotations

import os
import shutil
import signal
import time

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    DNSMASQ_CONF,
    DNSMASQ_PID,
    RESOLVER_CONF,
    RESOLVER_PID,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import read_text as read
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import (
    write_atomic,
    write_system_file,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_runner import ApplyError, Runner

# Split DNS without systemd-resolved: a dnsmasq of our own on a loopback address answers the
# split domains from their nameservers and everything else from the resolvers the host had.
# The mesh interface's wg-quick file starts it again at boot (the contract's DNSMASQ_CONF).
DNSMASQ_ADDRESS = "127.0.0.153"


# The resolvers /etc/resolv.conf named before (dnsmasq drops root, so not in state_dir).
UPSTREAM = "/etc/wgmesh/upstream-resolv.conf"


RESOLV_CONF = "/etc/resolv.conf"


def resolved_runs() -> bool:
    return os.path.isdir("/run/systemd/resolve") and shutil.which("resolvectl") is not None


def sync_resolved(run: Runner, iface: str, dns: dict | None, check_mode: bool) -> list[str]:
    """Per-link DNS on the mesh interface: its nameservers and ~domains (routing only)."""
    want_servers = sorted({s for servers in (dns or {}).values() for s in servers})
    want_domains = sorted(f"~{d}" for d in (dns or {}))
    have_servers = _link_setting(run("resolvectl", "dns", iface, check=False))
    have_domains = _link_setting(run("resolvectl", "domain", iface, check=False))
    if (want_servers, want_domains) == (have_servers, have_domains):
        return []
    if not check_mode:
        if dns:
            run("resolvectl", "dns", iface, *want_servers)
            run("resolvectl", "domain", iface, *want_domains)
        else:
            run("resolvectl", "revert", iface)
    return [f"per-link DNS on {iface}: {' '.join(want_domains) or 'none'}"]


def _link_setting(text: str) -> list[str]:
    """The values of `resolvectl dns|domain IFACE` ("Link 7 (wg0): a b"); none when it
    printed something else (no such link yet, resolved not answering)."""
    for line in text.splitlines():
        if line.startswith("Link ") and ":" in line:
            return sorted(line.split(":", 1)[1].split())
    return []


def dnsmasq_conf(dns: dict, upstream: str) -> str:
    lines = ["# wgmesh: split DNS. Generated; holds no secret.",
             f"listen-address={DNSMASQ_ADDRESS}", "bind-interfaces", "port=53",
             f"pid-file={DNSMASQ_PID}", f"resolv-file={upstream}", "no-poll", "cache-size=1000"]
    for domain in sorted(dns):
        lines += [f"server=/{domain}/{server}" for server in dns[domain]]
    return "\n".join(lines) + "\n"


def our_resolv_conf(original: str) -> str:
    """Our resolver first; the host's search and options lines kept."""
    kept = [line for line in original.splitlines()
            if line.split()[:1] and line.split()[0] in ("search", "domain", "options")]
    return "\n".join(["# wgmesh: split DNS through a local resolver; the resolvers this "
                      "file named before are in", "# its upstream list. `wgmesh` restores "
                      "this file when split DNS goes away.", f"nameserver {DNSMASQ_ADDRESS}",
                      *kept]) + "\n"


def dnsmasq_pid(pidfile: str) -> int | None:
    """The pid of the dnsmasq (wgmesh's split-DNS one, or the mesh resolver) whose pid file
    this is, if it runs."""
    try:
        pid = int((read(pidfile) or "").strip())
    except ValueError:
        return None
    return pid if "dnsmasq" in (read(f"/proc/{pid}/comm") or "") else None


def stop_dnsmasq(pidfile: str) -> None:
    pid = dnsmasq_pid(pidfile)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.05)


def sync_dnsmasq(run: Runner, dns: dict | None, check_mode: bool) -> list[str]:
    upstream = UPSTREAM
    actions = []
    if not dns:
        if dnsmasq_pid(DNSMASQ_PID) is not None or os.path.exists(DNSMASQ_CONF):
            actions.append("stop the split-DNS resolver")
            if not check_mode:
                stop_dnsmasq(DNSMASQ_PID)
                write_atomic(DNSMASQ_CONF, None, 0o644, dir_mode=0o755)
        original = read(upstream)
        if original is not None:
            actions.append(f"restore {RESOLV_CONF}")
            if not check_mode:
                write_system_file(RESOLV_CONF, original)
                os.unlink(upstream)
        return actions
    if shutil.which("dnsmasq") is None:
        raise ApplyError("split DNS needs dnsmasq where systemd-resolved does not run: install "
                         "dnsmasq-base (wgmesh_manage_packages does)")
    current = read(RESOLV_CONF) or ""
    original = read(upstream)
    if original is None or (current != our_resolv_conf(original)
                            and not current.startswith("# wgmesh: split DNS")):
        original = current  # first time, or something (a DHCP client) rewrote it since
        actions.append(f"keep the host's resolvers from {RESOLV_CONF} as upstream")
        if not check_mode:
            write_atomic(upstream, original, 0o644, dir_mode=0o755)
    conf = dnsmasq_conf(dns, upstream)
    restart = dnsmasq_pid(DNSMASQ_PID) is None
    if read(DNSMASQ_CONF) != conf:
        actions.append(f"write {DNSMASQ_CONF}")
        restart = True
        if not check_mode:
            write_atomic(DNSMASQ_CONF, conf, 0o644, dir_mode=0o755)
    if restart or actions:
        actions.append("start the split-DNS resolver (dnsmasq)")
        if not check_mode:
            stop_dnsmasq(DNSMASQ_PID)
            run("dnsmasq", f"--conf-file={DNSMASQ_CONF}")
    if current != our_resolv_conf(original):
        actions.append(f"point {RESOLV_CONF} at the split-DNS resolver")
        if not check_mode:
            write_system_file(RESOLV_CONF, our_resolv_conf(original))
    return actions


def sync_resolver(run: Runner, conf: str | None, check_mode: bool) -> list[str]:
    """The mesh resolver runs the bundle's configuration, or does not run at all."""
    if conf is None:
        if dnsmasq_pid(RESOLVER_PID) is None and not os.path.exists(RESOLVER_CONF):
            return []
        if not check_mode:
            stop_dnsmasq(RESOLVER_PID)
            write_atomic(RESOLVER_CONF, None, 0o644, dir_mode=0o755)
        return ["stop the mesh resolver"]
    if shutil.which("dnsmasq") is None:
        raise ApplyError("the mesh resolver needs dnsmasq: install dnsmasq-base "
                         "(wgmesh_manage_packages does)")
    actions = []
    if read(RESOLVER_CONF) != conf:
        actions.append(f"write {RESOLVER_CONF}")
        if not check_mode:
            write_atomic(RESOLVER_CONF, conf, 0o644, dir_mode=0o755)
    if actions or dnsmasq_pid(RESOLVER_PID) is None:
        actions.append("start the mesh resolver (dnsmasq)")
        if not check_mode:
            stop_dnsmasq(RESOLVER_PID)
            run("dnsmasq", f"--conf-file={RESOLVER_CONF}")
    return actions
