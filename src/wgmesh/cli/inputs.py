"""Commands on the inputs (mesh.yml, the policy, the lockfile): init, check, test, lock,
render, plan, graph, eval, why."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from wgmesh import grammar, render, why
from wgmesh.build import build, source_commit
from wgmesh.cli.common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_UNREACHED,
    build_from_args,
    compile_warnings,
    mesh_args,
    project_folder,
    unsigned_warnings,
    warn,
    warn_unsigned,
)
from wgmesh.errors import InputError, Problem
from wgmesh.policytests import PolicyTestFailure, policy_test_failures
from wgmesh.queries import known_users, query_endpoints, unknown_user_hint


def register(sub) -> None:
    """The parsers of the commands on the inputs."""
    p = sub.add_parser("init", help="write a repository for your own mesh: ansible.cfg, "
                       "site.yml, inventories/prod (mesh.yml, group_vars), a policy, CI files")
    p.add_argument("dir", type=Path, help="a new (or empty) folder")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("check", help="validate mesh.yml and its policy, run the policy tests")
    mesh_args(p)
    p.add_argument("--locked", action="store_true",
                   help="fail (exit 1) if mesh.lock.yml would change")
    p.add_argument("--json", action="store_true",
                   help="one JSON report on stdout (errors, test failures, warnings), for "
                   "tools; the exit code is the same")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("test", help="run the policy's tests and show each result")
    mesh_args(p)
    p.set_defaults(func=cmd_test)
    p = sub.add_parser("lock", help="allocate addresses for new nodes and write mesh.lock.yml")
    mesh_args(p)
    p.set_defaults(func=cmd_lock)
    p = sub.add_parser("render", help="a host's (or every host's) wg config, ruleset, names")
    mesh_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--host", metavar="NAME")
    which.add_argument("--all", action="store_true")
    p.add_argument("--out", metavar="DIR", type=Path,
                   help="with --all: write every file of each host's bundle to DIR/<host>/ "
                   "(wg-quick files, nftables.nft, hosts, sysctl, sshd, split-dns, "
                   "resolver.conf) "
                   "and plan.json")
    p.add_argument("--json", action="store_true", help="the JSON document instead of files")
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("plan", help="what a change means, in names: BASE (a git ref or a "
                       "directory) against the working tree; exit 0 no change, 3 changed, "
                       "4 access widened")
    mesh_args(p)
    p.add_argument("--base", required=True, metavar="REF|DIR",
                   help="the state to compare with: a git ref (origin/main, HEAD~1) or a "
                   "directory holding the same project (or the inventory itself)")
    p.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    p.add_argument("--out", metavar="FILE", type=Path, help="write the plan here too")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("graph", help="a picture of the mesh and of who may reach what: a "
                       "self-contained HTML page, or SVG or Graphviz dot")
    mesh_args(p)
    p.add_argument("--format", choices=("html", "svg", "dot"), default="html")
    p.add_argument("--out", metavar="FILE", type=Path, help="write here instead of stdout")
    p.add_argument("--live", metavar="DIR", type=Path,
                   help="the hosts' agent states (NODE.json, as playbooks/status.yml -e "
                   "wgmesh_live_dir=DIR writes them): pairs that run direct now are drawn so")
    p.add_argument("--group-by", choices=("site", "tag"), default="site",
                   help="group nodes by site (no site: internet or behind NAT) or by tag "
                   "(untagged: the owner's first group); past 15 boxes the picture shows "
                   "the groups")
    p.add_argument("--node", metavar="NAME", help="draw one node's neighbourhood: it, its "
                   "peers and how it reaches each")
    p.set_defaults(func=cmd_graph)
    p = sub.add_parser("eval", help="decide JSON-line queries read from stdin")
    mesh_args(p)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("why", help="why SRC may or may not reach DST: the policy's rule, the "
                       "path, and with --live what both hosts see (exit code 0: it passes)")
    p.add_argument("src", metavar="SRC", help="the source node")
    p.add_argument("dst", metavar="DST", help="the destination: a node, host alias or address")
    p.add_argument("what", metavar="PORT/PROTO", nargs="?",
                   help="5432/tcp, 53/udp, a bare port (TCP) or icmp (the default: a ping)")
    p.add_argument("--live", action="store_true", help="ask both hosts (runs "
                   "playbooks/why.yml): drift, the handshake, a probe, the drops it caused "
                   "and the denied-flow log")
    mesh_args(p)
    p.set_defaults(func=cmd_why)


def cmd_init(args) -> int:
    from wgmesh import scaffold

    for rel in scaffold.write(args.dir):
        print(f"wrote {args.dir / rel}")
    print(f"""
