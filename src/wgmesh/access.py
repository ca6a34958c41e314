"""Who may reach what, in names: every rule of a compiled mesh read as source identity ->
destination -> protocol -> ports (and SSH logins), and which router carries each approved
route. ``wgmesh plan`` compares two of these; ``wgmesh graph`` draws one."""

from __future__ import annotations

from collections import defaultdict

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import PROTO_NAMES
from wgmesh.build import Build
from wgmesh.intervals import bits, merge_ranges, subtract
from wgmesh.policy import ICMP
from wgmesh.selectors import Kind

Ports = dict[str, list[tuple[int, int]]]  # protocol name -> port ranges (0-65535: all)


def principal(b: Build, i: int) -> str:
    """Who a node acts as in the policy: its tags when tagged, else its owner, else itself."""
    node = b.resolution.nodes[i]
    if node.tags:
        return ",".join(sorted(node.tags))
    return node.owner or f"node:{node.name}"


def _outside_pools(b: Build, ranges: dict[int, list]) -> bool:
    return any(subtract(ranges[f], b.resolution.pools[f]) for f in (4, 6))


def access(b: Build, rules_of: dict | None = None) -> dict[str, dict[str, Ports]]:
    """Source -> destination -> protocol -> port ranges, for every rule of the policy.
    Sources are identities (see ``principal``) and subnet selectors; destinations are node
    names and the policy's words for addresses outside the mesh (prefixes, host aliases, IP
    sets, autogroup:internet, "*"). ``rules_of``, if given, gets (source, destination) -> the
    indexes (in the compiler's rules) of the rules that grant something there."""
    res = b.resolution
    out: dict[str, dict[str, Ports]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    principals: dict[int, dict[str, int]] = {}  # source mask -> principal -> its nodes

    def by_principal(mask: int) -> dict[str, int]:
        if mask not in principals:
            got: dict[str, int] = defaultdict(int)
            for i in bits(mask):
                got[principal(b, i)] |= 1 << i
            principals[mask] = dict(got)
        return principals[mask]

    for k, rd in enumerate(res.rules):
        ports: list[tuple[str, int, int]] = []
        for (p, _p), (lo, hi) in rd.port_boxes:
            ports.append((PROTO_NAMES.get(p, str(p)), lo, hi))
        for p in rd.other_protos:
            ports.append(("icmp" if p in ICMP else PROTO_NAMES.get(p, f"proto {p}"), 0, 65535))
        srcs = dict(by_principal(rd.any_src))
        for sel in rd.rule.src:
            if sel.kind is Kind.DANGER_ALL:
                srcs[sel.text] = 0
            elif sel.kind is Kind.ALL and any(res.all_routes[f] for f in (4, 6)):
                srcs["* (routed subnets)"] = 0
            elif sel.kind in (Kind.PREFIX, Kind.IPSET) and _outside_pools(
                    b, res.addresses(sel)):
                srcs[sel.text] = 0
        dsts = [res.names[i] for i in bits(rd.any_dst)]
        for sel in rd.rule.dst:
            if sel.kind is Kind.ALL:
                dsts.append("*")
            elif sel.kind is Kind.INTERNET or (sel.kind in (Kind.PREFIX, Kind.IPSET)
                                               and _outside_pools(b, res.addresses(sel))):
                dsts.append(sel.text)
        for src, mask in srcs.items():
            mine = list(dsts)
            if rd.self_dst and mask:  # a principal's nodes share one owner: any one will do
                mine += [res.names[i] for i in bits(res.own_devices(bits(mask)[0]))]
            row = out[src]
            for dst in mine:
                cell = row[dst]
                for proto, lo, hi in ports:
                    cell[proto].append((lo, hi))
                if rules_of is not None:
                    rules_of.setdefault((src, dst), set()).add(k)
    result = {s: {d: {p: merge_ranges(r) for p, r in cell.items()} for d, cell in row.items()}
              for s, row in out.items()}
    if res.ssh_hosts:
        _ssh_port(b, result, principals)
    return result


def _ssh_port(b: Build, result: dict, principals: dict[int, dict[str, int]]) -> None:
    """Port 22 of an SSH-managed node needs an ssh rule too (as the filters and eval)."""
    res = b.resolution
    mask_of: dict[str, int] = defaultdict(int)
    for by in principals.values():
        for who, mask in by.items():
            mask_of[who] |= mask
    sources: dict[int, int] = {}
    for src, row in result.items():
        for dst, cell in row.items():
            h = res.index.get(dst)
            if h is None or not res.ssh_hosts >> h & 1 or "tcp" not in cell:
                continue
            if h not in sources:
                sources[h] = res.ssh_sources(h)
            if not mask_of.get(src, 0) & sources[h]:
                cell["tcp"] = subtract(cell["tcp"], [(res.SSH_PORT, res.SSH_PORT)])
                if not cell["tcp"]:
                    del cell["tcp"]
    for row in result.values():
        for dst in [d for d, cell in row.items() if not cell]:
            del row[dst]


def ssh_logins(b: Build) -> dict[str, dict[str, Ports]]:
    """Source -> SSH-managed node -> {"ssh": logins}, in the shape of ``access`` (a login is
    a "port" whose name is the login) so the same comparison states gains and losses."""
    res = b.resolution
    out: dict[str, dict[str, dict[str, set]]] = defaultdict(lambda: defaultdict(
        lambda: defaultdict(set)))
    for h in bits(res.ssh_hosts):
        for s in bits(res.ssh_sources(h)):
            logins, nonroot = res.ssh_logins(h, s)
            cell = out[principal(b, s)][res.names[h]]["ssh"]
            cell.update(logins)
            if nonroot:
                cell.add("any user but root")
    return {p: {d: {"ssh": sorted(c["ssh"])} for d, c in row.items()} for p, row in out.items()}


def port_text(proto: str, ranges: list[tuple[int, int]]) -> str:
    """Ports as a reader says them: a list, or "every port but ..." when that is shorter
    (a rule for every port less an ssh restriction is "tcp * but 22", not "0-21,23-65535")."""
    if ranges == [(0, 65535)]:
        return proto if proto in ("icmp",) or proto.startswith("proto ") else f"{proto} *"

    def listed(rs):
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in rs)

    missing = subtract([(0, 65535)], ranges)
    if missing == [(0, 0)]:  # port 0 is no port: "every port" is 1-65535
        return f"{proto} *"
    if len(missing) < len(ranges):
        return f"{proto} * but {listed(missing)}"
    return f"{proto} {listed(ranges)}"


def route_roles(b: Build) -> dict[tuple[str, str], str]:
    """(router, prefix) -> "primary" or "standby" for every approved route."""
    res = b.resolution
    out = {}
    for i, nets in res.approved.items():
        for net in nets:
            lo, hi = int(net.network_address), int(net.broadcast_address)
            carried = res.carried.get(i, {}).get(net.version, [])
            role = "primary" if any(a <= lo and hi <= z for a, z in carried) else (
                "partly primary" if any(a <= hi and lo <= z for a, z in carried) else "standby")
            out[(res.names[i], str(net))] = role
    return out
