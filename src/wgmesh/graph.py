"""Pictures of a mesh: who is connected how, and who may reach what.

``wgmesh graph`` draws from the compiled mesh, so the picture is what the hosts run: nodes
grouped by site (nodes with no site: "internet" when they have an endpoint, "behind NAT"
otherwise), each pair that has a peer entry drawn by its connection type (LAN, direct,
relay, with the relay named), relays, subnet routers with their approved routes, exit nodes
and who uses them. The HTML page adds the policy's view: which sources (users with their
groups, tags, subnets) may reach which destinations (tags, users' devices, addresses) on which
ports, a table of the nodes with their peers, and a search box. Everything is inline (one
small script for the search; nothing from the network); the SVG elements carry ``data-``
attributes naming what they draw. Past what a ring holds at full size, the picture shows
groups (sites or tags) and the pairs between them.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass, field

from wgmesh.access import access, port_text, principal, route_roles
from wgmesh.build import Build
from wgmesh.intervals import merge_ranges

# A pair the agents moved from its relay to a direct path is drawn as direct (``--live``).
COLORS = {"lan": "#2e7d32", "direct": "#1565c0", "punched": "#1565c0", "relay": "#ef6c00"}
NODE_W, NODE_H, GAP, PAD, HEAD = 190, 54, 16, 18, 30
# Boxes a ring holds at full size in a 1400 px window (a slot per box, one per gap between
# sites): past that, the picture shows groups (sites or tags) and the pairs between them.
RING_SLOTS = 15


@dataclass
class GNode:
    name: str
    group: str
    label: str  # owner or tags
    roles: list[str]
    x: float = 0
    y: float = 0


@dataclass
class Graph:
    nodes: dict[str, GNode]
    groups: dict[str, list[str]]  # group -> node names, in order
    pairs: dict[tuple[str, str], tuple[str, str | None]]  # (a, b) -> connection, relay
    exits: dict[str, list[str]] = field(default_factory=dict)  # exit node -> users
    # A picture of groups: (group, group) -> connection -> pairs between (or inside) them.
    links: dict[tuple[str, str], dict[str, int]] | None = None

    def fits(self) -> bool:
        return len(self.nodes) + len(self.groups) <= RING_SLOTS


def overview(g: Graph) -> Graph:
    """The groups as boxes (their sizes, roles and the pairs inside them) and one line per
    pair of groups with pairs between them, counted by connection type. Past the ring's
    slots, the smallest groups become one "other groups" box."""
    # A group named as its one node (a neighbourhood's centre) first, then by size.
    names = sorted(g.groups, key=lambda x: (g.groups[x] != [x], -len(g.groups[x]), x))
    keep = names if len(names) < RING_SLOTS else names[:RING_SLOTS - 2]
    other = f"other groups ({len(names) - len(keep)})" if len(keep) < len(names) else None
    where = {n: (grp if grp in keep else other) for grp in names for n in g.groups[grp]}
    links: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (a, b), (how, _) in g.pairs.items():
        ga, gb = sorted((where[a], where[b]))
        links[(ga, gb)][how] += 1
    boxes = {}
    for grp in [*keep, *([other] if other else [])]:
        members = [n for n in g.nodes if where[n] == grp]
        roles: dict[str, int] = defaultdict(int)
        for n in members:
            for r in g.nodes[n].roles:
                roles["router" if r.startswith("router") else r] += 1
        inside = sum(links.get((grp, grp), {}).values())
        if members == [grp]:  # a node of its own (a neighbourhood's centre): as itself
            one = g.nodes[members[0]]
            boxes[grp] = GNode(grp, "", one.label, one.roles)
            continue
        boxes[grp] = GNode(grp, "", f"{len(members)} node{'s' * (len(members) != 1)}, "
                                    f"{inside} pairs inside",
                           [f"{k} {r}" for r, k in sorted(roles.items())])
    return Graph(boxes, {"": list(boxes)},
                 {k: (max(v, key=v.get), None) for k, v in links.items() if k[0] != k[1]},
                 g.exits, {k: dict(v) for k, v in links.items()})


def neighbourhood(g: Graph, name: str) -> Graph:
    """One node and its peers, with the lines from it: who it talks to, and how."""
    if name not in g.nodes:
        raise KeyError(name)
    pairs = {k: v for k, v in g.pairs.items() if name in k}
    keep = {x for k in pairs for x in k} - {name}
    groups = {grp: [n for n in ms if n in keep] for grp, ms in g.groups.items()}
    # The node first, in a group of its own: a picture of groups shows it as itself.
    return Graph({n: g.nodes[n] for n in g.nodes if n in keep or n == name},
                 {name: [name], **{grp: ms for grp, ms in groups.items() if ms}}, pairs,
                 {e: u for e, u in g.exits.items() if e in keep or e == name})


def picture(g: Graph) -> str:
    """The nodes on a ring when they fit at full size, else the groups."""
    return svg(g) if g.fits() else svg(overview(g))


def collect(b: Build, live: dict[str, dict] | None = None, group_by: str = "site") -> Graph:
    """The mesh's nodes and pairs; ``live`` (node -> its agent's agent.json) marks the
    relayed pairs that run direct now as ``punched``. Nodes are grouped by site (no site:
    "internet" or "behind NAT") or by tag (untagged: the owner's first policy group, else
    "users")."""
    first_group = {}
    for group, members in sorted(b.policy.groups.items()):
        for user in members:
            first_group.setdefault(user, group)
    res = b.resolution
    routes = defaultdict(list)
    for (router, prefix), role in sorted(route_roles(b).items()):
        routes[router].append(prefix + ("" if role == "primary" else f" ({role})"))
    exits = {res.names[i] for i in res.exits}
    users = defaultdict(list)
    nodes: dict[str, GNode] = {}
    groups: dict[str, list[str]] = defaultdict(list)
    for name, node in zip(res.names, res.nodes, strict=True):
        if group_by == "tag":
            group = node.tags[0] if node.tags else first_group.get(node.owner or "", "users")
        else:
            group = node.site or ("internet" if node.endpoint else "behind NAT")
        roles = []
        if node.relay:
            roles.append("relay")
        if node.lighthouse:
            roles.append("lighthouse")
        if name in routes:
            roles.append("router " + ", ".join(routes[name]))
        if name in exits:
            roles.append("exit node")
        if not node.managed:
            roles.append("device")
        if node.use_exit_node:
            users[node.use_exit_node].append(name)
        label = ", ".join(node.tags) if node.tags else (node.owner or "no owner")
        nodes[name] = GNode(name, group, label, roles)
        groups[group].append(name)
    pairs: dict[tuple[str, str], tuple[str, str | None]] = {}
    for name, host in b.hosts(filters=False):
        for p in host.peers:
            key = (min(name, p.name), max(name, p.name))
            if key not in pairs or (pairs[key][0] == "direct" and p.connection != "direct"):
                pairs[key] = (p.connection, p.relay)
    for (a, c), (how, relay) in list(pairs.items()):
        if how == "relay" and any(
                ((live or {}).get(x) or {}).get("peers", {}).get(y, {}).get("path")
                == "direct (punched)" for x, y in ((a, c), (c, a))):
            pairs[(a, c)] = ("punched", relay)
    order = sorted(groups, key=lambda g: (g in ("internet", "behind NAT"), g))
    return Graph(nodes, {g: groups[g] for g in order}, pairs,
                 {e: sorted(users.get(e, [])) for e in sorted(exits)})


def _layout(g: Graph) -> tuple[float, float, float, dict[str, tuple[float, float]]]:
    """Nodes on a ring, each site's nodes side by side with an empty slot between sites, so
    that every pair is a chord through the middle and no line crosses a node. Returns the
    drawing's size, the ring's radius and each group's (first, last) angle."""
    slots = len(g.nodes) + len(g.groups)
    # Neighbours on the ring are one chord apart: at least a box's width plus a gap.
    radius = max(230.0, (NODE_W + GAP) / (2 * math.sin(math.pi / max(slots, 3))))
    margin = NODE_W / 2 + PAD + 40
    cx = radius + margin
    # Sites' bands and names go round the ring; a picture of groups has none.
    cy = radius + (margin if any(g.groups) else NODE_H / 2 + PAD)
    spans = {}
    slot = 0
    for group, members in g.groups.items():
        first = None
        for name in members:
            angle = -math.pi / 2 + 2 * math.pi * slot / slots
            first = angle if first is None else first
            n = g.nodes[name]
            n.x = cx + radius * math.cos(angle) - NODE_W / 2
            n.y = cy + radius * math.sin(angle) - NODE_H / 2
            slot += 1
        spans[group] = (first, -math.pi / 2 + 2 * math.pi * (slot - 1) / slots)
        slot += 1  # the gap between sites
    return 2 * cx, 2 * cy + 40, radius, spans


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def svg(g: Graph) -> str:
    width, height, radius, spans = _layout(g)
    cx, cy = width / 2, (height - 40) / 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
           f'width="{width:.0f}" height="{height:.0f}" font-family="sans-serif" '
           'font-size="12" data-wgmesh="mesh">']
    # Each site: a band outside the ring along its nodes, and its name beyond it.
    band = radius + NODE_H / 2 + 14
    for group, (a0, a1) in spans.items():
        if not group:  # a picture of groups: no band
            continue
        a0, a1 = a0 - 0.12, a1 + 0.12
        large = 1 if a1 - a0 > math.pi else 0
        x0, y0 = cx + band * math.cos(a0), cy + band * math.sin(a0)
        x1, y1 = cx + band * math.cos(a1), cy + band * math.sin(a1)
        mid = (a0 + a1) / 2
        lx, ly = cx + (band + 22) * math.cos(mid), cy + (band + 22) * math.sin(mid)
        anchor = "start" if math.cos(mid) > 0.3 else "end" if math.cos(mid) < -0.3 \
            else "middle"
        out.append(f'<g data-group="{_esc(group)}"><path d="M{x0:.1f},{y0:.1f} A{band:.1f},'
                   f'{band:.1f} 0 {large} 1 {x1:.1f},{y1:.1f}" fill="none" stroke="#bdbdbd" '
                   f'stroke-width="8" stroke-linecap="round"/><text x="{lx:.1f}" '
                   f'y="{ly + 4:.1f}" text-anchor="{anchor}" font-weight="bold" '
                   f'fill="#616161">{_esc(group)}</text></g>')

    def center(name: str) -> tuple[float, float]:
        n = g.nodes[name]
        return n.x + NODE_W / 2, n.y + NODE_H / 2

    for (a, b), (how, relay) in sorted(g.pairs.items()):
        (x1, y1), (x2, y2) = center(a), center(b)
        # A chord bent towards the middle of the ring: pairs of one site bend less.
        kx, ky = (x1 + x2) / 2 * 0.45 + cx * 0.55, (y1 + y2) / 2 * 0.45 + cy * 0.55
        dash = ' stroke-dasharray="6 4"' if how == "relay" else ""
        if g.links is not None:  # groups: one line, as thick as it has pairs
            counts = g.links[(a, b)]
            total = sum(counts.values())
            title = f"{a} - {b}: {total} pairs (" + ", ".join(
                f"{k} {v}" for k, v in sorted(counts.items())) + ")"
            out.append(f'<path d="M{x1:.1f},{y1:.1f} Q{kx:.1f},{ky:.1f} {x2:.1f},{y2:.1f}" '
                       f'fill="none" stroke="{COLORS.get(how, "#000")}" '
                       f'stroke-width="{1.5 + 2.5 * math.log10(total):.1f}" opacity="0.7"'
                       f'{dash} data-link="{_esc(a)} | {_esc(b)}" data-pairs="{total}" '
                       f'data-connection="{how}"><title>{_esc(title)}</title></path>')
            continue
        title = f"{a} - {b}: " + (f"direct (punched; relay {relay} if it fails)"
                                   if how == "punched" else how
                                   + (f" via {relay}" if relay else ""))
        out.append(f'<path d="M{x1:.1f},{y1:.1f} Q{kx:.1f},{ky:.1f} {x2:.1f},{y2:.1f}" '
                   f'fill="none" stroke="{COLORS.get(how, "#000")}" stroke-width="1.8" '
                   f'opacity="0.8"{dash} data-pair="{_esc(a)} {_esc(b)}" '
                   f'data-connection="{how}"'
                   + (f' data-relay="{_esc(relay)}"' if relay else "")
                   + f"><title>{_esc(title)}</title></path>")
    for name, n in g.nodes.items():
        fill = "#fff3e0" if "relay" in n.roles else "#e3f2fd" if any(
            r.startswith("router") or r == "exit node" for r in n.roles) else "#ffffff"
        roles = "; ".join(n.roles)
        kind = "data-group-box" if g.links is not None else "data-node"
        out.append(f'<g {kind}="{_esc(name)}" data-roles="{_esc(roles)}">'
                   f'<rect x="{n.x:.1f}" y="{n.y:.1f}" width="{NODE_W}" height="{NODE_H}" '
                   f'rx="6" fill="{fill}" stroke="#424242"/>'
                   f'<text x="{n.x + 8:.1f}" y="{n.y + 17:.1f}" font-weight="bold">'
                   f'{_esc(_short(name, 26))}</text>'
                   f'<text x="{n.x + 8:.1f}" y="{n.y + 32:.1f}" fill="#555">{_esc(n.label)}'
                   f'</text><text x="{n.x + 8:.1f}" y="{n.y + 47:.1f}" fill="#b71c1c" '
                   f'font-size="11">{_esc(_short(roles))}</text><title>{_esc(name)}: '
                   f'{_esc(n.label)}{"; " + _esc(roles) if roles else ""}</title></g>')
    y = height - 24
    x = PAD
    for how, color in COLORS.items():
        dash = ' stroke-dasharray="6 4"' if how == "relay" else ""
        out.append(f'<g data-legend="{how}"><line x1="{x}" y1="{y}" x2="{x + 30}" y2="{y}" '
                   f'stroke="{color}" stroke-width="2"{dash}/><text x="{x + 36}" y="{y + 4}">'
                   f"{how}</text></g>")
        x += 100
    for exit_node, users in g.exits.items():
        shown = ", ".join(users[:3]) + (f" and {len(users) - 3} more" if len(users) > 3 else "")
        out.append(f'<text x="{x}" y="{y + 4}" data-exit="{_esc(exit_node)}">exit node '
                   f'{_esc(exit_node)}: used by {_esc(shown or "nobody")}</text>')
        x += 260
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _short(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dot(g: Graph) -> str:
    """Graphviz: clusters per site, edges styled by connection type."""
    out = ["graph wgmesh {", '  graph [rankdir=LR, fontname="sans-serif"];',
           '  node [shape=box, style="rounded", fontname="sans-serif"];']
    for i, (group, members) in enumerate(g.groups.items()):
        out.append(f'  subgraph cluster_{i} {{ label="{group}";')
        for name in members:
            n = g.nodes[name]
            extra = "\\n" + "\\n".join(n.roles) if n.roles else ""
            out.append(f'    "{name}" [label="{name}\\n{n.label}{extra}"];')
        out.append("  }")
    for (a, b), (how, relay) in sorted(g.pairs.items()):
        style = "dashed" if how == "relay" else "solid"
        label = "punched" if how == "punched" else f"relay {relay}" if relay else how
        out.append(f'  "{a}" -- "{b}" [color="{COLORS.get(how, "black")}", style={style}, '
                   f'label="{label}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def policy_matrix(b: Build) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    """Rows (sources), columns (destinations by tag, owner or address) and the ports in
    each cell, from the same resolved rules as the filters. Users of one policy group whose
    rows (or columns) are the same are one row (column): the group's."""
    res = b.resolution
    as_principal = {name: principal(b, i) for i, name in enumerate(res.names)}
    cells: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for src, row in access(b).items():
        for dst, ports in row.items():
            col = as_principal.get(dst, dst)
            for proto, ranges in ports.items():
                cells[(src, col)][proto] += ranges
    text = {k: "; ".join(port_text(p, merge_ranges(r)) for p, r in sorted(v.items()))
            for k, v in cells.items()}
    text = _collapse(text, b.policy.groups, 0)
    text = _collapse(text, b.policy.groups, 1)
    rows = sorted({s for s, _ in text}, key=lambda s: (s.startswith("tag:"), s))
    cols = sorted({d for _, d in text}, key=lambda d: (not d.startswith("tag:"), d))
    return rows, cols, text


def _collapse(text: dict[tuple[str, str], str], groups: dict, side: int
              ) -> dict[tuple[str, str], str]:
    """Users (rows when ``side`` is 0, columns when 1) that a policy group holds and that
    have the same cells become the group, the largest group first."""
    lines: dict[str, dict[str, str]] = defaultdict(dict)
    for key, value in text.items():
        lines[key[side]][key[1 - side]] = value
    merged: dict[str, str] = {}
    for group, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        users = [u for u in members if u in lines and u not in merged]
        if len(users) > 1 and all(lines[u] == lines[users[0]] for u in users):
            merged.update({u: group for u in users})
    if not merged:
        return text
    out = {}
    for key, value in text.items():
        key = list(key)
        key[side] = merged.get(key[side], key[side])
        out[tuple(key)] = value
    return out


def nodes_table(g: Graph) -> str:
    """A row per node: its group, identity, roles and peers by connection type, with the
    peers themselves (the node's neighbourhood) one click away."""
    peers: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (a, c), (how, _) in sorted(g.pairs.items()):
        peers[a].append((c, how))
        peers[c].append((a, how))
    group_of = {n: grp for grp, ms in g.groups.items() for n in ms}
    rows = []
    for name, n in sorted(g.nodes.items()):
        counts: dict[str, int] = defaultdict(int)
        for _, how in peers[name]:
            counts[how] += 1
        listed = ", ".join(f'<a href="#node-{_esc(p)}">{_esc(p)}</a> ({how})'
                           for p, how in peers[name])
        find = " ".join((name, group_of.get(name, ""), n.label, *n.roles)).lower()
        rows.append(
            f'<tr id="node-{_esc(name)}" data-find="{_esc(find)}"><th>{_esc(name)}</th>'
            f"<td>{_esc(group_of.get(name, ''))}</td><td>{_esc(n.label)}</td>"
            f"<td>{_esc('; '.join(n.roles))}</td><td>"
            + (f"<details><summary>{len(peers[name])}: "
               + _esc(", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
               + f"</summary>{listed}</details>" if peers[name] else "0")
            + "</td></tr>")
    return ('<table data-wgmesh="nodes"><thead><tr><th>node</th><th>group</th>'
            "<th>owner or tags</th><th>roles</th><th>peers</th></tr></thead><tbody>\n"
            + "\n".join(rows) + "\n</tbody></table>")


# Search: rows and cells whose text holds what is typed stay; the page reads the same without.
SEARCH = """<p><input type="search" id="find" hidden placeholder="find a node, user, group or tag"
 size="40"></p>
<script>
{
  const find = document.getElementById('find');
  find.hidden = false;
  find.addEventListener('input', () => {
    const q = find.value.trim().toLowerCase();
    for (const el of document.querySelectorAll('[data-find]'))
      el.hidden = q !== '' && !el.dataset.find.includes(q);
  });
}
</script>"""


def page(b: Build, live: dict[str, dict] | None = None, group_by: str = "site",
         node: str | None = None) -> str:
    g = collect(b, live, group_by)
    if node is not None:
        g = neighbourhood(g, node)
    rows, cols, cells = policy_matrix(b)
    groups_of = defaultdict(list)
    for group, members in sorted(b.policy.groups.items()):
        for user in members:
            groups_of[user].append(group)
    head = "".join(f"<th data-col=\"{_esc(c)}\">{_esc(c)}</th>" for c in cols)
    body = []
    for r in rows:
        if r.startswith("group:"):
            label = f"{r} ({len(b.policy.groups.get(r, ()))} users)"
        else:
            label = r + (f" ({', '.join(groups_of[r])})" if groups_of.get(r) else "")
        tds = "".join(f'<td data-cell="{_esc(r)} -> {_esc(c)}">{_esc(cells.get((r, c), ""))}'
                      "</td>" for c in cols)
        body.append(f'<tr data-find="{_esc(label.lower())}"><th data-row="{_esc(r)}">'
                    f"{_esc(label)}</th>{tds}</tr>")
    title = f"wgmesh: {b.mesh.path}" + (f", around {node}" if node else "")
    drawn = ("Each node, and each pair with a peer entry" if g.fits() else
             f"{len(g.groups)} groups by {group_by} (too many nodes for one picture at full "
             "size): each line is the pairs between two groups, as thick as they are many; "
             "the table below lists every node and its peers")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #212121; }}
table {{ border-collapse: collapse; margin-top: 8px; }}
th, td {{ border: 1px solid #bdbdbd; padding: 4px 8px; font-size: 13px; text-align: left;
  vertical-align: top; }}
thead th {{ background: #eeeeee; position: sticky; top: 0; }}
tbody th {{ background: #fafafa; position: sticky; left: 0; }}
td:empty {{ background: #fafafa; }}
.scroll {{ max-width: 100%; max-height: 80vh; overflow: auto; }}
details {{ max-width: 60em; }}
</style></head>
<body>
<h1>{_esc(title)}</h1>
{SEARCH}
<h2>Mesh</h2>
<p>{len(g.nodes)} nodes, {len(g.pairs)} peer pairs. {drawn}. Hover a box or a line for
details.</p>
{picture(g)}
<h2>Nodes</h2>
<div class="scroll">{nodes_table(g)}</div>
<h2>Who may reach what</h2>
<p>Sources (users with their groups, or a group whose users may reach the same, tags,
subnets) and the destinations they may open connections to, with ports; pings follow any of
these. Read from the same rules as the filters.</p>
<div class="scroll"><table data-wgmesh="policy"><thead><tr><th>source \\ destination</th>{head}
</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table></div>
</body></html>
"""