Next, in {args.dir}:
  1. inventories/prod/mesh.yml: your hosts (ansible_host; endpoint for the public ones;
     owner or tags), and inventories/prod/group_vars/all.yml: who Ansible logs in as.
  2. policies/prod.hujson: who may reach what.
  3. wgmesh check; ansible-inventory --graph; ansible-playbook site.yml --check
  4. ansible-playbook site.yml, then commit (the lockfile too): see docs/gitops.md.""")
    return EXIT_OK


def cmd_check(args) -> int:
    if args.json:
        return _check_json(args)
    b = _checked_build(args)
    warn(b)
    warn_unsigned(b)
    if args.locked and b.lock.changed:
        print(f"error: {b.lock.path} is out of date (run: wgmesh lock)", file=sys.stderr)
        return EXIT_FAILED
    print(f"ok: {len(b.resolution.names)} nodes, {len(b.policy.rules)} rules, "
          f"{len(b.policy.tests)} policy tests passed"
          + (f", {len(b.policy.ssh_tests)} ssh tests passed" if b.policy.ssh_tests else ""))
    return EXIT_OK


def _checked_build(args):
    """The inputs built and every host compiled: what only a host's compile finds (output
    limits) fails `check` too."""
    b = build_from_args(args)
    for _ in b.hosts():
        pass
    return b


def _check_json(args) -> int:
    """`check --json`: one JSON document on stdout, whatever the outcome, with the exit code
    the text form has."""
    report: dict = {"ok": False, "exit_code": EXIT_OK, "errors": [], "test_failures": [],
                    "warnings": []}

    def problems(exc) -> list[dict]:
        return [{"file": p.file, "line": p.line, "column": p.column, "path": p.path,
                 "message": p.message, "fix": p.fix} for p in exc.problems]

    try:
        b = _checked_build(args)
    except InputError as exc:
        report.update(exit_code=EXIT_INPUT, errors=problems(exc))
    except PolicyTestFailure as exc:
        report.update(exit_code=EXIT_FAILED, test_failures=problems(exc))
    else:
        stale = bool(args.locked and b.lock.changed)
        report.update(
            ok=not stale, exit_code=EXIT_FAILED if stale else EXIT_OK,
            nodes=len(b.resolution.names), rules=len(b.policy.rules),
            tests_passed=len(b.policy.tests), ssh_tests_passed=len(b.policy.ssh_tests),
            expired=list(b.resolution.expired), lockfile_current=not b.lock.changed,
            warnings=compile_warnings(b) + unsigned_warnings(b))
    print(json.dumps(report, indent=2))
    return report["exit_code"]


def cmd_test(args) -> int:
    b = build_from_args(args, run_tests=False)
    failures = policy_test_failures(b)
    failed = {p.path for p in failures}
    tests = [*b.policy.tests, *b.policy.ssh_tests]
    for t in tests:
        print(f"{'FAIL' if t.origin in failed else 'ok  '} {t.origin} (line {t.line}) "
              f"src {t.src}")
    for p in failures:
        print(f"error: {p}", file=sys.stderr)
    print(f"{len(tests) - len(failed)} passed, {len(failed)} failed")
    return EXIT_FAILED if failures else EXIT_OK


def cmd_lock(args) -> int:
    b = build_from_args(args, run_tests=False)
    print(f"{b.lock.path}: {'written' if b.lock.save() else 'unchanged'}")
    return EXIT_OK


def cmd_render(args) -> int:
    """Hosts are compiled, rendered and written one at a time (plan.json too), so memory
    holds one host's output, not the mesh's. Read-only: the lockfile is never written."""
    b = build_from_args(args)
    comp, res, net = b.compiler, b.resolution, b.mesh.network
    if args.host:
        if args.host not in res.index:
            print(f'error: no node "{args.host}" in {b.mesh.path}', file=sys.stderr)
            return EXIT_INPUT
        names = [args.host]
    else:
        names = [n for n in res.names if b.mesh.nodes[n].managed]
    if args.host and not b.mesh.nodes[args.host].managed and not args.json and not args.out:
        from wgmesh import device

        text, left_out = device.client_config(comp.host(args.host), net, None)
        print(f"### {args.host}: configuration for its WireGuard app (managed: false; "
              "`wgmesh device config` exports it)")
        print(text)
        for line in left_out:
            print(f"# not reachable from this device: {line}")
        warn(b)
        return EXIT_OK
    hosts = (h for _, h in b.hosts(names))
    if args.json:
        render.write_plan(sys.stdout, hosts, net, res.expired, lambda: b.warnings)
    elif args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "plan.json", "w") as plan:
            render.write_plan(plan, map(_write_host_files(args.out, net), hosts), net,
                              res.expired, lambda: b.warnings)
        print(f"wrote {len(names)} hosts to {args.out}")
    else:
        for h in hosts:
            for where, _name, text in _host_files(h, net):
                print(f"### {h.name}: {where}")
                print(text)
    warn(b)
    return EXIT_OK


def _host_files(h, net) -> list[tuple[str, str, str]]:
    """(where on the host, file name under `render --out`, text) of everything a host's
    bundle writes, as `render` shows it: a reviewer sees each file the host will run."""
    files = [(f"/etc/wireguard/{net.interface}.conf", f"{net.interface}.conf",
              render.wg_quick(h, net)),
             (render.RULESET_PATH, "nftables.nft", render.nftables(h, net)),
             ("/etc/hosts block", "hosts", render.hosts_block(h))]
    if h.hop:
        files.append((f"/etc/wireguard/{h.hop.interface}.conf", f"{h.hop.interface}.conf",
                      render.hop_conf(h, net)))
    if h.forwarding:
        files.append(("/etc/sysctl.d/60-wgmesh.conf", "sysctl", render.SYSCTL_FORWARDING))
    sshd = render.sshd_dropin(h)
    if sshd:
        files.append(("/etc/ssh/sshd_config.d/wgmesh.conf", "sshd", sshd))
    dns = render.split_dns_text(h)
    if dns:
        files.append((f"split DNS (resolvectl on {net.interface}, or wgmesh's dnsmasq)",
                      "split-dns", dns))
    resolver = render.resolver_conf(h)
    if resolver:
        files.append((render.RESOLVER_CONF, "resolver.conf", resolver))
    return files


def _write_host_files(out: Path, net):
    """A function that writes one host's files under ``out`` and passes the host on."""
    def write(h):
        d = out / h.name
        d.mkdir(exist_ok=True)
        for _where, name, text in _host_files(h, net):
            (d / name).write_text(text)
        return h
    return write


