"""`wgmesh plan`: what a change means, in names, with the exit code a pipeline gates on."""

import datetime as dt
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from meshkit import wgmesh

from wgmesh import plan, planreport
from wgmesh.build import build

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden-mesh"
DAY = dt.date(2026, 1, 1)


@pytest.fixture
def two(tmp_path):
    """A base and a head copy of the golden mesh; tests edit the head."""
    base, head = tmp_path / "base", tmp_path / "head"
    shutil.copytree(GOLDEN, base)
    shutil.copytree(GOLDEN, head)
    return base, head


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def compare(base: Path, head: Path) -> plan.Plan:
    return plan.compare(build(base, today=DAY, run_tests=False),
                        build(head, today=DAY, run_tests=False), "base", "head")


def test_same_inputs_plan_nothing(two):
    p = compare(*two)
    assert not p.changed and p.exit_code == plan.NO_CHANGE
    assert "No change" in planreport.to_markdown(p)


def test_a_new_rule_is_a_gain_in_names_and_widens(two):
    base, head = two
    edit(head / "policy.hujson", '"acls": [',
         '"acls": [\n    {"action": "accept", "src": ["carol@example.com"], "proto": "tcp", '
         '"dst": ["tag:web:5432,6000-6010"]},')
    p = compare(base, head)
    assert [(c.source, c.kind, c.destinations, c.ports) for c in p.access] == [
        ("carol@example.com", "gains", ["web1"], ["tcp 5432,6000-6010"])]
    assert p.peers == {"carol-phone": {"gains": ["web1"], "loses": []},
                       "web1": {"gains": ["carol-phone"], "loses": []}}
    assert p.widened and p.exit_code == plan.WIDENED
    md = planreport.to_markdown(p)
    assert "| `carol@example.com (group:ops)` | gains | `web1` | `tcp 5432,6000-6010` |" in md
    assert "**Access widens**" in md


def test_a_removed_rule_is_a_loss_per_user_and_fails_a_test(two):
    """group:eng's grant to legacy goes: alice and bob each lose it (carol keeps tcp 22 from
    her own rule), the routers' clients change, and the test that expected it now fails."""
    base, head = two
    edit(head / "policy.hujson",
         '{"src": ["group:eng"], "dst": ["legacy"], "ip": ["tcp:22", "udp:161"]},', "")
    p = compare(base, head)
    got = {(c.source, c.kind, tuple(c.destinations), tuple(c.ports)) for c in p.access}
    assert got == {("alice@example.com", "loses", ("legacy",), ("tcp 22", "udp 161")),
                   ("bob@example.com", "loses", ("legacy",), ("tcp 22", "udp 161"))}
    assert not p.widened and p.exit_code == plan.CHANGED
    assert p.tests == [{"test": "tests[0]", "before": "pass",
                        "after": "test failed: bob-laptop -> 198.51.100.130:22 is denied, "
                                 "expected accept"}]
    assert "bob-laptop" in p.peers["office-gw"]["loses"]


def test_nodes_routes_and_exit_nodes_in_names(two):
    base, head = two
    edit(head / "mesh.yml", "    use_exit_node: exit1\n", "")
    edit(head / "mesh.yml", "    advertise_exit_node: true\n", "")
    edit(head / "policy.hujson", '"198.51.100.128/25": ["tag:router"]',
         '"198.51.100.128/25": ["tag:router"], "203.0.113.0/24": ["tag:router"]')
    with (head / "mesh.yml").open("a") as f:
        f.write("  dave-laptop:\n    ansible_host: 203.0.113.50\n"
                "    owner: bob@example.com\n")
    p = compare(base, head)
    assert p.joined == ["dave-laptop"] and p.left == []
    assert {"node": "exit1", "change": "removed"} in p.exit_nodes
    assert {"node": "alice-laptop", "change": "uses", "from": "exit1", "to": None} \
        in p.exit_nodes
    assert p.routes == [{"router": "office-gw", "prefix": "203.0.113.0/24", "change": "added",
                         "role": "primary"}]
    # bob's new laptop gains what bob's identity reaches, and bob's other device reaches it.
    gains = {c.source: c.destinations for c in p.access if c.kind == "gains"}
    assert "dave-laptop" in gains["bob@example.com"]
    assert p.exit_code == plan.WIDENED
    doc = planreport.to_json(p)
    assert doc["nodes"]["joined"] == ["dave-laptop"] and doc["exit_code"] == 4
    json.dumps(doc)  # serializable as is


