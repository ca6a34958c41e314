"""A plan (``wgmesh plan``) as JSON and as the Markdown a forge shows on a pull request."""

from __future__ import annotations

from wgmesh.plan import Plan


def to_json(plan: Plan) -> dict:
    return {
        "base": plan.base, "head": plan.head, "exit_code": plan.exit_code,
        "widened": plan.widened, "changed": plan.changed,
        "nodes": {"joined": plan.joined, "left": plan.left, "expired": plan.expired,
                  "key_changed": plan.keys},
        "identities": plan.identities, "names": plan.names, "ssh_policy": plan.ssh_policy,
        "settings": plan.settings,
        "access": [{"source": c.source, "change": c.kind, "destinations": c.destinations,
                    "ports": {p: [list(r) for r in rs] for p, rs in c.ranges.items()},
                    "logins": c.logins, "ports_text": c.ports, "rules": c.rules}
                   for c in plan.access],
        "peers": plan.peers, "routes": plan.routes, "exit_nodes": plan.exit_nodes,
        "tests": plan.tests, "warnings": plan.warnings, "groups": plan.groups,
        "signing": plan.signing,
    }


def _md(text: str) -> str:
    """A value from the inputs, as a code span: a forge renders it as it is, with no link,
    image, HTML or @-mention (none is made inside code), and a table cell does not end at
    its pipes. Defence in depth: names are grammar-checked before they get here."""
    text = " ".join(text.split()).replace("`", "'").replace("|", "\\|")
    return f"`{text}`" if text else "(none)"


def _mds(names) -> str:
    return ", ".join(map(_md, names))


def _signing_md(s: dict) -> list[str]:
    lines = ["#### Signatures"]
    if s["threshold"] is None:
        lines.append("- **signing is switched off** (hosts that hold a trust file refuse "
                     "unsigned bundles)")
    elif s["threshold_from"] != s["threshold"]:
        lines.append(f"- threshold {s['threshold_from']} -> {s['threshold']}")
    if s["admins_added"]:
        lines.append(f"- admins added (or with a new key): {_mds(s['admins_added'])}")
    if s["admins_removed"]:
        lines.append(f"- admins removed: {_mds(s['admins_removed'])}")
    m = s["manifest"]
    if s["threshold"] is not None and m is None:
        lines.append("- no manifest yet: `wgmesh manifest create`, then the admins sign")
    elif m is not None:
        covers = ("states these inputs" if m["states_inputs"] else
                  "**does not state these inputs** (`wgmesh manifest create` again)")
        verdict = (f"hosts refuse it: {_md(m['refused'])}" if m["refused"] else
                   f"signed by {_mds(m['signatures'])} (threshold {s['threshold']})")
        lines.append(f"- manifest serial {m['serial']} {covers}; {verdict}")
    lines.append("")
    return lines


def _before_after(c: dict) -> str:
    """A setting's line: what, from, to (none for no value, true/false as YAML says them)."""
    def text(v):
        return "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    return f"- {_md(c['what'])}: {_md(text(c['from']))} -> {_md(text(c['to']))}"