def cmd_plan(args) -> int:
    from wgmesh import plan, planreport

    # Each state as its hosts judge it: --today, else a signed mesh's manifest date, else
    # today.
    today = args.today
    head = build(args.inventory, args.policy, today=today, run_tests=False)
    inventory = Path(args.inventory).resolve()
    with tempfile.TemporaryDirectory(prefix="wgmesh-plan-") as tmp:
        base_dir = Path(args.base)
        if base_dir.is_dir():
            rel = Path(args.inventory)
            base_inv = base_dir / rel if not rel.is_absolute() and (base_dir / rel).exists() \
                else base_dir
        else:
            top = plan.export_ref(args.base, inventory if inventory.is_dir()
                                  else inventory.parent, Path(tmp))
            base_inv = Path(tmp) / inventory.relative_to(top)
        base = build(base_inv, today=today, run_tests=False)
        result = plan.compare(base, head, args.base, source_commit(head) or "working tree")
    text = (json.dumps(planreport.to_json(result), indent=1) + "\n" if args.json
            else planreport.to_markdown(result))
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return result.exit_code


def cmd_graph(args) -> int:
    from wgmesh import graph

    b = build_from_args(args, run_tests=False)
    live = None
    if args.live:
        live = {}
        for name in b.mesh.nodes:
            path = args.live / f"{name}.json"
            if path.is_file():
                try:
                    live[name] = json.loads(path.read_text())
                except ValueError as exc:
                    raise InputError([Problem(str(path), 0, 0, "", f"not JSON: {exc}",
                                              "copy the host's /var/lib/wgmesh/agent.json "
                                              "as it is")]) from exc
    if args.node is not None and args.node not in b.mesh.nodes:
        raise InputError([Problem(str(b.mesh.path), 0, 0, "", f'no node "{args.node}"',
                                  "name a node of mesh.yml")])
    if args.format == "html":
        text = graph.page(b, live, args.group_by, args.node)
    else:
        g = graph.collect(b, live, args.group_by)
        if args.node is not None:
            g = graph.neighbourhood(g, args.node)
        text = graph.picture(g) if args.format == "svg" else graph.dot(g)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    warn(b)
    return EXIT_OK


