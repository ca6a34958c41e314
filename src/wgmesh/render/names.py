"""Names: the managed block of /etc/hosts, split DNS, and the mesh resolver's configuration."""

from __future__ import annotations

import functools

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    RESOLVER_PID,
)
from wgmesh.compile.hostoutput import HostOutput
from wgmesh.render.common import clean


def hosts_block(host: HostOutput) -> str:
    """Lines for the managed block of /etc/hosts: the peers this host can see, and itself."""
    return "".join(map(_name_line, host.names))


@functools.lru_cache(maxsize=1 << 16)
def _name_line(entry: tuple[str, tuple[str, str]]) -> str:
    clean(entry[0], *entry[1])
    return f"{entry[0]}\t{' '.join(entry[1])}\n"


def split_dns_text(host: HostOutput) -> str | None:
    """The bundle's split DNS in words, for review: a domain and its nameservers a line."""
    dns = split_dns(host)
    if dns is None:
        return None
    return ("# wgmesh: split DNS: names under these domains are asked of these nameservers\n"
            + "".join(f"{d} {' '.join(dns[d])}\n" for d in sorted(dns)))


def split_dns(host: HostOutput) -> dict[str, list[str]] | None:
    if not host.dns:
        return None
    for domain, servers in host.dns.items():
        clean(domain, *servers)
    return host.dns


def resolver_conf(host: HostOutput) -> str | None:
    """The mesh resolver's dnsmasq configuration: it listens on the mesh addresses only
    (bind-dynamic: it may start before they exist), answers every node's name and nothing
    else under the mesh domain, asks the split domains' nameservers for those, and its
    host's own resolvers for the rest. Never a bare name upstream."""
    r = host.resolver
    if r is None:
        return None
    clean(host.name, r.domain, *r.addresses, *(v for rec in r.records for v in rec),
          *r.split, *(s for servers in r.split.values() for s in servers))
    lines = [f"# wgmesh: the mesh resolver on {host.name}. Generated; holds no secret.",
             *(f"listen-address={a}" for a in r.addresses), "bind-dynamic", "port=53",
             f"pid-file={RESOLVER_PID}", "no-hosts", "domain-needed",
             "resolv-file=/etc/resolv.conf", "cache-size=1000", f"local=/{r.domain}/",
             *(f"host-record={','.join(rec)}" for rec in r.records),
             *(f"server=/{d}/{s}" for d in sorted(r.split) for s in r.split[d])]
    return "\n".join(lines) + "\n"
