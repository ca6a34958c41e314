"""What a bundle holds and the files it makes on a host, in one copy: checked by
wgmesh_apply before it touches anything, and by its action plugin before it writes a
bundle's files under a folder (``root``: an image or a chroot). Standard library only."""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_agent import (
    check_bundle_part,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    BUNDLE_FORMAT,
    RESOLVER_PID,
    RULESET_PATH,
    bundle_hash,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_metrics import (
    valid_monitor_part,
)


class BundleError(Exception):
    """A bundle the host refuses before it changes anything."""


SYSCTL_PATH = "/etc/sysctl.d/60-wgmesh.conf"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/wgmesh.conf"


def bundle_files(b: dict, sshd_dropin: str = SSHD_DROPIN) -> list[tuple[str, str | None, int]]:
    """(path, content or None for absent, mode) of every file a bundle makes."""
    return [(f"/etc/wireguard/{b['interface']}.conf", b["wg_conf"], 0o600),
            (f"/etc/wireguard/{b['hop_interface']}.conf", b["hop_conf"], 0o600),
            (RULESET_PATH, b["nftables"], 0o644),
            (SYSCTL_PATH, b["sysctl"], 0o644),
            (sshd_dropin, b.get("sshd"), 0o644)]


HOSTS_MARK = "# {} wgmesh {} (managed by Ansible)"


def with_hosts_block(text: str, iface: str, block: str | None) -> str:
    """The hosts file with our block replaced (None: removed). The markers are the ones
    Ansible's blockinfile used, so files written by earlier versions are taken over."""
    begin, end = HOSTS_MARK.format("BEGIN", iface), HOSTS_MARK.format("END", iface)
    lines = text.splitlines(keepends=True)
    try:
        i = lines.index(begin + "\n")
        j = lines.index(end + "\n", i)
        del lines[i:j + 1]
    except ValueError:
        i = len(lines)
    if block is not None:
        if i == len(lines) and lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines[i:i] = [begin + "\n", block, end + "\n"]
    return "".join(lines)


DOMAIN_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}"
                       r"[a-z0-9])?)*")


def check_dns(dns: dict) -> None:
    for domain, servers in dns.items():
        if not DOMAIN_RE.fullmatch(domain) or not isinstance(servers, list) or not servers:
            raise BundleError(f"the bundle's split DNS entry {domain!r} is not a domain with "
                             "nameservers")
        for server in servers:
            # Whole-string: an address with a scope id (or anything else) never reaches
            # dnsmasq's configuration.
            if not isinstance(server, str) or not re.fullmatch(r"[0-9A-Fa-f:.]{2,45}", server):
                raise BundleError(f"the bundle's nameserver {server!r} is not an address")
            ipaddress.ip_address(server)


# The mesh resolver (the contract's RESOLVER_CONF, _PID): the controller renders its
# configuration, checked here line by line: an option with a plain value, or the header.
RESOLVER_LINE = re.compile(r"[a-z-]{1,20}(=[A-Za-z0-9._:/,=-]{1,300})?")


def check_resolver_conf(text: object) -> None:
    lines = text.splitlines() if isinstance(text, str) else []
    if not (lines and lines[0].startswith("# wgmesh: the mesh resolver")
            and all(RESOLVER_LINE.fullmatch(line) for line in lines[1:])
            and f"pid-file={RESOLVER_PID}" in lines):
        raise BundleError("the bundle's resolver configuration is malformed")


def check_bundle(b: dict) -> None:
    """Refuse (BundleError) a bundle of another format, with a malformed part, or whose
    content does not match its hash."""
    if b.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle format {b.get('format')!r} is not {BUNDLE_FORMAT}: update "
                         "wgmesh on the controller and on this host together")
    for key in ("interface", "hop_interface"):
        if not re.fullmatch(r"[a-zA-Z0-9_.=+-]{1,15}", str(b.get(key))):
            raise BundleError(f"invalid {key} {b.get(key)!r}")
    for key in ("wg_conf", "nftables", "hosts_block"):
        if not isinstance(b.get(key), str):
            raise BundleError(f"the bundle has no {key}")
    if b.get("sshd") is not None and not isinstance(b["sshd"], str):
        raise BundleError("the bundle's sshd rules are not text")
    if b.get("dns") is not None:
        if not isinstance(b["dns"], dict):
            raise BundleError("the bundle's split DNS is not a mapping")
        try:
            check_dns(b["dns"])
        except ValueError as exc:
            raise BundleError(f"the bundle's split DNS has a bad nameserver: {exc}") from exc
    if b.get("resolver_conf") is not None:
        check_resolver_conf(b["resolver_conf"])
    if b.get("agent") is not None:
        try:  # the agent's own check, whole
            check_bundle_part(b["agent"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BundleError(f"the bundle's agent part is malformed: {exc}") from exc
    if b.get("monitor") is not None and not valid_monitor_part(b["monitor"]):
        raise BundleError("the bundle's monitor part is malformed")
    # The bundle's hash covers its content: a bundle changed on the way is refused.
    if bundle_hash(b) != b.get("hash"):
        raise BundleError("the bundle's content does not match its hash")
