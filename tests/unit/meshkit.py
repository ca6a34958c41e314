"""Build small meshes in a temporary folder for compiler tests."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path

import yaml

from wgmesh.build import Build, build
from wgmesh.compiler import Endpoint
from wgmesh.policy import PROTOCOLS

TODAY = dt.date(2026, 1, 1)


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


def allowed(b: Build, src: str, dst: str, proto: str = "tcp", port: int | None = 22,
            family: int = 4) -> bool:
    c = b.compiler
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
