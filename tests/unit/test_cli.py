"""The wgmesh command's contract: exit codes and error format."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from meshkit import wgmesh

WGMESH = str(Path(sys.executable).parent / "wgmesh")


def test_bad_topology_exits_2_with_file_line_column(tmp_path):
    bad = tmp_path / "topology.yml"
    bad.write_text("name: x\nsegments: {}\nhosts:\n  h1: {interfaces: {nowhere: 192.0.2.1}}\n")
    out = wgmesh(["lab", "status", "-i", str(bad)])
    assert out.returncode == 2
    assert out.stderr == (f'error: {bad}:4:21: hosts.h1.interfaces.nowhere: unknown key '
                          '"nowhere" (none are defined)\n')


def test_usage_error_exits_2():
    out = subprocess.run([WGMESH, "lab", "sideways"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


REPO = Path(__file__).resolve().parents[2]


def copy_example(tmp_path):
    import shutil
    shutil.copy(REPO / "inventories/example/mesh.yml", tmp_path / "mesh.yml")
    shutil.copy(REPO / "policies/article.hujson", tmp_path / "article.hujson")
    text = (tmp_path / "mesh.yml").read_text().replace("../../policies/", "")
    (tmp_path / "mesh.yml").write_text(text)
    return tmp_path


def test_eval_reads_json_lines_and_names_the_rule(tmp_path):
    inv = copy_example(tmp_path)
    queries = "\n".join([
        '{"src": "alice-laptop", "dst": "db1", "proto": "tcp", "port": 5432}',
        '{"src": "bob-laptop", "dst": "db1", "proto": "tcp", "port": 5432}',
        '{"src": "web1", "dst": "db1", "proto": "icmp"}',
        '{"src": "100.64.0.5", "dst": "fd7a:115c:a1e0::4", "proto": "udp", "port": 5432}',
        '{"src": "nobody", "dst": "db1", "proto": "tcp", "port": 1}',
    ])
    out = wgmesh(["eval", "-i", str(inv)], input=queries)
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x.get("allow") for x in lines] == [True, False, True, None, None]
    assert lines[0]["rule"] == "acls[1]" and lines[0]["line"] == 13
    assert lines[2]["rule"] == "acls[2]"
    assert "different families" in lines[3]["error"]
    assert "not a node" in lines[4]["error"]
    assert out.returncode == 2  # a bad query line is an input error


def test_render_all_check_locked_and_lock(tmp_path):
    inv = copy_example(tmp_path)
    out = wgmesh(["check", "--locked", "-i", str(inv)])
    assert out.returncode == 1 and "out of date" in out.stderr
    assert wgmesh(["lock", "-i", str(inv)]).returncode == 0
    out = wgmesh(["check", "--locked", "-i", str(inv)])
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok: 5 nodes, 3 rules, 5 policy tests passed, 2 ssh tests passed\n"
    dest = tmp_path / "out"
    out = wgmesh(["render", "-i", str(inv), "--all", "--out", str(dest)])
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in dest.iterdir()) == [
        "alice-laptop", "bob-laptop", "db1", "plan.json", "web1"]
    assert (dest / "db1" / "wg0.conf").read_text().startswith("# wgmesh: wg0 on db1.")
    plan = json.loads((dest / "plan.json").read_text())
    assert plan["hosts"]["db1"]["filters"]["in4"]


def test_failing_policy_test_exits_1(tmp_path):
    inv = copy_example(tmp_path)
    pol = inv / "article.hujson"
    pol.write_text(pol.read_text().replace('"deny": ["tag:prod-db:22"]',
                                           '"deny": ["tag:prod-db:5432"]'))
    out = wgmesh(["test", "-i", str(inv)])
    assert out.returncode == 1
    assert "FAIL tests[2]" in out.stdout and "6 passed, 1 failed" in out.stdout
    assert "web1 -> db1:5432 is allowed (by acls[2]), expected deny" in out.stderr


def test_read_only_commands_never_write_the_lockfile(tmp_path):
    """check, render and eval use in-memory addresses for unpinned nodes and say so; only
    `wgmesh lock` (and a site.yml run) writes the lockfile."""
    import shutil

    golden = Path(__file__).resolve().parents[1] / "data" / "golden-mesh"
    for name in ("mesh.yml", "policy.hujson"):
        shutil.copy(golden / name, tmp_path / name)
    query = json.dumps({"src": "bob-laptop", "dst": "web1", "proto": "tcp", "port": 443})
    for args, stdin in ((["check"], None), (["render", "--host", "web1"], None),
                        (["render", "--all", "--out", str(tmp_path / "out")], None),
                        (["render", "--all", "--json"], None), (["eval"], query)):
        out = wgmesh([*args, "-i", str(tmp_path), "--today", "2026-01-01"], input=stdin)
        assert out.returncode == 0, out.stderr
        assert "have no address in" in out.stderr or args == ["eval"]
        assert not (tmp_path / "mesh.lock.yml").exists(), args
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    pinned = wgmesh(["lock", "-i", str(tmp_path)])
    assert pinned.returncode == 0
    locked = (tmp_path / "mesh.lock.yml").read_text()
    # The addresses shown before pinning are the ones pinned.
    for name, host in plan["hosts"].items():
        assert f"ipv4: {host['addresses'][0]}\n" in locked.split(f"  {name}:\n")[1], name


def test_status_outside_a_project_says_so(tmp_path):
    out = wgmesh(["status", "-i", str(tmp_path)], cwd=tmp_path)
    assert out.returncode == 2
    assert "no wgmesh project (ansible.cfg and playbooks/status.yml) here or above" in out.stderr


def test_eval_takes_users_groups_and_tags(tmp_path):
    """A user, group or tag stands for each of its devices: "allow" holds only when every
    pair is allowed; a user with no device is judged as the identity itself."""
    import shutil

    for name in ("mesh.yml", "policy.hujson"):
        shutil.copy(REPO / "tests/data/golden-mesh" / name, tmp_path / name)
    queries = "\n".join([
        '{"src": "group:eng", "dst": "tag:web", "port": 443}',
        '{"src": "group:eng", "dst": "db1", "port": 22}',
        '{"src": "carol@example.com", "dst": "tag:db", "port": 22}',
        '{"src": "dave@example.com", "dst": "web1", "port": 443}',
        '{"src": "tag:web", "dst": "tag:db", "port": 5432}',
        '{"src": "group:nobody", "dst": "db1", "port": 22}',
    ])
    out = wgmesh(["eval", "-i", str(tmp_path), "--today", "2026-01-01"], input=queries)
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    eng_web = lines[0]
    assert eng_web["allow"] is True
    assert [(p["src"], p["dst"], p["rule"]) for p in eng_web["pairs"]] == [
        ("alice-desktop", "web1", "acls[0]"), ("alice-laptop", "web1", "acls[0]"),
        ("bob-laptop", "web1", "acls[0]")]
    assert lines[1]["allow"] is False and not any(p["allow"] for p in lines[1]["pairs"])
    assert lines[2]["allow"] is True and lines[2]["rule"] == "acls[2]"  # one device: no pairs
    assert lines[3]["allow"] is False and "pairs" not in lines[3]
    assert lines[4]["allow"] is True and lines[4]["rule"] == "acls[1]"
    assert lines[5]["error"] == 'line 6: group "group:nobody" is not in the policy\'s groups'
    assert out.returncode == 2


def test_render_shows_every_file_the_bundle_writes(tmp_path):
    """A reviewer using `render --host` (or `render --all --out`) sees each file the host's
    bundle writes: the wg-quick files, the table, names, forwarding, the sshd drop-in and
    the split DNS settings (the example mesh has ssh rules; the lab's, with split DNS, a
    relay and a subnet router)."""
    from wgmesh import render
    from wgmesh.build import build

    (tmp_path / "example").mkdir()
    example = copy_example(tmp_path / "example")
    lab = tmp_path / "lab"
    lab.mkdir()
    dns_rule = '{"action": "accept", "src": ["group:eng"], "dst": ["legacy:53"]},'
    policy = (REPO / "policies/lab.hujson").read_text().replace('"acls": [',
                                                                '"acls": [' + dns_rule, 1)
    (lab / "lab.hujson").write_text(policy)
    (lab / "mesh.yml").write_text(re.sub(
        r"^lockfile: .*$", "lockfile: mesh.lock.yml",
        (REPO / "inventories/lab/mesh.yml").read_text(), flags=re.M).replace(
        "../../policies/lab.hujson", "lab.hujson").replace(
        "network:\n", "network:\n  split_dns:\n    corp.example: [198.51.100.130]\n", 1))
    seen = set()
    for inv, names in ((example, ("db1", "web1")), (lab, ("pub1", "pub3", "home1"))):
        b = build(inv, run_tests=False)
        for name in names:
            bundle = render.bundle(b.compiler.host(name), b.mesh.network, None)
            shown = wgmesh(["render", "-i", str(inv), "--host", name])
            assert shown.returncode == 0, shown.stderr
            for key in ("wg_conf", "hop_conf", "nftables", "hosts_block", "sysctl", "sshd"):
                if bundle[key]:
                    seen.add(key)
                    assert bundle[key] in shown.stdout, (name, key)
            if bundle["dns"]:
                seen.add("dns")
                assert "corp.example 198.51.100.130" in shown.stdout
    assert seen == {"wg_conf", "hop_conf", "nftables", "hosts_block", "sysctl", "sshd", "dns"}
    out = tmp_path / "out"
    assert wgmesh(["render", "-i", str(lab), "--all", "--out", str(out)]).returncode == 0
    assert (out / "home1/split-dns").read_text().endswith("corp.example 198.51.100.130\n")
    assert (out / "pub3/sysctl").read_text() == render.SYSCTL_FORWARDING


def test_commands_find_the_inventory_as_ansible_does(tmp_path):
    """No -i: the inventory of the ansible.cfg Ansible would read (relative to it), or
    $ANSIBLE_INVENTORY; with neither, exit 2 saying how."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "inventories/prod").mkdir(parents=True)
    copy_example(site / "inventories/prod")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([WGMESH, "check"], cwd=site, capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "pass -i DIR" in out.stderr and "Traceback" not in out.stderr
    (site / "ansible.cfg").write_text("[defaults]\ninventory = inventories/prod\n")
    for cwd, extra in ((site, {}), (tmp_path, {"ANSIBLE_CONFIG": str(site / "ansible.cfg")})):
        out = subprocess.run([WGMESH, "check"], cwd=cwd, capture_output=True, text=True,
                             env={**env, **extra})
        assert out.returncode == 0 and out.stdout.startswith("ok: 5 nodes"), out.stderr
    out = subprocess.run([WGMESH, "check"], cwd=tmp_path, capture_output=True, text=True,
                         env={**env, "ANSIBLE_INVENTORY": str(site / "inventories/prod")})
    assert out.returncode == 0, out.stderr


def test_version():
    out = subprocess.run([WGMESH, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "wgmesh 0.1.0\n"


def test_the_readmes_eval_example_answers_as_shown():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    query, shown = re.search(r"echo '(\{.*\})' \\\n\s+\| \.venv/bin/wgmesh eval -i "
                             r"inventories/example\s+# (.*)", readme).groups()
    out = wgmesh(["eval", "-i", "inventories/example"], input=query + "\n",
                 cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert '"allow": true' in shown and answer["allow"] is True


STATUS_PLAY = """- name: Status
  hosts: all
  gather_facts: false
  tasks:
    - name: Judge
      ansible.builtin.fail:
        msg: "{{ inventory_hostname }} %s"
      when: inventory_hostname == 'bad'
"""


@pytest.mark.parametrize(("host", "says", "code"), [
    ("ansible_connection=local", "does not run what the inputs say", 0),  # 'good' passes
    ("ansible_connection=local", "does not run what the inputs say", 5),
    ("ansible_connection=local", "broke in some other way", 6),
    ("ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh", "", 6),  # unreachable
])
def test_status_tells_drift_from_a_host_not_reached(tmp_path, host, says, code):
    """`wgmesh status` exits 5 when the status play finds drift, 6 when a host is not
    reached or the run breaks otherwise, 0 when all is well (README's table)."""
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "ansible.cfg").write_text("[inventory]\nenable_plugins = ini\n")
    (tmp_path / "playbooks/status.yml").write_text(STATUS_PLAY % says)
    name = "good" if code == 0 else "bad"
    (tmp_path / "hosts.ini").write_text(
        f"{name} {host} ansible_python_interpreter={sys.executable}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    out = subprocess.run([WGMESH, "status", "-i", str(tmp_path / "hosts.ini")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == code, out.stdout[-2000:]
    assert "PLAY RECAP" in out.stdout  # the play's own report comes through


def test_check_json_reports_errors_test_failures_and_warnings(tmp_path):
    inv = copy_example(tmp_path)
    ok = wgmesh(["check", "--json", "-i", str(inv)])
    report = json.loads(ok.stdout)
    assert ok.returncode == 0 and report["ok"] is True and report["exit_code"] == 0
    assert (report["nodes"], report["tests_passed"], report["ssh_tests_passed"]) == (5, 5, 2)
    assert report["errors"] == [] and report["test_failures"] == []
    mesh = inv / "mesh.yml"
    good = mesh.read_text()
    mesh.write_text(good.replace("owner: bob@example.com\n    tags", "owner: bob\n    tags"))
    bad = wgmesh(["check", "--json", "-i", str(inv)])
    report = json.loads(bad.stdout)
    assert bad.returncode == 2 and report["exit_code"] == 2 and not report["ok"]
    [error] = report["errors"]
    assert error["path"] == "nodes.web1.owner" and error["line"] > 0
    assert error["message"] == 'owner "bob" is not a user'
    policy = inv / "article.hujson"
    mesh.write_text(good)
    policy.write_text(policy.read_text().replace(
        '{"src": "bob@example.com", "accept": ["tag:prod-web:443"]',
        '{"src": "bob@example.com", "accept": ["tag:prod-db:443"]'))
    failed = wgmesh(["check", "--json", "-i", str(inv)])
    report = json.loads(failed.stdout)
    assert failed.returncode == 1 and report["exit_code"] == 1
    assert [f["message"] for f in report["test_failures"]] == [
        "test failed: bob-laptop -> db1:443 is denied, expected accept"]


def test_the_readme_exit_code_table_is_the_code():
    from wgmesh import cli, plan

    table = dict(re.findall(r"^\| (\d) \| (.+) \|$", (REPO / "README.md").read_text(), re.M))
    assert sorted(map(int, table)) == [0, 1, 2, 3, 4, 5, 6]
    assert (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_INPUT, plan.CHANGED, plan.WIDENED,
            cli.EXIT_DRIFT, cli.EXIT_UNREACHED) == (0, 1, 2, 3, 4, 5, 6)
    assert "drift" in table["5"] and "not reached" in table["6"] and "widens" in table["4"]


def test_shell_completion_completes_commands_options_and_paths(tmp_path):
    """The bash script, sourced in a real bash, completes subcommands, options and
    inventory paths; the zsh one is valid zsh that compinit registers for wgmesh."""
    script = wgmesh(["completion", "bash"]).stdout
    (tmp_path / "wgmesh.bash").write_text(script)
    (tmp_path / "inventories" / "example").mkdir(parents=True)

    def complete(*words: str) -> list[str]:
        words_text = " ".join(f"'{w}'" for w in words)
        out = subprocess.run(
            ["bash", "-c", f"source wgmesh.bash; COMP_WORDS=({words_text}); "
             f"COMP_CWORD={len(words) - 1}; _shtab_wgmesh; printf '%s\\n' \"${{COMPREPLY[@]}}\""],
            cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        return out.split()

    assert complete("wgmesh", "ch") == ["check"]
    assert complete("wgmesh", "check", "--lo") == ["--locked"]
    assert complete("wgmesh", "lab", "") == ["up", "down", "status", "agents", "exec"]
    assert complete("wgmesh", "check", "-i", "inventories/ex") == ["inventories/example"]
    zsh = wgmesh(["completion", "zsh"]).stdout
    (tmp_path / "_wgmesh").write_text(zsh)
    registered = subprocess.run(
        ["zsh", "-f", "-c", f"fpath=({tmp_path} $fpath); autoload -Uz compinit; "
         f"compinit -u -d {tmp_path}/.zcompdump; print ${{_comps[wgmesh]}}"],
        capture_output=True, text=True, check=True).stdout
    assert registered.strip() == "_wgmesh"
