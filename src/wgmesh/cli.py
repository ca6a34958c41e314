"""The ``wgmesh`` command.

Exit codes: 0 ok; 1 the requested state could not be reached (lab failure, failing policy
test); 2 usage or input error (every problem is printed, one per line, file:line:col first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_keys import (
    public_of as wg_public_of,
)
from wgmesh import grammar, render, why
from wgmesh.build import build, source_commit
from wgmesh.compiler import fewer_gc_passes
from wgmesh.errors import InputError, LabError, Problem, escape, write_atomic
from wgmesh.policytests import PolicyTestFailure, policy_test_failures
from wgmesh.queries import known_users, query_endpoints, unknown_user_hint


def default_inventory() -> str:
    """The inventory Ansible would use with no -i: $ANSIBLE_INVENTORY, else the `inventory`
    of the ansible.cfg Ansible would read ($ANSIBLE_CONFIG, ./ansible.cfg, ~/.ansible.cfg,
    /etc/ansible/ansible.cfg), relative to that file; its first entry."""
    import configparser

    if os.environ.get("ANSIBLE_INVENTORY"):
        return os.environ["ANSIBLE_INVENTORY"].split(",")[0].strip()
    env = os.environ.get("ANSIBLE_CONFIG")
    candidates = [Path("ansible.cfg"), Path.home() / ".ansible.cfg",
                  Path("/etc/ansible/ansible.cfg")]
    if env:
        candidates.insert(0, Path(env) / "ansible.cfg" if Path(env).is_dir() else Path(env))
    for cfg in candidates:
        if cfg.is_file():
            parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
            try:
                parser.read(cfg)
            except configparser.Error:
                break
            value = parser.get("defaults", "inventory", fallback="").split(",")[0].strip()
            if value:
                return str(cfg.resolve().parent / os.path.expanduser(value))
            break  # Ansible reads one configuration file only
    raise InputError([Problem("-i", 0, 0, "", "no inventory given, and no ansible.cfg here "
                              "names one", "pass -i DIR (the folder with mesh.yml), or set "
                              "inventory = DIR under [defaults] in ansible.cfg")])


# Exit codes, the same for every command (the README's table; plan's 3 and 4 live in plan.py).
EXIT_OK = 0
EXIT_FAILED = 1  # a check failed: a policy test, a stale lockfile (--locked), a lab step, why
EXIT_INPUT = 2  # usage or input error: nothing was changed or judged
EXIT_DRIFT = 5  # status: a host does not run what the inputs say
EXIT_UNREACHED = 6  # status: a host could not be reached, or the status run itself failed
# What playbooks/status.yml says of a host that drifts.
DRIFT_MESSAGE = "does not run what the inputs say"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "inventory", "") is None:
            args.inventory = default_inventory()
        return args.func(args)
    except InputError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_INPUT
    except PolicyTestFailure as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except render.RenderError as exc:
        print(f"error: {escape(str(exc))}", file=sys.stderr)
        return EXIT_INPUT


def build_parser() -> argparse.ArgumentParser:
    from importlib import metadata

    parser = argparse.ArgumentParser(prog="wgmesh", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version",
                        version=f"wgmesh {metadata.version('wgmesh')}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="write a repository for your own mesh: ansible.cfg, "
                       "site.yml, inventories/prod (mesh.yml, group_vars), a policy, CI files")
    p.add_argument("dir", type=Path, help="a new (or empty) folder")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("check", help="validate mesh.yml and its policy, run the policy tests")
    _mesh_args(p)
    p.add_argument("--locked", action="store_true",
                   help="fail (exit 1) if mesh.lock.yml would change")
    p.add_argument("--json", action="store_true",
                   help="one JSON report on stdout (errors, test failures, warnings), for "
                   "tools; the exit code is the same")
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
                   help="with --all: write every file of each host's bundle to DIR/<host>/ "
                   "(wg-quick files, nftables.nft, hosts, sysctl, sshd, split-dns, "
                   "resolver.conf) "
                   "and plan.json")
    p.add_argument("--json", action="store_true", help="the JSON document instead of files")
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("plan", help="what a change means, in names: BASE (a git ref or a "
                       "directory) against the working tree; exit 0 no change, 3 changed, "
                       "4 access widened")
    _mesh_args(p)
    p.add_argument("--base", required=True, metavar="REF|DIR",
                   help="the state to compare with: a git ref (origin/main, HEAD~1) or a "
                   "directory holding the same project (or the inventory itself)")
    p.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    p.add_argument("--out", metavar="FILE", type=Path, help="write the plan here too")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("graph", help="a picture of the mesh and of who may reach what: a "
                       "self-contained HTML page, or SVG or Graphviz dot")
    _mesh_args(p)
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
    _mesh_args(p)
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
    _mesh_args(p)
    p.set_defaults(func=cmd_why)

    device = sub.add_parser("device", help="devices wgmesh does not manage (phones...): "
                            "enrol one, export its configuration")
    dev_sub = device.add_subparsers(required=True, metavar="ACTION")
    p = dev_sub.add_parser("add", help="make a key pair in memory, add the device to mesh.yml "
                           "and the lockfile, print its configuration and QR code once")
    _mesh_args(p)
    p.add_argument("name")
    p.add_argument("--owner", metavar="USER", help="the user the device belongs to")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", dest="tags",
                   help="a tag for the device (repeatable)")
    _export_args(p)
    p.add_argument("--key-out", metavar="FILE", type=Path,
                   help="also write the private key to FILE (mode 0600); otherwise it is "
                   "shown once and kept nowhere")
    p.set_defaults(func=cmd_device_add)
    p = dev_sub.add_parser("config", help="the device's configuration as it is now (after a "
                           "policy change); with its key file, ready to import")
    _mesh_args(p)
    p.add_argument("name")
    p.add_argument("--key-file", metavar="FILE", type=Path,
                   help="the private key (from --key-out); without it the configuration has "
                   "no PrivateKey line and no QR code")
    _export_args(p)
    p.set_defaults(func=cmd_device_config)

    p = sub.add_parser("kit", help="build the offline kit: project, wheels, Debian packages, "
                       "install.sh, manifest and checksums (see docs/air-gap.md)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}",
                   metavar="X.Y[,X.Y]", help="Pythons the wheels are for (default: this one)")
    p.add_argument("--no-debs", action="store_true", help="leave the Debian packages out")
    p.set_defaults(func=cmd_kit)

    p = sub.add_parser("kit-sign", help="sign an offline kit as one of the admins "
                       "(SIGNATURES.json; hosts and sites install only kits M of N signed)")
    p.add_argument("kit", type=Path, metavar="DIR")
    p.add_argument("--key", required=True, type=Path, help="your admin key file")
    p.add_argument("--name", metavar="ADMIN", help="your admin name (default: the one "
                   "mesh.yml's signing.admins gives your key)")
    _mesh_args(p)
    p.set_defaults(func=cmd_kit_sign)
    p = sub.add_parser("kit-verify", help="check an offline kit before installing it: the "
                       "admins' signatures, every file's digest, no file the sums do not list "
                       "(exit 1 when it does not hold)")
    p.add_argument("kit", type=Path, metavar="DIR")
    p.add_argument("--trust", type=Path, metavar="FILE", help="the admins to trust (a host's "
                   "/etc/wgmesh/trust.json, or what `wgmesh manifest trust` prints); without "
                   "it, mesh.yml's signing section")
    _mesh_args(p)
    p.set_defaults(func=cmd_kit_verify)

    admin = sub.add_parser("admin", help="admin signing keys (changes signed by M of N)")
    admin_sub = admin.add_subparsers(required=True, metavar="ACTION")
    p = admin_sub.add_parser("keygen", help="make an ed25519 key (its file 0600, never "
                             "overwritten); print the public key for signing.admins")
    p.add_argument("--out", required=True, type=Path, metavar="FILE")
    p.set_defaults(func=cmd_admin_keygen)

    manifest = sub.add_parser("manifest", help="the signed manifest of the inputs: create, "
                              "sign, verify; the admins' trust for enrolment")
    man_sub = manifest.add_subparsers(required=True, metavar="ACTION")
    p = man_sub.add_parser("create", help="state the inputs and every host's bundle, with the "
                           "next serial, unsigned (as of today)")
    _mesh_args(p)
    p.add_argument("--serial", type=int, metavar="N",
                   help="the serial (default: the current manifest's plus one)")
    p.set_defaults(func=cmd_manifest_create)
    p = man_sub.add_parser("sign", help="compile the inputs again, check the manifest states "
                           "them, and add this admin's signature")
    _mesh_args(p)
    p.add_argument("--key", required=True, type=Path, metavar="FILE")
    p.set_defaults(func=cmd_manifest_sign)
    p = man_sub.add_parser("verify", help="the manifest states these inputs and bundles and "
                           "has enough valid signatures (exit 1 if not)")
    _mesh_args(p)
    p.add_argument("--trust", type=Path, metavar="FILE",
                   help="judge the signatures with this trust file (a host's "
                   "/etc/wgmesh/trust.json) instead of mesh.yml's signing section")
    p.set_defaults(func=cmd_manifest_verify)
    p = man_sub.add_parser("trust", help="print the trust a host installs at enrolment")
    _mesh_args(p)
    p.set_defaults(func=cmd_manifest_trust)

    p = sub.add_parser("enrol", help="pin a host's public key (from `wgmesh host enrol`) in "
                       "the lockfile, for a pull request")
    _mesh_args(p)
    p.add_argument("node")
    p.add_argument("public_key")
    p.set_defaults(func=cmd_enrol)
    host = sub.add_parser("host", help="commands run on a host itself (pull mode)")
    host_sub = host.add_subparsers(required=True, metavar="ACTION")
    p = host_sub.add_parser("enrol", help="make this host's WireGuard key (kept if it exists), "
                            "install the admins' trust, print the public key")
    p.add_argument("--interface", default="wg0")
    p.add_argument("--key-dir", type=Path, default=Path("/etc/wireguard"))
    p.add_argument("--trust", type=Path, metavar="FILE",
                   help="the trust `wgmesh manifest trust` printed (installed only when the "
                   "host has none)")
    p.add_argument("--trust-file", type=Path, default=Path("/etc/wgmesh/trust.json"))
    p.add_argument("--pull", metavar="URL", help="pull mode: the repository to apply from "
                   "(with --node and --inventory); starts a systemd timer where systemd runs")
    p.add_argument("--node", help="this host's node name in mesh.yml")
    p.add_argument("--inventory", metavar="PATH", help="the inventory folder in the repository")
    p.add_argument("--branch", default="main")
    p.add_argument("--every", type=int, default=300, metavar="SECONDS")
    p.set_defaults(func=cmd_host_enrol)
    p = host_sub.add_parser("pull", help="apply this host's part of the mesh from the "
                            "repository's data now, with the installed project's pull play "
                            "(settings of `host enrol --pull`)")
    p.add_argument("--loop", type=int, metavar="SECONDS",
                   help="again and again, this many seconds apart (where systemd does not run)")
    p.add_argument("--config", type=Path, default=Path("/etc/wgmesh/pull.json"))
    p.set_defaults(func=cmd_host_pull)

    p = sub.add_parser("agent", help="on a host: the NAT traversal agent (lighthouse answers, "
                       "direct paths for relayed pairs); wgmesh-agent.service runs the same "
                       "code")
    p.add_argument("--state-dir", default="/var/lib/wgmesh", metavar="DIR",
                   help="where wgmesh_apply keeps bundle.json (default %(default)s)")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("completion", help="print a shell completion script: "
                       "eval \"$(wgmesh completion bash)\", or save the zsh one as _wgmesh "
                       "in a folder of $fpath")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=cmd_completion)

    p = sub.add_parser("status", help="does every host run what the inputs say (runs "
                       f"playbooks/status.yml; exit code {EXIT_DRIFT} on drift, "
                       f"{EXIT_UNREACHED} when a host is not reached)")
    p.add_argument("-i", "--inventory", metavar="PATH",
                   help="inventory folder with mesh.yml (default: ansible.cfg's inventory)")
    p.add_argument("-l", "--limit", metavar="HOSTS", help="only these hosts (Ansible pattern)")
    p.set_defaults(func=cmd_status)

    lab = sub.add_parser("lab", help="the test lab: real hosts in namespaces on this machine")
    lab_sub = lab.add_subparsers(required=True, metavar="ACTION")
    for name, func, text in [
        ("up", cmd_lab_up, "create the lab (idempotent) and print its hosts"),
        ("down", cmd_lab_down, "remove every namespace, link, process and file of the lab"),
        ("status", cmd_lab_status, "show each node and whether it runs"),
        ("agents", cmd_lab_agents, "start the NAT traversal agent and the monitor on the "
         "hosts that have them and no systemd to run them (after site.yml)"),
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


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-qr", action="store_true", help="no QR code in the terminal")
    p.add_argument("--qr-png", metavar="FILE", type=Path, help="the QR code as PNG (mode 0600)")
    p.add_argument("--qr-svg", metavar="FILE", type=Path, help="the QR code as SVG (mode 0600)")


def _mesh_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--inventory", metavar="PATH",
                   help="inventory directory or its mesh.yml (default: ansible.cfg's "
                   "inventory, as Ansible finds it)")
    p.add_argument("--policy", metavar="FILE", help="use this policy instead of mesh.yml's")
    p.add_argument("--today", metavar="YYYY-MM-DD", type=dt.date.fromisoformat,
                   help="the date node expiry is judged against (default: today, UTC)")


def _build(args, run_tests: bool = True):
    # Without --today: today (UTC), or a signed mesh's manifest date.
    return build(args.inventory, args.policy, today=args.today, run_tests=run_tests)


def _warnings(b) -> list[str]:
    """Everything a compile warns of, one line each."""
    out = list(b.compiler.warnings)
    out += [f"node {n} has expired and is left out" for n in b.compiler.expired]
    if b.lock.allocated:
        out.append(f"{len(b.lock.allocated)} node(s) have no address in {b.lock.path} yet "
                   f"({', '.join(b.lock.allocated[:5])}"
                   f"{', ...' if len(b.lock.allocated) > 5 else ''}"
                   "): shown with the addresses `wgmesh lock` (or a site.yml run) would pin")
    return out


def _warn(b) -> None:
    for w in _warnings(b):
        print(f"warning: {w}", file=sys.stderr)


def _unsigned_warnings(b) -> list[str]:
    """A signed mesh whose manifest does not (yet) cover these inputs: hosts will refuse."""
    from wgmesh import signing

    if b.mesh.signing is None:
        return []
    path = b.mesh.signing.manifest_path
    if b.manifest is None:
        why = [f"there is no {path}"]
    else:
        why = signing.check_inputs(b, b.manifest)
        try:
            signing.verify(b.manifest, signing.trust_of(b))
        except signing.Refused as exc:
            why.append(str(exc))
    return [f"signed mesh: {line}; hosts refuse these inputs until `wgmesh manifest create` "
            "and enough `wgmesh manifest sign`" for line in why]


def _warn_unsigned(b) -> None:
    for w in _unsigned_warnings(b):
        print(f"warning: {w}", file=sys.stderr)


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
    _warn(b)
    _warn_unsigned(b)
    if args.locked and b.lock.changed:
        print(f"error: {b.lock.path} is out of date (run: wgmesh lock)", file=sys.stderr)
        return EXIT_FAILED
    print(f"ok: {len(b.compiler.names)} nodes, {len(b.policy.rules)} rules, "
          f"{len(b.policy.tests)} policy tests passed"
          + (f", {len(b.policy.ssh_tests)} ssh tests passed" if b.policy.ssh_tests else ""))
    return EXIT_OK


def _checked_build(args):
    """The inputs built and every host compiled: what only a host's compile finds (output
    limits) fails `check` too."""
    b = _build(args)
    with fewer_gc_passes():
        for name in b.compiler.names:
            b.compiler.host(name)
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
            nodes=len(b.compiler.names), rules=len(b.policy.rules),
            tests_passed=len(b.policy.tests), ssh_tests_passed=len(b.policy.ssh_tests),
            expired=list(b.compiler.expired), lockfile_current=not b.lock.changed,
            warnings=_warnings(b) + _unsigned_warnings(b))
    print(json.dumps(report, indent=2))
    return report["exit_code"]


def cmd_test(args) -> int:
    b = _build(args, run_tests=False)
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
    b = _build(args, run_tests=False)
    print(f"{b.lock.path}: {'written' if b.lock.save() else 'unchanged'}")
    return EXIT_OK


def cmd_render(args) -> int:
    """Hosts are compiled, rendered and written one at a time (plan.json too), so memory
    holds one host's output, not the mesh's. Read-only: the lockfile is never written."""
    b = _build(args)
    comp, net = b.compiler, b.mesh.network
    if args.host:
        if args.host not in comp.index:
            print(f'error: no node "{args.host}" in {b.mesh.path}', file=sys.stderr)
            return EXIT_INPUT
        names = [args.host]
    else:
        names = [n for n in comp.names if b.mesh.nodes[n].managed]
    if args.host and not b.mesh.nodes[args.host].managed and not args.json and not args.out:
        from wgmesh import device

        text, left_out = device.client_config(comp.host(args.host), net, None)
        print(f"### {args.host}: configuration for its WireGuard app (managed: false; "
              "`wgmesh device config` exports it)")
        print(text)
        for line in left_out:
            print(f"# not reachable from this device: {line}")
        _warn(b)
        return EXIT_OK
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
                for where, _name, text in _host_files(h, net):
                    print(f"### {h.name}: {where}")
                    print(text)
    _warn(b)
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


def _check_secret_outputs(args) -> None:
    """Files that will hold a private key (--key-out, the QR codes) are new files in folders
    that exist, checked before anything is written: never an input, never half a change."""
    problems = []
    for option, path in (("--key-out", getattr(args, "key_out", None)),
                         ("--qr-png", args.qr_png), ("--qr-svg", args.qr_svg)):
        if path is None:
            continue
        if path.exists() or path.is_symlink():
            problems.append(Problem(str(path), 0, 0, option, "exists already; a private key "
                                    "is written only to a new file", "name a file that does "
                                    "not exist yet"))
        elif not path.parent.is_dir():
            problems.append(Problem(str(path), 0, 0, option, f"folder {path.parent} does not "
                                    "exist", "create it first, or name another file"))
    if problems:
        raise InputError(problems)


def cmd_device_add(args) -> int:
    from wgmesh import device

    _check_secret_outputs(args)
    before = _build(args, run_tests=False)  # the mesh is sound before it is touched
    original = before.mesh.path.read_bytes()
    private, public = device.new_key_pair()
    if args.key_out:  # first: a key file that cannot be written leaves mesh.yml untouched
        fd = os.open(args.key_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(private + "\n")
    try:
        path = device.add_to_mesh(args.inventory, args.name, args.owner, args.tags, public)
        try:
            b = _build(args, run_tests=False)
            # A QR code that cannot be made is refused before any output.
            made = None if args.name in b.compiler.expired else _configuration(args, b, private)
        except InputError:
            # The device does not fit the mesh (a tag its owner may not assign, a
            # configuration too large for a QR code...): undo.
            write_atomic(path, original, mode=None)
            raise
    except BaseException:
        if args.key_out:
            args.key_out.unlink(missing_ok=True)
        raise
    b.lock.save()
    b.lock.allocated = []  # pinned now
    print(f"{args.name} added to {path} (managed: false, public key {public}); "
          f"address pinned in {b.lock.path}. Commit both.", file=sys.stderr)
    unknown = [line for line in (made[1] if made else []) if "not known yet" in line]
    if unknown:
        keep = (f"the key is in {args.key_out}" if args.key_out else
                "wgmesh keeps no copy of the private key printed below: save it now to a file "
                "(or remove the device from mesh.yml and add it again with --key-out FILE)")
        print(f"warning: {len(unknown)} of its peers have no public key yet (their hosts have "
              f"not run site.yml), so this configuration leaves them out; {keep}; after "
              f"site.yml, `wgmesh device config {args.name} --key-file FILE` gives the whole "
              "configuration", file=sys.stderr)
    return _export(args, b, private, made)


def cmd_device_config(args) -> int:
    from wgmesh import device

    _check_secret_outputs(args)
    b = _build(args, run_tests=False)
    node = b.mesh.nodes.get(args.name)
    if node is None or node.managed:
        print(f"error: {args.name} is not a device (managed: false) in {b.mesh.path}",
              file=sys.stderr)
        return EXIT_INPUT
    private = device.read_private_key(args.key_file) if args.key_file else None
    if private and wg_public_of(private) != b.alloc[args.name].public_key:
        print(f"error: {args.key_file} is not {args.name}'s key (its public key differs from "
              "the one in mesh.yml)", file=sys.stderr)
        return EXIT_INPUT
    return _export(args, b, private)


def _qr_wanted(args) -> bool:
    return not args.no_qr or args.qr_png is not None or args.qr_svg is not None


def _configuration(args, b, private: str | None) -> tuple[str, list[str], object]:
    """The device's configuration, the peers it leaves out, and its QR code when one is
    asked for (an input error when the configuration does not fit in one)."""
    from wgmesh import device

    text, left_out = device.client_config(b.compiler.host(args.name), b.mesh.network, private)
    code = device.qr(text, args.name) if private and _qr_wanted(args) else None
    return text, left_out, code


def _export(args, b, private: str | None, made: tuple | None = None) -> int:
    if args.name in b.compiler.expired:
        print(f"error: {args.name} has expired and has no peers", file=sys.stderr)
        return EXIT_FAILED
    text, left_out, code = made or _configuration(args, b, private)
    print(text)
    for line in left_out:
        print(f"# not reachable from this device: {line}")
    if code is not None and not args.no_qr:
        code.terminal(out=sys.stdout, compact=True)
    for path, kind in ((args.qr_png, "png"), (args.qr_svg, "svg")):
        if path is None:
            continue
        if code is None:
            print("error: no QR code without the private key (--key-file)", file=sys.stderr)
            return EXIT_INPUT
        buf = io.BytesIO()
        code.save(buf, kind=kind, scale=6)
        write_atomic(path, buf.getvalue(), 0o600)
    _warn(b)
    return EXIT_OK


def cmd_kit(args) -> int:
    from wgmesh import kit

    pythons = [v.strip() for v in args.python.split(",") if v.strip()]
    for v in pythons:
        if not re.fullmatch(r"3\.1[1-3]", v):
            print(f"error: --python {v}: wgmesh runs on Python 3.11 to 3.13", file=sys.stderr)
            return EXIT_INPUT
    manifest = kit.build(args.out, pythons, debs=not args.no_debs)
    print(f"kit in {args.out}: wgmesh {manifest['wgmesh_commit'][:12]}, "
          f"{sum(1 for f in manifest['files'] if f.startswith('wheels/'))} wheels for Python "
          f"{', '.join(pythons)}, {len(manifest['debian_packages'])} Debian packages; "
          f"install with: sh {args.out}/install.sh")
    return EXIT_OK


def _kit_trust(args) -> dict:
    from wgmesh import signing

    if getattr(args, "trust", None):
        return signing.load_trust(args.trust)
    b = _build(args, run_tests=False)
    if b.mesh.signing is None:
        raise InputError([Problem(str(b.mesh.path), 0, 0, "signing", "mesh.yml has no "
                                  "signing section", "pass --trust FILE")])
    return signing.trust_of(b)


def cmd_kit_sign(args) -> int:
    from wgmesh import kit, signing

    trust = _kit_trust(args)
    key = signing.read_admin_key(args.key)
    mine = signing.public_of(key)
    name = args.name or next((n for n, k in trust["admins"].items() if k == mine), None)
    if name is None or trust["admins"].get(name) != mine:
        print(f"error: {args.key} is not the key of an admin of this mesh", file=sys.stderr)
        return EXIT_INPUT
    try:
        kit.sign(args.kit, name, args.key)
    except signing.Refused as exc:
        print(f"error: {args.kit}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.kit}: signed by {name}", file=sys.stderr)
    return EXIT_OK


def cmd_kit_verify(args) -> int:
    from wgmesh import kit, signing

    trust = _kit_trust(args)
    try:
        valid = kit.verify(args.kit, trust)
    except signing.Refused as exc:
        print(f"refused: {args.kit}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.kit}: every file as SHA256SUMS states it, signed by {', '.join(valid)} "
          f"(threshold {trust['threshold']}): install it with sh {args.kit}/install.sh")
    return EXIT_OK


def cmd_admin_keygen(args) -> int:
    from wgmesh import signing

    if args.out.exists():
        print(f"error: {args.out} exists: an admin key is never overwritten", file=sys.stderr)
        return EXIT_INPUT
    public = signing.new_admin_key(args.out)
    print(public)
    print(f"private key in {args.out} (mode 0600): keep it off the repository and the CI; "
          "add the public key to mesh.yml's signing.admins", file=sys.stderr)
    return EXIT_OK


def cmd_manifest_create(args) -> int:
    from wgmesh import signing

    b = build(args.inventory, args.policy, run_tests=True,
              today=args.today or dt.datetime.now(dt.UTC).date())
    if b.lock.changed:
        print(f"error: {b.lock.path} is not up to date with mesh.yml: run `wgmesh lock` (and "
              "enrol new hosts) first, then create the manifest", file=sys.stderr)
        return EXIT_INPUT
    old = b.manifest["manifest"]["serial"] if b.manifest else 0
    serial = args.serial if args.serial is not None else old + 1
    if serial <= old:
        print(f"error: serial {serial} is not above the current one ({old}): hosts would "
              "refuse it", file=sys.stderr)
        return EXIT_INPUT
    if b.manifest and b.today.isoformat() < b.manifest["manifest"]["date"]:
        print(f"error: {b.today} is earlier than the current manifest's date "
              f"({b.manifest['manifest']['date']}): hosts would refuse it (a node that "
              "expired would come back)", file=sys.stderr)
        return EXIT_INPUT
    data = {"manifest": signing.compile_body(b, serial, b.today), "signatures": {}}
    signing.save(b.mesh.signing.manifest_path, data)
    print(f"{b.mesh.signing.manifest_path}: serial {serial}, as of {b.today}, "
          f"{len(data['manifest']['bundles'])} host bundles; needs "
          f"{b.mesh.signing.threshold} signatures (`wgmesh manifest sign --key FILE`)")
    return EXIT_OK


def _signed_build(args):
    b = _build(args)
    if b.mesh.signing is None or b.manifest is None:
        raise InputError([Problem(str(b.mesh.path), 1, 1, "signing", "no manifest",
                                  "add a signing section to mesh.yml, then `wgmesh manifest "
                                  "create`")])
    return b


def _stale(b) -> list[str]:
    """How the manifest differs from what its inputs compile to."""
    from wgmesh import signing

    body = b.manifest["manifest"]
    problems = signing.check_inputs(b, b.manifest)
    if not problems:
        want = signing.compile_body(b, body["serial"], signing.as_of(b.manifest))
        if want != body:
            problems = ["the bundles or trust it states are not what its inputs compile to"]
    return problems


def cmd_manifest_sign(args) -> int:
    from wgmesh import signing

    b = _signed_build(args)
    key = signing.read_admin_key(args.key)
    stale = _stale(b)
    if stale:
        for line in stale:
            print(f"error: {b.mesh.signing.manifest_path}: {line}", file=sys.stderr)
        print("error: nothing signed: make it again with `wgmesh manifest create`",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        name = signing.sign(b.manifest, key)
    except signing.Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    body = b.manifest["manifest"]
    # What the signer vouches for, against the manifest committed before (hosts run that).
    print(f"manifest serial {body['serial']}, dated {body['date']} (hosts judge node expiry "
          "as of this date)")
    previous = signing.committed(b.mesh.signing.manifest_path)
    for line in (signing.changes(previous, body) if previous else
                 ["no committed manifest to compare with"]):
        print(f"  {line}")
    signing.save(b.mesh.signing.manifest_path, b.manifest)
    print(f"signed serial {body['serial']} as {name}: {len(b.manifest['signatures'])} of "
          f"{body['trust']['threshold']} needed")
    return EXIT_OK


def cmd_manifest_verify(args) -> int:
    from wgmesh import signing

    b = _signed_build(args)
    stale = _stale(b)
    trust = signing.trust_of(b)
    if args.trust:
        trust = signing.load_trust(args.trust)
    try:
        names = signing.verify(b.manifest, trust)
    except signing.Refused as exc:
        stale.append(str(exc))
    body = b.manifest["manifest"]
    if stale:
        for line in stale:
            print(f"refused: serial {body['serial']}: {line}")
        return EXIT_FAILED
    print(f"ok: serial {body['serial']} as of {body['date']}, signed by {', '.join(names)} "
          f"({trust['threshold']} needed); states these inputs and "
          f"{len(body['bundles'])} bundles")
    return EXIT_OK


def cmd_manifest_trust(args) -> int:
    from wgmesh import signing

    b = _build(args, run_tests=False)
    if b.mesh.signing is None:
        print(f"error: {b.mesh.path} has no signing section", file=sys.stderr)
        return EXIT_INPUT
    print(json.dumps(signing.trust_of(b), indent=1, sort_keys=True))
    return EXIT_OK


def cmd_enrol(args) -> int:
    from wgmesh.build import KeyMismatch

    if not grammar.public_key(args.public_key):
        print(f"error: {args.public_key[:60]!r} is not a WireGuard public key", file=sys.stderr)
        return EXIT_INPUT
    try:
        b = build(args.inventory, args.policy, run_tests=False,
                  keys={args.node: args.public_key})
    except KeyMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.node not in b.mesh.nodes or not b.mesh.nodes[args.node].managed:
        print(f"error: {args.node} is not a managed node of {b.mesh.path}: add it there first",
              file=sys.stderr)
        return EXIT_INPUT
    changed = b.lock.save()
    print(f"{args.node}: public key {args.public_key} "
          f"{'pinned in' if changed else 'already pinned in'} {b.lock.path}; commit it" +
          (", then make and sign a new manifest" if b.mesh.signing else ""))
    return EXIT_OK


def cmd_host_pull(args) -> int:
    from wgmesh import pull

    return pull.run(args.config, args.loop)


def cmd_host_enrol(args) -> int:
    from wgmesh import device, pull, signing

    conf = None
    if args.pull:
        if not (args.node and args.inventory):
            print("error: --pull needs --node and --inventory", file=sys.stderr)
            return EXIT_INPUT
        conf = pull.settings(args.pull, args.node, args.inventory, args.branch, args.every)
    if not grammar.matches(grammar.IFNAME, args.interface):
        print(f"error: {args.interface!r} is not an interface name", file=sys.stderr)
        return EXIT_INPUT
    trust = None  # checked before anything is written
    if args.trust and args.trust_file.exists():
        print(f"{args.trust_file} kept: only a manifest its admins signed changes it",
              file=sys.stderr)
    elif args.trust:
        trust = signing.load_trust(args.trust)
    key = args.key_dir / f"{args.interface}.key"
    if key.exists():
        public = wg_public_of(device.read_private_key(key))
    else:
        args.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        private, public = device.new_key_pair()
        write_atomic(key, private + "\n", 0o600)
    if trust is not None:
        args.trust_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.trust_file, json.dumps(
            {"admins": trust["admins"], "threshold": trust["threshold"], "serial": 0,
             "digest": None}, sort_keys=True), 0o644)
    if conf is not None:
        print(f"pull mode: {pull.install(conf)}", file=sys.stderr)
    print(public)
    return EXIT_OK


def cmd_completion(args) -> int:
    import shtab

    parser = build_parser()
    # Paths complete as paths: every option or argument that takes one says so by its
    # metavar or type.
    todo = [parser]
    while todo:
        p = todo.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += action.choices.values()
            elif action.metavar == "DIR":
                action.complete = shtab.DIRECTORY
            elif action.metavar in ("PATH", "FILE") or action.type is Path:
                action.complete = shtab.FILE
    print(shtab.complete(parser, shell=args.shell), end="")
    return EXIT_OK


def cmd_agent(args) -> int:
    from ansible_collections.wgmesh.mesh.plugins.module_utils import wgmesh_agent

    return wgmesh_agent.main(["--state-dir", args.state_dir])


def _project(play: str) -> Path | None:
    """The project folder (the one with ansible.cfg and ``play``), found upward from here."""
    here = Path.cwd().resolve()
    project = next((d for d in (here, *here.parents)
                    if (d / "ansible.cfg").is_file() and (d / play).is_file()), None)
    if project is None:
        print(f"error: no wgmesh project (ansible.cfg and {play}) here or above",
              file=sys.stderr)
    return project


def cmd_status(args) -> int:
    """The status play, from the project folder: its report, and its exit code for CI and
    monitoring."""
    project = _project("playbooks/status.yml")
    if project is None:
        return EXIT_INPUT
    argv = [str(Path(sys.executable).parent / "ansible-playbook"),
            "-i", str(Path(args.inventory).resolve()), "playbooks/status.yml"]
    if args.limit:
        argv += ["--limit", args.limit]
    # The play's report as it comes, and its verdict: drift (the play's own assertion) is
    # told apart from a host that was not reached or a run that broke.
    drift = False
    with subprocess.Popen(argv, cwd=project, stdout=subprocess.PIPE, text=True,
                          bufsize=1) as play:
        for line in play.stdout:
            sys.stdout.write(line)
            drift = drift or DRIFT_MESSAGE in line
    if play.returncode == 0:
        return EXIT_OK
    return EXIT_DRIFT if drift else EXIT_UNREACHED


def cmd_why(args) -> int:
    b = _build(args, run_tests=False)
    try:
        flow = why.parse_flow(args.src, args.dst, args.what)
        answer = why.compiled(b, flow)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if args.live:
        hosts = [n for n in (flow.src, flow.dst)
                 if n in b.compiler.index and b.mesh.nodes[n].managed]
        if flow.src not in hosts:
            print(f"error: --live asks the hosts, and {flow.src} is not one Ansible manages "
                  "(managed: false)", file=sys.stderr)
            return EXIT_INPUT
        project = _project("playbooks/why.yml")
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


def cmd_plan(args) -> int:
    from wgmesh import plan

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
    text = (json.dumps(plan.to_json(result), indent=1) + "\n" if args.json
            else plan.to_markdown(result))
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return result.exit_code


def cmd_graph(args) -> int:
    from wgmesh import graph

    b = _build(args, run_tests=False)
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
    _warn(b)
    return EXIT_OK


def cmd_eval(args) -> int:
    """One JSON line per query. A user, group or tag stands for each of its devices: the
    answer's "allow" holds when every pair is allowed, and "pairs" lists each one."""
    b = _build(args)
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


