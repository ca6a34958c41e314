"""Golden files: every host's rendered outputs for tests/data/golden-mesh: its wg-quick file
(and its relay tunnel's), table, names, sshd drop-in, and the whole bundle the host checks.

A missing or different golden file fails the test and writes the actual output beside it
(``*.actual``) for review; to accept a reviewed change, run with WGMESH_UPDATE_GOLDEN=1.
"""

import datetime as dt
import json
import os
import shutil
from pathlib import Path

from meshkit import fake_key

from wgmesh import render
from wgmesh.build import build
from wgmesh.compile.compiler import Compiler

HERE = Path(__file__).resolve().parents[1]
GOLDEN = HERE / "golden"
INPUT = HERE / "data" / "golden-mesh"


def outputs(tmp_path):
    for name in ("mesh.yml", "policy.hujson"):
        shutil.copy(INPUT / name, tmp_path / name)
    b = build(tmp_path, run_tests=True)
    for name, node in b.mesh.nodes.items():
        if node.managed:
            b.lock.pin_key(name, fake_key(name), dt.date(2026, 1, 1))
    b.lock.save()
    b = build(tmp_path)
    net = b.mesh.network
    hosts = b.compiler.compile_all()
    files = {"plan.json": render.plan_json(hosts, net, b.resolution.expired, b.compiler.warnings),
             "mesh.lock.yml": (tmp_path / "mesh.lock.yml").read_text()}
    for name, h in hosts.items():
        files[f"{name}/wg0.conf"] = render.wg_quick(h, net)
        files[f"{name}/nftables.nft"] = render.nftables(h, net)
        files[f"{name}/hosts"] = render.hosts_block(h)
        if h.hop:
            files[f"{name}/wg0-hop.conf"] = render.hop_conf(h, net)
        if render.sshd_dropin(h):
            files[f"{name}/sshd.conf"] = render.sshd_dropin(h)
        if h.node.managed:
            bundle = b.bundle(name, "0" * 40, host=h)
            files[f"{name}/bundle.json"] = json.dumps(bundle, indent=1, sort_keys=True) + "\n"
    return b, files


def test_golden_outputs(tmp_path):
    _, files = outputs(tmp_path)
    update = os.environ.get("WGMESH_UPDATE_GOLDEN") == "1"
    mismatched = []
    for rel, text in sorted(files.items()):
        path = GOLDEN / rel
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            mismatched.append(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            Path(f"{path}.actual").write_text(text)
    stale = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*")
             if p.is_file() and not p.name.endswith(".actual")} - set(files)
    assert not mismatched, f"outputs differ from golden files (see *.actual): {mismatched}"
    assert not stale, f"golden files nothing renders any more: {sorted(stale)}"


def test_one_host_alone_renders_the_same(tmp_path):
    b, files = outputs(tmp_path)
    fresh = Compiler(b.mesh, b.policy, b.alloc)
    h = fresh.host("office-gw")
    assert render.nftables(h, b.mesh.network) == files["office-gw/nftables.nft"]
    assert render.wg_quick(h, b.mesh.network) == files["office-gw/wg0.conf"]
