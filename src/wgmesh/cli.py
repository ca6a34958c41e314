"""The ``wgmesh`` command.

Exit codes: 0 ok; 1 the requested state could not be reached (lab failure, failing policy
test); 2 usage or input error (every problem is printed, one per line, file:line:col first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from wgmesh import render
from wgmesh.build import PolicyTestFailure, build, parse_query_endpoint, policy_test_failures
from wgmesh.compiler import fewer_gc_passes
from wgmesh.errors import InputError, LabError, escape
from wgmesh.policy import PROTOCOLS

DEFAULT_LAB = "inventories/lab"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except PolicyTestFailure as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except render.RenderError as exc:
        print(f"error: {escape(str(exc))}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wgmesh", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate mesh.yml and its policy, run the policy tests")
    _mesh_args(p)
    p.add_argument("--locked", action="store_true",
                   help="fail (exit 1) if mesh.lock.yml would change")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("test", help="run the policy's tests and show each result")
    _mesh_args(p)
    p.set_defaults(func=cmd_test)
    p = sub.add_parser("lock", help="allocate addresses for new nodes and write mesh.lock.yml")
    _mesh_args(p)
    p.set_defaults(func=cmd_lock)
    p = sub.add_parser("render", help="a host's (or every host's) wg config, ruleset, names")
    _mesh_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--host", metavar="NAME")
    which.add_argument("--all", action="store_true")
    p.add_argument("--out", metavar="DIR", type=Path,
                   help="with --all: write DIR/<host>/{wg.conf,nftables.nft,hosts} and plan.json")
    p.add_argument("--json", action="store_true", help="the JSON document instead of files")
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("eval", help="decide JSON-line queries read from stdin")
    _mesh_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("status", help="does every host run what the inputs say (runs "
                       "playbooks/status.yml; exit code 2 on drift)")
    p.add_argument("-i", "--inventory", default=DEFAULT_LAB, metavar="PATH",
                   help="inventory folder with mesh.yml (default: %(default)s)")
    p.add_argument("-l", "--limit", metavar="HOSTS", help="only these hosts (Ansible pattern)")
    p.set_defaults(func=cmd_status)

    lab = sub.add_parser("lab", help="the test lab: real hosts in namespaces on this machine")
    lab_sub = lab.add_subparsers(required=True, metavar="ACTION")
    for name, func, text in [
        ("up", cmd_lab_up, "create the lab (idempotent) and print its hosts"),
        ("down", cmd_lab_down, "remove every namespace, link, process and file of the lab"),
        ("status", cmd_lab_status, "show each node and whether it runs"),
    ]:
        p = lab_sub.add_parser(name, help=text)
        _topology_arg(p)
        p.set_defaults(func=func)
    p = lab_sub.add_parser("exec", help="run a command inside a lab node (host, router, fabric)")
    _topology_arg(p)
    p.add_argument("node")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command (default: a shell)")
    p.set_defaults(func=cmd_lab_exec)
    return parser


def _mesh_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--inventory", default=DEFAULT_LAB, metavar="PATH",
                   help="inventory directory or its mesh.yml (default: %(default)s)")
    p.add_argument("--policy", metavar="FILE", help="use this policy instead of mesh.yml's")
    p.add_argument("--today", metavar="YYYY-MM-DD", type=dt.date.fromisoformat,
                   help="the date node expiry is judged against (default: today, UTC)")


def _build(args, run_tests: bool = True):
    today = args.today or dt.datetime.now(dt.UTC).date()
    return build(args.inventory, args.policy, today=today, run_tests=run_tests)


def _warn(b) -> None:
    for w in b.compiler.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for n in b.compiler.expired:
        print(f"warning: node {n} has expired and is left out", file=sys.stderr)
    if b.lock.allocated:
        print(f"warning: {len(b.lock.allocated)} node(s) have no address in {b.lock.path} yet "
              f"({', '.join(b.lock.allocated[:5])}{', ...' if len(b.lock.allocated) > 5 else ''}"
              "): shown with the addresses `wgmesh lock` (or a site.yml run) would pin",
              file=sys.stderr)


def cmd_check(args) -> int:
    b = _build(args)
    with fewer_gc_passes():  # what only a host's compile finds (output limits) fails here too
        for name in b.compiler.names:
            b.compiler.host(name)
    _warn(b)
    if args.locked and b.lock.changed:
        print(f"error: {b.lock.path} is out of date (run: wgmesh lock)", file=sys.stderr)
        return 1
    print(f"ok: {len(b.compiler.names)} nodes, {len(b.policy.rules)} rules, "
          f"{len(b.policy.tests)} policy tests passed")
    return 0


def cmd_test(args) -> int:
    b = _build(args, run_tests=False)
    failures = policy_test_failures(b)
    failed = {p.path for p in failures}
    for t in b.policy.tests:
        print(f"{'FAIL' if t.origin in failed else 'ok  '} {t.origin} (line {t.line}) "
              f"src {t.src}")
    for p in failures:
        print(f"error: {p}", file=sys.stderr)
    print(f"{len(b.policy.tests) - len(failed)} passed, {len(failed)} failed")
    return 1 if failures else 0


def cmd_lock(args) -> int:
    b = _build(args, run_tests=False)
    print(f"{b.lock.path}: {'written' if b.lock.save() else 'unchanged'}")
    return 0


def cmd_render(args) -> int:
    """Hosts are compiled, rendered and written one at a time (plan.json too), so memory
    holds one host's output, not the mesh's. Read-only: the lockfile is never written."""
    b = _build(args)
    comp, net = b.compiler, b.mesh.network
    if args.host:
        if args.host not in comp.index:
            print(f'error: no node "{args.host}" in {b.mesh.path}', file=sys.stderr)
            return 2
        names = [args.host]
    else:
        names = [n for n in comp.names if b.mesh.nodes[n].managed]
    with fewer_gc_passes():
        hosts = map(comp.host, names)
        if args.json:
            render.write_plan(sys.stdout, hosts, net, comp.expired, lambda: comp.warnings)
        elif args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            with open(args.out / "plan.json", "w") as plan:
                render.write_plan(plan, map(_write_host_files(args.out, net), hosts), net,
                                  comp.expired, lambda: comp.warnings)
            print(f"wrote {len(names)} hosts to {args.out}")
        else:
            for h in hosts:
                for title, text in _host_files(h, net):
                    print(f"### {h.name}: {title}")
                    print(text)
    _warn(b)
    return 0


def _host_files(h, net) -> list[tuple[str, str]]:
    """(what, text) of every file a host receives, as `render` prints them."""
    files = [(f"/etc/wireguard/{net.interface}.conf", render.wg_quick(h, net)),
             ("nftables", render.nftables(h, net)),
             ("/etc/hosts block", render.hosts_block(h))]
    if h.hop:
        files.append((f"/etc/wireguard/{h.hop.interface}.conf", render.hop_conf(h, net)))
    return files


def _write_host_files(out: Path, net):
    """A function that writes one host's files under ``out`` and passes the host on."""
    def write(h):
        d = out / h.name
        d.mkdir(exist_ok=True)
        (d / f"{net.interface}.conf").write_text(render.wg_quick(h, net))
        (d / "nftables.nft").write_text(render.nftables(h, net))
        (d / "hosts").write_text(render.hosts_block(h))
        if h.hop:
            (d / f"{h.hop.interface}.conf").write_text(render.hop_conf(h, net))
        return h
    return write