def _topology_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--inventory", metavar="PATH",
                   help="lab inventory directory or its topology.yml (default: ansible.cfg's "
                   "inventory)")


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
    return EXIT_OK


def cmd_lab_down(args) -> int:
    lab = _lab(args)
    start = time.monotonic()
    lab.down()
    print(f"lab {lab.topo.name} down in {time.monotonic() - start:.2f} s")
    return EXIT_OK


def cmd_lab_status(args) -> int:
    lab = _lab(args)
    rows = _print_status(lab)
    return EXIT_OK if all(r.state.startswith("up") for r in rows) else EXIT_FAILED


def _print_status(lab):
    rows = lab.status()
    width = max(len(r.name) for r in rows)
    for r in rows:
        print(f"  {r.name:<{width}}  {r.kind:<28} {r.address:<32} {r.state}")
    return rows


def cmd_lab_agents(args) -> int:
    lab = _lab(args)
    started = lab.start_agents()
    print("agent and monitor started on: " + (", ".join(started) if started else
                                              "none (running, or not installed: run "
                                              "site.yml first)"))
    return EXIT_OK


def cmd_lab_exec(args) -> int:
    lab = _lab(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = lab.exec_argv(args.node, command or ["/bin/bash", "-l"])
    os.execvp(argv[0], argv)
    return EXIT_FAILED  # not reached


if __name__ == "__main__":
    sys.exit(main())
