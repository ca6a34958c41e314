"""Build small meshes in a temporary folder for compiler tests."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import importlib.util
import io
import ipaddress
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from wgmesh.build import Build, build
from wgmesh.compile.evaluate import Endpoint
from wgmesh.policy import PROTOCOLS

TODAY = dt.date(2026, 1, 1)
REPO = Path(__file__).resolve().parents[2]


def plugin(relative: str):
    """A plugin or module file of the repository, loaded as a Python module (they are not
    importable: Ansible loads them by path)."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"plugin_{path.stem}", path)
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    return code


def fake_key(name: str) -> str:
    """A well-formed public key derived from a name (tests only; no private half exists)."""
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def make(tmp: Path, nodes: dict, policy: dict | str, network: dict | None = None,
         keys: bool = True, run_tests: bool = True) -> Build:
    """Write mesh.yml, policy.hujson and (with keys) a lockfile pinning fake keys; compile."""
    mesh = {"plugin": "wgmesh", "policy": "policy.hujson", "nodes": {}}
    if network:
        mesh["network"] = network
    for name, spec in nodes.items():
        spec = dict(spec)
        spec.setdefault("ansible_host", "192.0.2.1")
        mesh["nodes"][name] = spec
    (tmp / "mesh.yml").write_text(yaml.safe_dump(mesh, sort_keys=False))
    (tmp / "policy.hujson").write_text(policy if isinstance(policy, str) else json.dumps(policy))
    b = build(tmp, today=TODAY, run_tests=run_tests)
    if keys:
        for name in nodes:
            if b.mesh.nodes[name].managed:
                b.lock.pin_key(name, fake_key(name), TODAY)
        b.lock.save()
        b = build(tmp, today=TODAY, run_tests=run_tests)
    return b


def sign_with_admins(inv: Path, keys_dir: Path, names=("ann", "ben", "cat"),
                     threshold: int = 2) -> dict[str, str]:
    """A signing section in ``inv``'s mesh.yml: an admin key per name (written to
    ``keys_dir/NAME.key`` by `wgmesh admin keygen`), ``threshold`` of them needed."""
    from wgmesh import signing

    keys = {n: signing.new_admin_key(keys_dir / f"{n}.key") for n in names}
    data = yaml.safe_load((inv / "mesh.yml").read_text())
    data["signing"] = {"threshold": threshold, "admins": keys}
    (inv / "mesh.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return keys


def allowed(b: Build, src: str, dst: str, proto: str = "tcp", port: int | None = 22,
            family: int = 4) -> bool:
    c = b.resolution
    s = c.endpoint_of(src, family) if src in c.index else c.endpoint_of(src)
    d = c.endpoint_of(dst, family) if dst in c.index else c.endpoint_of(dst)
    p = PROTOCOLS[proto]
    if p == 1 and family == 6:
        p = 58
    return b.evaluator.check(s, d, p, port).allow


def peers(b: Build, host: str) -> list[str]:
    return [p.name for p in b.compiler.host(host).peers]


def user(name: str) -> Endpoint:
    return Endpoint(None, user=name)


SET_RE = re.compile(r"set (\w+) \{\n(?:.*\n)*?\s+flags interval\n(?:\s+elements = \{\n"
                    r"((?:\s+.*,\n)*)\s+\}\n)?")


def parse_sets(nft_text):
    """Set name -> list of boxes, parsed back from the rendered ruleset."""
    sets = {}
    for m in SET_RE.finditer(nft_text):
        elements = [e.strip().rstrip(",") for e in (m.group(2) or "").splitlines()]
        sets[m.group(1)] = [tuple(parse_part(p) for p in e.split(" . ")) for e in elements]
    return sets


def parse_part(text):
    if "/" in text:
        net = ipaddress.ip_network(text)
        return int(net.network_address), int(net.broadcast_address)
    if text in PROTOCOLS:
        return PROTOCOLS[text], PROTOCOLS[text]
    lo, _, hi = text.rpartition("-") if ("." in text or ":" in text) else text.partition("-")
    if "." in text or ":" in text:
        if not lo:
            lo = hi
        return int(ipaddress.ip_address(lo)), int(ipaddress.ip_address(hi))
    return int(lo), int(hi or lo)


def lookup(boxes, point):
    return any(all(lo <= v <= hi for (lo, hi), v in zip(b, point, strict=True)) for b in boxes)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def wgmesh(args: list, *, input: str | None = None, cwd: Path | str | None = None,
           check: bool = False) -> CliResult:
    """The wgmesh command run in this process (``cli.main``), its exit code and output as
    subprocess.run would give them: for tests where a process of its own proves nothing
    (test_invalid_inputs and test_cli run the installed command where it does)."""
    from wgmesh import cli

    out, err, here, stdin = io.StringIO(), io.StringIO(), os.getcwd(), sys.stdin
    try:
        if cwd is not None:
            os.chdir(cwd)
        sys.stdin = io.StringIO(input or "")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        os.chdir(here)
        sys.stdin = stdin
    result = CliResult(code, out.getvalue(), err.getvalue())
    assert not check or code == 0, f"wgmesh {' '.join(map(str, args))}: {result.stderr}"
    return result
