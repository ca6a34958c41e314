"""wgmesh.policytests: the policy's own tests, judged as Tailscale judges them, and run once
per input state (tests/unit/test_ssh.py and test_article.py hold the verdicts themselves)."""

import datetime as dt
import shutil
from pathlib import Path

import pytest

from wgmesh import policytests
from wgmesh.build import build


def test_policy_tests_run_once_per_input_state(tmp_path, monkeypatch):
    """A pass is remembered by the digest of the inputs (and of wgmesh itself): the same
    state does not run its tests again; any change, or another date, does."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    golden = Path(__file__).resolve().parents[1] / "data" / "golden-mesh"
    mesh = tmp_path / "mesh"
    shutil.copytree(golden, mesh)
    runs = []
    real = policytests.policy_test_failures
    monkeypatch.setattr(policytests, "policy_test_failures",
                        lambda b: runs.append(1) or real(b))
    day = dt.date(2026, 1, 1)
    build(mesh, today=day)
    build(mesh, today=day)
    assert len(runs) == 1
    build(mesh, today=day + dt.timedelta(days=1))
    assert len(runs) == 2
    policy = mesh / "policy.hujson"
    policy.write_text(policy.read_text().replace('"deny": ["legacy:22"]', '"deny": ["legacy:23"]'))
    build(mesh, today=day)
    assert len(runs) == 3
    # A failing state is never remembered: it fails every time.
    failing = policy.read_text().replace('"deny": ["legacy:23"]', '"deny": ["tag:db:5432"]')
    policy.write_text(failing)
    for _ in range(2):
        with pytest.raises(policytests.PolicyTestFailure):
            build(mesh, today=day)
    assert len(runs) == 5