def cmd_eval(args) -> int:
    """One JSON line per query. A user, group or tag stands for each of its devices: the
    answer's "allow" holds when every pair is allowed, and "pairs" lists each one."""
    b = build_from_args(args)
    users = known_users(b)
    bad = 0
    for lineno, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
            srcs = query_endpoints(b, str(q["src"]))
            dsts = query_endpoints(b, str(q["dst"]))
            proto_name = str(q.get("proto", "tcp")).lower()
            port = q.get("port")
            # A name (node, user, group, tag) may stand for either address family; an
            # address given as such may not.
            named = tuple(str(q[k]) not in b.policy.hosts and not grammar.ip_address(str(q[k]))
                          for k in ("src", "dst"))
            pairs = [why.decide(b, s, d, named, proto_name, port) for s in srcs for d in dsts]
            if len(pairs) == 1:
                out = {**q, **{k: v for k, v in pairs[0].items() if k not in ("src", "dst")}}
            else:
                out = {**q, "allow": all(p["allow"] for p in pairs), "pairs": pairs}
            hints = [h for k in ("src", "dst") if (h := unknown_user_hint(users, str(q[k])))]
            if hints:
                out["hint"] = "; ".join(hints)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            bad += 1
            out = {"error": f"line {lineno}: {exc}", "input": line.strip()}
        print(json.dumps(out), flush=True)
    return EXIT_INPUT if bad else EXIT_OK


def cmd_why(args) -> int:
    b = build_from_args(args, run_tests=False)
    try:
        flow = why.parse_flow(args.src, args.dst, args.what)
        answer = why.compiled(b, flow)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if args.live:
        hosts = [n for n in (flow.src, flow.dst)
                 if n in b.resolution.index and b.mesh.nodes[n].managed]
        if flow.src not in hosts:
            print(f"error: --live asks the hosts, and {flow.src} is not one Ansible manages "
                  "(managed: false)", file=sys.stderr)
            return EXIT_INPUT
        project = project_folder("playbooks/why.yml")
        if project is None:
            return EXIT_INPUT
        probe = why.probe_argv(flow, answer.address)
        with tempfile.TemporaryDirectory(prefix="wgmesh-why-") as tmp:
            argv = [str(Path(sys.executable).parent / "ansible-playbook"), "playbooks/why.yml",
                    "-e", json.dumps({"wgmesh_why_src": flow.src,
                                      "wgmesh_why_dst": hosts[-1], "wgmesh_why_probe": probe,
                                      "wgmesh_why_dir": tmp})]
            if args.inventory:
                argv[1:1] = ["-i", str(Path(args.inventory).resolve())]
            play = subprocess.run(argv, cwd=project, capture_output=True, text=True)
            raw = {n: json.loads((Path(tmp) / f"{n}.json").read_text())
                   for n in hosts if (Path(tmp) / f"{n}.json").is_file()}
        if play.returncode != 0 or not raw:
            print(play.stdout[-2000:], file=sys.stderr)
            print("error: the hosts did not answer (playbooks/why.yml failed)", file=sys.stderr)
            return EXIT_UNREACHED
        facts = {n: why.host_facts(r, render.wg_quick(b.compiler.host(n), b.mesh.network),
                                   probe if n == flow.src else [])
                 for n, r in raw.items()}
        why.judge(answer, facts)
    policy = Path(b.policy.path).resolve()
    shown = policy.relative_to(Path.cwd().resolve()) if policy.is_relative_to(Path.cwd()
                                                                              .resolve()) \
        else policy
    print("\n".join(answer.lines(str(shown))))
    return EXIT_OK if answer.passes else EXIT_FAILED