def cmd_status(args) -> int:
    """The status play, from the project folder (the one with ansible.cfg and playbooks/,
    found upward from here): its report, and its exit code for CI and monitoring."""
    here = Path.cwd().resolve()
    project = next((d for d in (here, *here.parents)
                    if (d / "ansible.cfg").is_file() and (d / "playbooks/status.yml").is_file()),
                   None)
    if project is None:
        print("error: no wgmesh project (ansible.cfg and playbooks/status.yml) here or above",
              file=sys.stderr)
        return 2
    argv = [str(Path(sys.executable).parent / "ansible-playbook"),
            "-i", str(Path(args.inventory).resolve()), "playbooks/status.yml"]
    if args.limit:
        argv += ["--limit", args.limit]
    return subprocess.run(argv, cwd=project, check=False).returncode


def cmd_eval(args) -> int:
    b = _build(args)
    ev = b.evaluator
    bad = 0
    for lineno, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
            src = parse_query_endpoint(b, str(q["src"]))
            dst = parse_query_endpoint(b, str(q["dst"]))
            if src.addr.version != dst.addr.version:
                # A node name means its address of the other side's family.
                if q["src"] in b.compiler.index:
                    src = b.compiler.endpoint_of(q["src"], dst.addr.version)
                elif q["dst"] in b.compiler.index:
                    dst = b.compiler.endpoint_of(q["dst"], src.addr.version)
                else:
                    raise ValueError("src and dst are addresses of different families")
            proto_name = str(q.get("proto", "tcp")).lower()
            proto = PROTOCOLS[proto_name]
            if proto == 1 and src.addr.version == 6:
                proto = 58
            port = q.get("port")
            if proto in (6, 17, 132) and not isinstance(port, int):
                raise ValueError(f"{proto_name} needs a port number")
            verdict = ev.check(src, dst, proto, port)
            out = {**q, "allow": verdict.allow, "rule": verdict.rule}
            if verdict.rule:
                out["line"] = verdict.line
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            bad += 1
            out = {"error": f"line {lineno}: {exc}", "input": line.strip()}
        print(json.dumps(out), flush=True)
    return 2 if bad else 0


def _topology_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--inventory", default=DEFAULT_LAB, metavar="PATH",
                   help="lab inventory directory or its topology.yml (default: %(default)s)")


def _lab(args):
    from wgmesh.lab.runtime import Lab  # only the lab commands need it
    from wgmesh.lab.topology import load_topology

    return Lab(load_topology(args.inventory))


def cmd_lab_up(args) -> int:
    lab = _lab(args)
    start = time.monotonic()
    lab.up()
    print(f"lab {lab.topo.name} up in {time.monotonic() - start:.2f} s")
    _print_status(lab)
    return 0


def cmd_lab_down(args) -> int:
    lab = _lab(args)
    start = time.monotonic()
    lab.down()
    print(f"lab {lab.topo.name} down in {time.monotonic() - start:.2f} s")
    return 0


def cmd_lab_status(args) -> int:
    lab = _lab(args)
    rows = _print_status(lab)
    return 0 if all(r.state.startswith("up") for r in rows) else 1


def _print_status(lab):
    rows = lab.status()
    width = max(len(r.name) for r in rows)
    for r in rows:
        print(f"  {r.name:<{width}}  {r.kind:<28} {r.address:<32} {r.state}")
    return rows


def cmd_lab_exec(args) -> int:
    lab = _lab(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = lab.exec_argv(args.node, command or ["/bin/bash", "-l"])
    os.execvp(argv[0], argv)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