def test_cli_against_a_git_ref_and_a_directory(two, tmp_path):
    """The base may be a git ref (read with git archive; the work tree is not touched) or a
    directory; exit codes: 0 nothing, 3 changed, 4 widened."""
    _, head = two
    repo = tmp_path / "repo"
    shutil.copytree(GOLDEN, repo / "inv")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    args = ["plan", "-i", "inv", "--today", "2026-01-01"]
    out = wgmesh([*args, "--base", "HEAD"], cwd=repo)
    assert out.returncode == 0, out.stderr
    edit(repo / "inv/policy.hujson", '"dst": ["tag:db:22", "legacy:22"]', '"dst": ["tag:db:22"]')
    out = wgmesh([*args, "--base", "HEAD", "--json"], cwd=repo)
    assert out.returncode == 3, out.stderr
    doc = json.loads(out.stdout)
    # Ports as ranges (and in words), with the rule behind the loss: the base's line 15.
    assert doc["access"] == [{"source": "carol@example.com", "change": "loses",
                              "destinations": ["legacy"],
                              "ports": {"tcp": [[22, 22]], "udp": [[22, 22]]}, "logins": [],
                              "ports_text": ["tcp 22", "udp 22"],
                              "rules": ["policy.hujson:15 (acls[2])"]}]
    assert doc["head"].endswith("+changes")
    out = wgmesh([*args, "--base", str(head)], cwd=repo)
    assert out.returncode == 3
    assert ("| `carol@example.com (group:ops)` | loses | `legacy` | `tcp 22; udp 22` | "
            "`policy.hujson:15 (acls[2])` |") in out.stdout
    bad = wgmesh([*args, "--base", "no-such-ref"], cwd=repo)
    assert bad.returncode == 2 and 'git ref "no-such-ref"' in bad.stderr
    # A base that would be an option to git is refused before git runs: no file written,
    # no traceback.
    victim = tmp_path / "victim"
    victim.write_text("kept\n")
    for option in (f"--output={victim}", "--list", "-o"):
        bad = wgmesh([*args, f"--base={option}"], cwd=repo)
        assert bad.returncode == 2, (option, bad.stderr)
        assert "is neither a folder nor a git branch, tag or commit" in bad.stderr
        assert "Traceback" not in bad.stderr
    assert victim.read_text() == "kept\n"


HOSTILE = ["-@security-team", "test failed: .@octocat -> x", "[click](https://evil.example)",
           "![img](https://evil.example/x.png)", "<img src=x onerror=alert(1)>",
           "<script>alert(1)</script>", "https://evil.example", "www.evil.example",
           "<https://evil.example>", "a|b`c@d", "**bold** _it_ @here", "&lt;b&gt;"]


