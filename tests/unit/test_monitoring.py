"""The example alert rules and Grafana dashboard of docs/monitoring, checked with promtool
(Debian's prometheus package) against the metrics the monitor writes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_metrics import METRICS

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "docs/monitoring/alerts.yml"
ALERT_TESTS = REPO / "tests/data/monitoring/alerts-test.yml"
DASHBOARD = REPO / "docs/monitoring/grafana-dashboard.json"
METRIC = re.compile(r"\bwgmesh_[a-z0-9_]+\b")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool (Debian's prometheus package) is part of ./dev.sh install"
    return subprocess.run([tool, *args], capture_output=True, text=True, cwd=cwd)


def dashboard_expressions() -> list[str]:
    """Every query of the dashboard, with Grafana's variables as Prometheus reads them."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    # A variable's label_values(QUERY, LABEL) is Grafana's: Prometheus answers QUERY.
    exprs += [re.sub(r"^label_values\((.*), *\w+\)$", r"\1", v["query"])
              for v in dash["templating"]["list"] if v["type"] == "query"]
    return [e.replace("$__rate_interval", "5m").replace("$instance", ".*") for e in exprs]


def test_the_alert_rules_are_valid_and_use_only_metrics_the_monitor_writes():
    check = promtool("check", "rules", str(ALERTS))
    assert check.returncode == 0, check.stdout + check.stderr
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    used = {m for r in rules for m in METRIC.findall(r["expr"])}
    assert used <= set(METRICS), used - set(METRICS)
    assert {r["alert"] for r in rules} >= {"WgmeshPeerNoHandshake", "WgmeshDrift",
                                           "WgmeshKeyNearExpiry", "WgmeshAntiSpoofDrops"}


def test_the_alert_rules_pass_their_unit_tests_and_the_tests_can_fail(tmp_path):
    run = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    # The same tests against rules whose thresholds moved: they must notice.
    (tmp_path / "docs/monitoring").mkdir(parents=True)
    (tmp_path / "tests/data/monitoring").mkdir(parents=True)
    moved = ALERTS.read_text().replace("> 300", "> 3000").replace("for: 10m", "for: 30m")
    (tmp_path / "docs/monitoring/alerts.yml").write_text(moved)
    shutil.copy(ALERT_TESTS, tmp_path / "tests/data/monitoring")
    run = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path / "tests/data/monitoring")
    assert run.returncode != 0
    assert "WgmeshPeerNoHandshake" in run.stdout + run.stderr
    assert "WgmeshDrift" in run.stdout + run.stderr


def test_every_dashboard_query_is_promql_over_the_monitors_metrics(tmp_path):
    exprs = dashboard_expressions()
    assert len(exprs) >= 10
    for e in exprs:
        used = set(METRIC.findall(e))
        assert used and used <= set(METRICS), (e, used - set(METRICS))
    # promtool parses each query as a recording rule's expression.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    check = promtool("check", "rules", str(tmp_path / "queries.yml"))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("bad", ["sum(wgmesh_drift", "wgmesh_drift{instance=~}"])
def test_promtool_refuses_a_broken_query(tmp_path, bad):
    """The check above can fail."""
    rules = {"groups": [{"name": "q", "rules": [{"record": "q:bad", "expr": bad}]}]}
    (tmp_path / "q.yml").write_text(yaml.safe_dump(rules))
    assert promtool("check", "rules", str(tmp_path / "q.yml")).returncode != 0
