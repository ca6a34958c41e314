"""Seeing the mesh run (issue 31): each host's textfile metrics and denied-flow log, the
example alerts fed by real textfiles, and `wgmesh why` in three scenarios."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest
import yaml
from conftest import REPO, ansible_env
from docmd import block
from meshlab import MeshLab

pytestmark = pytest.mark.lab

TEXTFILE = "/var/lib/prometheus/node-exporter/wgmesh.prom"
MONITOR = ("python3", "/var/lib/wgmesh/monitor.pyz", "--once")
SAMPLE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')
METRIC = re.compile(r"\bwgmesh_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """The default lab, with a key age limit and a node that expires (so every metric the
    dashboard and the alerts use is written somewhere), and its monitors running."""
    text = (REPO / "inventories/lab/mesh.yml").read_text()
    text = text.replace("  log_denied: true\n", "  log_denied: true\n  key_max_age_days: 365\n")
    text = text.replace("    owner: carol@example.com\n",
                        "    owner: carol@example.com\n    expires: 2099-12-31\n", 1)
    assert "key_max_age_days" in text and "expires: 2099-12-31" in text
    lab = MeshLab(tmp_path_factory.mktemp("observe"), "wgo", mesh=text)
    lab.lab.down()
    lab.lab.up()
    try:
        run = lab.playbook()
        assert run.returncode == 0, run.stdout[-3000:]
        lab.settle()
        # Namespace hosts have no systemd: the lab starts the monitors (and agents).
        assert {"pub1", "pub2", "pub3", "home1", "cafe1"} <= set(lab.lab.start_agents())
        yield lab
    finally:
        lab.lab.down()


def textfile(mesh, node: str) -> dict[tuple[str, frozenset], float]:
    """The host's textfile, written now (the monitor's refresh, run once), as samples."""
    mesh.run(node, *MONITOR)
    out = {}
    for line in mesh.run(node, "cat", TEXTFILE).stdout.splitlines():
        m = SAMPLE.match(line)
        if m:
            out[(m[1], frozenset(LABEL.findall(m[2] or "")))] = float(m[3])
    return out


def value(samples, metric: str, **labels) -> float:
    found = [v for (name, lab), v in samples.items()
             if name == metric and set(labels.items()) <= set(lab)]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def monitor_log(mesh, node: str) -> list[str]:
    return mesh.run(node, "cat", "/var/log/wgmesh-monitor.log").stdout.splitlines()


def test_a_denied_connection_shows_in_the_metrics_and_the_log_and_nothing_else(mesh):
    home1, pub3 = mesh.mesh_address("home1"), mesh.mesh_address("pub3")
    before, log_before = textfile(mesh, "home1"), monitor_log(mesh, "home1")
    probe = mesh.run("home1", "nc", "-z", "-w", "1", pub3, "5432", check=False)
    assert probe.returncode != 0  # the policy gives alice's home1 nothing on pub3
    deadline = time.monotonic() + 5
    while len(monitor_log(mesh, "home1")) == len(log_before) and time.monotonic() < deadline:
        time.sleep(0.2)
    new = monitor_log(mesh, "home1")[len(log_before):]
    after = textfile(mesh, "home1")
    assert new and set(new) == {
        f"denied out: home1 ({home1}) -> pub3 ({pub3}) tcp/5432"}, new
    moved = {dict(lab)["counter"]: after[(n, lab)] - v for (n, lab), v in before.items()
             if n == "wgmesh_dropped_packets_total"}
    assert moved.pop("out") == len(new)  # every dropped SYN logged (under the rate limit)
    assert set(moved.values()) == {0}, moved
    assert value(after, "wgmesh_denied_flows_logged_total", direction="out") - value(
        before, "wgmesh_denied_flows_logged_total", direction="out") == len(new)
    # The record why --live reads names the flow and nothing more: no payload byte.
    record = json.loads(mesh.run("home1", "cat", "/var/lib/wgmesh/denied.json").stdout)[-1]
    assert set(record) == {"direction", "src", "src_node", "dst", "dst_node", "proto", "port",
                           "time"}
    # pub3 saw nothing: home1's own filter dropped the packets.
    assert not any("5432" in line for line in monitor_log(mesh, "pub3"))


def test_the_textfiles_pass_promtool_and_hold_every_metric_the_dashboard_and_alerts_use(mesh):
    names = set()
    for node in ("home1", "pub1", "cafe1", "branch1"):
        mesh.run(node, *MONITOR)
        text = mesh.run(node, "cat", TEXTFILE).stdout
        check = subprocess.run(["promtool", "check", "metrics"], input=text,
                               capture_output=True, text=True)
        assert check.returncode == 0 and not check.stdout.strip(), node + check.stdout
        names |= {line.split()[0].split("{")[0] for line in text.splitlines()
                  if line and not line.startswith("#")}
    dashboard = json.loads((REPO / "docs/monitoring/grafana-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"]
            for m in METRIC.findall(t["expr"])}
    rules = yaml.safe_load((REPO / "docs/monitoring/alerts.yml").read_text())
    used |= {m for r in rules["groups"][0]["rules"] for m in METRIC.findall(r["expr"])}
    assert used <= names, used - names


def test_a_stopped_peer_fires_the_handshake_alert_fed_by_real_textfiles(mesh, tmp_path):
    """pub1 keeps sending to pub2 (the policy allows pub1 TCP 5432 there) while pub2's
    WireGuard is stopped: two real textfiles of pub1, seconds apart, show the handshake
    standing still while the bytes sent grow. promtool then carries them on, a refresh a
    minute, and the alert must fire for pub2 alone, after its threshold."""
    pub2 = mesh.mesh_address("pub2")
    mesh.run("pub1", "nc", "-z", "-w", "1", pub2, "5432", check=False)  # a fresh handshake
    t0 = textfile(mesh, "pub1")
    mesh.run("pub2", "pkill", "-STOP", "-x", "wireguard-go")
    try:
        for _ in range(4):
            mesh.run("pub1", "nc", "-z", "-w", "1", pub2, "5432", check=False)
        t1 = textfile(mesh, "pub1")
    finally:
        mesh.run("pub2", "pkill", "-CONT", "-x", "wireguard-go")
    hs = "wgmesh_peer_last_handshake_timestamp_seconds"
    tx = "wgmesh_peer_transmit_bytes_total"
    refresh = "wgmesh_textfile_refresh_timestamp_seconds"
    assert value(t1, hs, peer="pub2") == value(t0, hs, peer="pub2") > 0
    sent = value(t1, tx, peer="pub2") - value(t0, tx, peer="pub2")
    assert sent > 0
    r0, r1 = value(t0, refresh), value(t1, refresh)

    def series(first, second, step, minutes=15):
        return " ".join(str(v) for v in [first, second, *(second + step * k
                                                          for k in range(1, minutes))])
    labels = 'instance="pub1",job="node"'
    # A healthy peer for contrast (one that keeps its tunnel up): its age stays as it is.
    healthy = next(dict(lab)["peer"] for (n, lab), v in t1.items()
                   if n == hs and v > 0 and dict(lab)["peer"] != "pub2")
    healthy_age = r1 - value(t1, hs, peer=healthy)
    test = {"rule_files": [str(REPO / "docs/monitoring/alerts.yml")],
            "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": [
                {"series": f"{refresh}{{{labels}}}", "values": series(r0, r1, 60)},
                {"series": f'{hs}{{{labels},peer="pub2"}}',
                 "values": series(value(t0, hs, peer="pub2"), value(t1, hs, peer="pub2"), 0)},
                {"series": f'{tx}{{{labels},peer="pub2"}}',
                 "values": series(value(t0, tx, peer="pub2"), value(t1, tx, peer="pub2"),
                                  sent)},
                {"series": f'{hs}{{{labels},peer="{healthy}"}}',
                 "values": series(r0 - healthy_age, r1 - healthy_age, 60)},
                {"series": f'{tx}{{{labels},peer="{healthy}"}}',
                 "values": series(value(t0, tx, peer=healthy), value(t1, tx, peer=healthy),
                                  100)},
            ], "alert_rule_test": [
                {"eval_time": "3m", "alertname": "WgmeshPeerNoHandshake", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "WgmeshPeerNoHandshake", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "instance": "pub1", "job": "node",
                                   "peer": "pub2"},
                    "exp_annotations": {
                        "summary": "pub1: no handshake with pub2 for over 5 minutes",
                        "description": "The host sends to pub2 but gets no handshake: the "
                        "peer is down, its endpoint is unreachable, or its key changed. Ask: "
                        "wgmesh why pub1 pub2 --live"}}]},
            ]}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    run = subprocess.run([shutil.which("promtool"), "test", "rules", "test.yml"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def why(mesh, *args: str) -> subprocess.CompletedProcess:
    return mesh.wgmesh("why", *args, "--live")


def test_why_names_the_refusing_rule_the_relay_path_and_a_drifted_host(mesh):
    home1, pub3 = mesh.mesh_address("home1"), mesh.mesh_address("pub3")
    # 1. The policy refuses, and the source's filter enforces it: as docs/observability.md
    # shows it, on this lab's inventory.
    [cmd] = block("docs/observability.md: wgmesh why home1 pub3 5432/tcp --live -i "
                  "inventories/lab").commands
    denied = subprocess.run(["bash", "-c", cmd.text.replace("inventories/lab",
                                                            str(mesh.inventory))],
                            cwd=REPO, env=ansible_env(), capture_output=True, text=True)
    assert denied.returncode == cmd.exit == 1, denied.stdout + denied.stderr
    assert "  policy: denies it: no rule allows it (default deny)\n" in denied.stdout
    assert f"  home1: logged: denied out: home1 ({home1}) -> pub3 ({pub3}) tcp/5432\n" \
        in denied.stdout
    assert denied.stdout.endswith("  refused by: the policy, enforced by home1's filter\n")

    # 2. Allowed through the relay (cafe1 is behind a symmetric NAT): it passes.
    listener = mesh.reversing_listener("home1", home1, 8080, 1)
    try:
        relayed = why(mesh, "cafe1", "home1", "8080/tcp")
    finally:
        mesh.stop(listener)
    assert relayed.returncode == 0, relayed.stdout + relayed.stderr
    assert re.search(r"  policy: allows it: acls\[\d+\] \(.*lab.hujson:\d+\)\n",
                     relayed.stdout)
    assert "  path:   relayed via pub1, endpoint [fd7a:115c:a1e1::" in relayed.stdout
    assert f"  probe:  tcp connect {home1} port 8080: answered\n" in relayed.stdout
    assert relayed.stdout.endswith("  refused by: nothing, it passes\n")

    # 3. Allowed, but pub2's table lost the element that lets pub1 in: the host refuses.
    pub1, pub2 = mesh.mesh_address("pub1"), mesh.mesh_address("pub2")
    element = f"{{ {pub1} . tcp . 5432 }}"
    mesh.run("pub2", "nft", "delete", "element", "inet", "wgmesh", "in4", element)
    listener = mesh.reversing_listener("pub2", pub2, 5432, 1)
    try:
        drifted = why(mesh, "pub1", "pub2", "5432/tcp")
        assert value(textfile(mesh, "pub2"), "wgmesh_drift") == 1
    finally:
        mesh.stop(listener)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "  pub2: DRIFTS from its bundle: table inet wgmesh: set in4 lacks 1 element(s)" \
        in drifted.stdout
    assert f"  pub2: logged: denied in: pub1 ({pub1}) -> pub2 ({pub2}) tcp/5432\n" \
        in drifted.stdout
    assert drifted.stdout.endswith(
        "  refused by: pub2 does not run its bundle (site.yml repairs it); pub2's filter, "
        "against the policy\n")
    repaired = mesh.playbook("--limit", "pub2")
    assert repaired.returncode == 0, repaired.stdout[-3000:]
    assert value(textfile(mesh, "pub2"), "wgmesh_drift") == 0