class _Html(HTMLParser):
    """The tags of rendered HTML, and its text outside <code> elements."""

    def __init__(self):
        super().__init__()
        self.tags, self.outside, self.depth = set(), [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.depth += tag == "code"

    def handle_endtag(self, tag):
        self.depth -= tag == "code"

    def handle_data(self, data):
        if not self.depth:
            self.outside.append(data)


def test_markdown_shows_input_values_as_text_and_nothing_else():
    """Rendered as a forge renders it (CommonMark and GFM tables): a value from the inputs
    in any place of the plan becomes no link, image, HTML element or @-mention: all of it
    is inside code, where forges make none."""
    from markdown_it import MarkdownIt

    h = HOSTILE
    p = plan.Plan(
        base=h[0], head=h[1], joined=h, left=h, expired=h, keys=h,
        access=[plan.Change(v, "gains", [v, *h], [v]) for v in h],
        peers={v: {"gains": h, "loses": h} for v in h},
        routes=[{"prefix": v, "router": v, "change": "added", "role": v} for v in h],
        exit_nodes=[{"node": v, "change": "uses", "to": v, "from": v} for v in h]
        + [{"node": v, "change": v} for v in h],
        tests=[{"test": v, "before": v, "after": v} for v in h], warnings=h,
        groups={v: h for v in h},
        signing={"threshold": 2, "threshold_from": 3, "admins_added": h, "admins_removed": h,
                 "manifest": {"serial": 1, "states_inputs": True, "refused": h[1],
                              "signatures": h}})
    text = planreport.to_markdown(p)
    html = _Html()
    html.feed(MarkdownIt("commonmark").enable("table").render(text))
    assert html.tags <= {"h3", "h4", "p", "ul", "li", "strong", "code", "table", "thead",
                         "tbody", "tr", "th", "td"}, html.tags
    outside = "".join(html.outside)
    for mark in ("@", "://", "www.", "evil", "<", "alert", "click"):
        assert mark not in outside, (mark, outside)
    # Every value is there, as text: cells keep their pipes, nothing is lost.
    assert "a|b'c@d" in text.replace("\\|", "|")


KEY = "GpRfVOEUfJhmC8Uvd/WtuJnWbWfGfKnHCeC2AgaxKtc="
OTHER_KEY = "LhW0BSXEYOKCzQfzGDei2/kA/FPd1DqPToTA1LtsUMI="


def test_a_machine_that_starts_acting_as_someone_widens_access(two):
    """Access follows identities: a new device of an existing owner, a key swapped in, a
    node given another owner reach what that identity may, though no rule changes."""
    base, head = two
    mesh = head / "mesh.yml"
    edit(mesh, "  carol-phone:\n", "  carol-tablet:\n    owner: carol@example.com\n"
         f"    managed: false\n    public_key: {KEY}\n  carol-phone:\n")
    p = compare(base, head)
    [joined] = p.identities
    assert (joined["node"], joined["change"], joined["as"], joined["widens"]) == (
        "carol-tablet", "joins", "carol@example.com", True)
    assert joined["reaches"] and p.exit_code == plan.WIDENED
    md = planreport.to_markdown(p)
    assert "- `carol-tablet` joins: acts as `carol@example.com`; reaches " in md
    # The device's key swapped in mesh.yml (someone else's phone now acts as carol).
    shutil.copy(base / "mesh.yml", mesh)
    edit(mesh, "public_key: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
         f"public_key: {KEY}")
    p = compare(base, head)
    assert [(i["node"], i["change"], i["widens"]) for i in p.identities] == [
        ("carol-phone", "new key", True)]
    assert p.exit_code == plan.WIDENED
    # bob's laptop handed to carol: it reaches what carol may and bob may not.
    shutil.copy(base / "mesh.yml", mesh)
    edit(mesh, "  bob-laptop:\n    ansible_host: 198.51.100.74\n    owner: bob@example.com",
         "  bob-laptop:\n    ansible_host: 198.51.100.74\n    owner: carol@example.com")
    p = compare(base, head)
    [moved] = [i for i in p.identities if i["node"] == "bob-laptop"]
    assert (moved["change"], moved["was"], moved["as"]) == (
        "acts as", "bob@example.com", "carol@example.com")
    assert moved["widens"] and p.exit_code == plan.WIDENED
    assert "db1: tcp 22; udp 22" in moved["reaches"]  # carol's, not bob's


def test_a_key_changed_in_the_lockfile_widens_access(two):
    base, head = two
    for d in two:
        assert wgmesh(["lock", "-i", str(d)]).returncode == 0
    data = yaml.safe_load((base / "mesh.lock.yml").read_text())
    data["nodes"]["db1"]["public_key"] = KEY
    (base / "mesh.lock.yml").write_text(yaml.safe_dump(data))
    data["nodes"]["db1"]["public_key"] = OTHER_KEY
    (head / "mesh.lock.yml").write_text(yaml.safe_dump(data))
    p = compare(base, head)
    # db1 reaches nothing itself; what reaches it now ends at the new key.
    assert [(i["node"], i["change"], i["as"], i["reaches"], i["reached_by"], i["widens"])
            for i in p.identities] == [("db1", "new key", "tag:db", [],
                                        ["carol@example.com", "tag:web"], True)]
    assert p.keys == ["db1"] and p.access == [] and p.exit_code == plan.WIDENED
    assert "reached by `carol@example.com`, `tag:web` **(widens)**" in planreport.to_markdown(p)


def test_name_resolution_changes_are_shown_and_widen(two):
    """No rule and no node changes: only where names resolve."""
    base, head = two
    for d in two:  # the nameserver is reachable in both states
        edit(d / "policy.hujson", '"acls": [',
             '"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["legacy:53"]},')
    edit(head / "mesh.yml", "  domain: corp.internal\n",
         "  domain: org\n  split_dns:\n    com: [198.51.100.130]\n")
    p = compare(base, head)
    assert p.names == [{"what": "mesh domain", "from": "corp.internal", "to": "org"},
                       {"what": "split DNS com", "from": None, "to": "198.51.100.130"}]
    assert p.access == [] and p.identities == [] and p.exit_code == plan.WIDENED
    md = planreport.to_markdown(p)
    assert "- `mesh domain`: `corp.internal` -> `org`" in md
    assert "- `split DNS com`: `none` -> `198.51.100.130`" in md


def test_settings_that_change_every_bundle_are_shown_and_do_not_widen(two):
    base, head = two
    edit(head / "mesh.yml", "  log_denied: true\n", "  log_denied: false\n")
    edit(head / "mesh.yml", "  key_max_age_days: 180\n", "  key_max_age_days: 90\n")
    p = compare(base, head)
    assert [(c["what"], c["from"], c["to"]) for c in p.settings] == [
        ("network.log_denied", True, False), ("network.key_max_age_days", 180, 90)]
    assert p.access == [] and p.exit_code == plan.CHANGED
    md = planreport.to_markdown(p)
    assert "- `network.log_denied`: `true` -> `false` (hosts log the flows their policy " \
           "drops)" in md
    assert planreport.to_json(p)["settings"][1]["to"] == 90


def test_ports_are_written_as_a_reader_says_them():
    """Complements as complements: a rule for every port, less port 22 of a node that runs
    SSH policy, is "tcp * but 22", not "tcp 0-21,23-65535"; short lists stay lists."""
    from wgmesh.access import port_text

    assert port_text("tcp", [(0, 21), (23, 65535)]) == "tcp * but 22"
    assert port_text("tcp", [(0, 21), (23, 5431), (5433, 65535)]) == "tcp * but 22,5432"
    assert port_text("tcp", [(1, 65535)]) == "tcp *"  # port 0 is no port
    assert port_text("tcp", [(22, 22), (80, 80), (8000, 8100)]) == "tcp 22,80,8000-8100"
    assert port_text("icmp", [(0, 65535)]) == "icmp"