def to_markdown(plan: Plan, limit: int = 200) -> str:
    lines = [f"### wgmesh plan: {_md(plan.base)} -> {_md(plan.head)}", ""]
    if not plan.changed:
        lines += ["No change: every host keeps its peers, routes and filters.", ""]
        if plan.signing:
            lines += _signing_md(plan.signing)
        return "\n".join(lines) + "\n"
    gains = sum(c.kind == "gains" for c in plan.access)
    loses = len(plan.access) - gains
    verdict = ("**Access widens**: a second review is advised." if plan.widened
               else "Access does not widen.")
    lines += [f"{verdict} {gains} grant(s) gained, {loses} lost; "
              f"{len(plan.peers)} host(s) change peers.", ""]
    if plan.joined or plan.left or plan.expired or plan.keys:
        lines.append("#### Nodes")
        for label, names in (("join", plan.joined), ("leave", plan.left),
                             ("expire", plan.expired), ("change key", plan.keys)):
            if names:
                lines.append(f"- {label}: {_mds(names)}")
        lines.append("")
    if plan.identities:
        lines.append("#### Who the machines are")
        for i in plan.identities:
            was = f" (was {_md(i['was'])})" if i["was"] else ""
            reach = ("; reaches " + ", ".join(map(_md, i["reaches"][:limit])) if i["reaches"]
                     else "; reaches nothing")
            if i["reached_by"]:
                reach += "; reached by " + _mds(i["reached_by"][:limit])
            flag = " **(widens)**" if i["widens"] else ""
            lines.append(f"- {_md(i['node'])} {i['change']}: acts as {_md(i['as'])}{was}"
                         f"{reach}{flag}")
        lines.append("")
    if plan.names:
        lines.append("#### Names **(widens: where names resolve decides where traffic goes)**")
        lines += [_before_after(c) for c in plan.names]
        lines.append("")
    if plan.ssh_policy:
        lines.append("#### SSH over the mesh")
        for c in plan.ssh_policy:
            lines.append(f"- {_md(c['node'])}: " + (
                "the ssh rules now decide who logs in, and as whom" if c["ssh_policy"] == "on"
                else "**the ssh rules no longer apply (widens)**: port 22 follows the network "
                "rules, and sshd lets in whoever its own keys let in"))
        lines.append("")
    if plan.settings:
        lines.append("#### Settings (every host's bundle; access unchanged)")
        lines += [_before_after(c) + f" ({c['means']})" for c in plan.settings]
        lines.append("")
    if plan.access:
        lines += ["#### Access", "", "| source | | destinations | ports | rules |",
                  "|---|---|---|---|---|"]
        for c in plan.access[:limit]:
            sign = "gains" if c.kind == "gains" else "loses"
            who = c.source + (f" ({', '.join(plan.groups[c.source])})"
                              if plan.groups.get(c.source) else "")
            lines.append(f"| {_md(who)} | {sign} | {_md(', '.join(c.destinations))} | "
                         f"{_md('; '.join(c.ports))} | {_mds(c.rules)} |")
        if len(plan.access) > limit:
            lines.append(f"| ... | | {len(plan.access) - limit} more in the JSON plan | | |")
        lines.append("")
    if plan.routes or plan.exit_nodes:
        lines.append("#### Routes and exit nodes")
        for r in plan.routes:
            lines.append(f"- {_md(r['prefix'])} via {_md(r['router'])}: {_md(r['change'])} "
                         f"({_md(r['role'])})")
        for e in plan.exit_nodes:
            if e["change"] == "uses":
                lines.append(f"- {_md(e['node'])} sends internet traffic through "
                             f"{_md(e['to'] or 'no exit node')} (was {_md(e['from'] or 'none')})")
            else:
                lines.append(f"- exit node {_md(e['node'])}: {_md(e['change'])}")
        lines.append("")
    if plan.peers:
        lines += ["#### Peers", "", "| host | gains | loses |", "|---|---|---|"]
        for host, d in list(plan.peers.items())[:limit]:
            lines.append(f"| {_md(host)} | {_md(', '.join(d['gains']))} | "
                         f"{_md(', '.join(d['loses']))} |")
        if len(plan.peers) > limit:
            lines.append(f"| ... {len(plan.peers) - limit} more in the JSON plan | | |")
        lines.append("")
    if plan.tests:
        lines.append("#### Policy tests")
        for t in plan.tests:
            lines.append(f"- {_md(t['test'])}: {_md(t['before'])} -> {_md(t['after'])}")
        lines.append("")
    if plan.signing:
        lines += _signing_md(plan.signing)
    if plan.warnings:
        lines.append("#### New warnings")
        lines += [f"- {_md(w)}" for w in plan.warnings]
        lines.append("")
    return "\n".join(lines)

