"""Hostile input (issue 9): no value in any file, and no key a host reports, gets anything
into a rendered file but what the grammar allows, and nothing ends in a traceback.

The property test puts generated hostile values into every field of mesh.yml, the lockfile
and the policy (one at a time, into the golden mesh), runs ``wgmesh render --all --out`` in
this process, and asserts the exit code is 0, 1 or 2; whenever files are rendered, a strict
wg-quick reader (tests/unit/wgstrict.py) must accept every one of them. The named tests
below cover what does not fit a single field: file size, depth, aliases, encoding."""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshkit import fake_key
from wgstrict import parse

from wgmesh import cli, hujson, limits
from wgmesh.build import KeyMismatch, build
from wgmesh.errors import InputError

HERE = Path(__file__).resolve().parents[1]
GOLDEN = HERE / "data" / "golden-mesh"
KEY = fake_key("x")


def _base() -> tuple[dict, dict, dict]:
    """The golden mesh, its policy and a lockfile with every managed node's key pinned."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("mesh.yml", "policy.hujson"):
            shutil.copy(GOLDEN / name, tmp / name)
        b = build(tmp)
        for name, node in b.mesh.nodes.items():
            if node.managed:
                b.lock.pin_key(name, fake_key(name))
        b.lock.save()
        mesh = yaml.safe_load((tmp / "mesh.yml").read_text())
        lock = yaml.safe_load((tmp / "mesh.lock.yml").read_text())
    policy = hujson.loads((GOLDEN / "policy.hujson").read_text()).value
    return mesh, policy, lock


MESH, POLICY, LOCK = _base()

# Values that have broken wgmesh, or would break a wg-quick file, an nft file or /etc/hosts.
NASTY = [
    KEY + "\n[Interface]\nPreUp = touch /tmp/x", KEY[:-1] + "\n", f" {KEY}", KEY + "\r",
    "fd7a:115c:a1e0::5%x\n203.0.113.66 login.bank.example", "fd7a:115c:a1e0::5%eth0",
    "fe80::1%eth0/64", "100.64.0.9\n", "web1\n", "wg0\n", "wg0\"; }", "٥١٨٢٠", "²", "1" * 5000,
    "0.0.0.0/0", "0.0.0.0/1", "128.0.0.0/1", "::/0", "100.64.0.0", "100.127.255.255",
    "100.64.0.4/32", "fd7a:115c:a1e1::/80", "192.0.2.11:51820\nPostUp = id",
    "[::1]:51820", "tag:web\n", "alice@example.com\n", "x" * 300, "\u2028", "\x00", "#",
    "a;b", "$(id)", "`id`", "${IFS}", "-oProxyCommand=id", "wg-abcdefghijkl", "2026-02-30",
]
SCALARS = st.one_of(st.sampled_from(NASTY), st.text(max_size=40), st.integers(),
                    st.booleans(), st.none(), st.floats(allow_nan=False))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.text(max_size=8), SCALARS, max_size=2))
KEYS = st.one_of(st.sampled_from(NASTY), st.text(max_size=20))

# Where a value can go: (document, path). The last element of a path is a key to set, or
# "[key]" to rename that key (the value stays).
MESH_FIELDS = [("mesh", ("network", k)) for k in (
    "interface", "listen_port", "ipv4_pool", "ipv6_pool", "domain", "mtu", "keepalive",
    "relay_port", "relay_pool", "management_networks")] + [
    ("mesh", ("nodes", node, k)) for node in ("web1", "alice-laptop", "office-gw")
    for k in ("owner", "tags", "address", "address6", "ansible_host", "endpoint", "site",
              "lan_address", "listen_port", "advertise_routes", "approved_routes",
              "use_exit_node", "failover_for", "expires", "description", "relay", "managed",
              "advertise_exit_node", "route_snat")] + [
    ("mesh", ("nodes", "carol-phone", "public_key")), ("mesh", ("nodes", "[web1]")),
    ("mesh", ("network", "management_networks", 0)), ("mesh", ("nodes", "web1", "tags", 0)),
    ("mesh", ("nodes", "office-gw", "advertise_routes", 1))]
LOCK_FIELDS = [("lock", ("nodes", "web1", k)) for k in ("ipv4", "ipv6", "public_key")] + [
    ("lock", ("nodes", "[db1]")), ("lock", ("nodes",)), ("lock", ("version",)),
    ("lock", ("retired",)), ("lock", ("nodes", "exit1"))]
POLICY_FIELDS = [("policy", p) for p in (
    ("groups", "group:eng", 0), ("groups", "[group:ops]"), ("hosts", "legacy"),
    ("hosts", "[legacy]"), ("tagOwners", "[tag:web]"), ("tagOwners", "tag:db"),
    ("acls", 0, "src", 0), ("acls", 0, "dst", 0), ("acls", 1, "proto"),
    ("grants", 0, "ip", 0), ("grants", 0, "dst", 0), ("autoApprovers", "routes"),
    ("autoApprovers", "exitNode", 0), ("tests", 0, "src"), ("tests", 0, "accept", 0),
    ("tests", 1, "deny", 0))]
FIELDS = MESH_FIELDS + LOCK_FIELDS + POLICY_FIELDS


def put(doc, path, value):
    """Set (or rename, for "[key]") the element at ``path``; ignore paths that are gone."""
    *parents, last = path
    for p in parents:
        try:
            doc = doc[p]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(last, str) and last.startswith("[") and isinstance(doc, dict):
        old = last[1:-1]
        if old in doc:
            doc[value] = doc.pop(old)
    elif isinstance(doc, dict) or (isinstance(doc, list) and isinstance(last, int)
                                   and last < len(doc)):
        doc[last] = value


def render_all(tmp: Path) -> int:
    return cli.main(["render", "-i", str(tmp), "--all", "--out", str(tmp / "out"),
                     "--today", "2026-01-01"])


def assert_rendered_files_are_clean(out: Path) -> None:
    for conf in out.glob("*/*.conf"):
        parse(conf.read_text())  # raises on anything wgmesh does not write
    for hosts in out.glob("*/hosts"):
        for line in hosts.read_text().splitlines():
            assert re.fullmatch(r"[0-9a-f.:]+\t[a-z0-9.-]+ [a-z0-9.-]+", line), line
    for nft in out.glob("*/nftables.nft"):
        assert re.fullmatch(r"[\x20-\x7e\n]*", nft.read_text())
    for other in [*out.glob("*/sysctl"), *out.glob("*/sshd"), *out.glob("*/split-dns")]:
        assert re.fullmatch(r"[\x20-\x7e\n]*", other.read_text()), other


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(FIELDS), value=VALUES, key=KEYS)
def test_hostile_values_in_any_field_never_reach_a_rendered_file(field, value, key, capsys):
    docs = {"mesh": copy.deepcopy(MESH), "policy": copy.deepcopy(POLICY),
            "lock": copy.deepcopy(LOCK)}
    kind, path = field
    renaming = isinstance(path[-1], str) and path[-1].startswith("[")
    put(docs[kind], path, key if renaming else value)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "mesh.yml").write_text(yaml.safe_dump(docs["mesh"], allow_unicode=True))
        (tmp / "policy.hujson").write_text(json.dumps(docs["policy"]))
        (tmp / "mesh.lock.yml").write_text(yaml.safe_dump(docs["lock"], allow_unicode=True))
        code = render_all(tmp)
        err = capsys.readouterr().err
        if code == 0:
            assert_rendered_files_are_clean(tmp / "out")
        else:
            # Refused as the inputs' error (2) or a failing policy test (1), naming the file
            # and the place, before anything is written.
            assert code in (1, 2), (code, err)
            assert re.search(r"(mesh\.yml|policy\.hujson|mesh\.lock\.yml):\d+:\d+", err), err
            assert not (tmp / "out").exists()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(key=st.one_of(st.sampled_from(NASTY), st.text(max_size=50), st.none(),
                     st.just(fake_key("web1")), st.just(fake_key("db1"))))
def test_a_reported_key_is_pinned_only_when_it_is_a_key(key, tmp_path_factory):
    """What wgmesh_compile does with the public key a host reports."""
    tmp = tmp_path_factory.mktemp("report")
    for name in ("mesh.yml", "policy.hujson"):
        shutil.copy(GOLDEN / name, tmp / name)
    try:
        b = build(tmp, run_tests=False, keys={"web1": key})
    except InputError as exc:
        assert "is not a WireGuard public key" in str(exc) or "same public key" in str(exc)
        return
    except KeyMismatch:
        pytest.fail("no key was pinned before")
    assert key in (None, "", fake_key("web1"), fake_key("db1")), key
    b.lock.save()
    assert render_all(tmp) == 0
    assert_rendered_files_are_clean(tmp / "out")


def test_a_reported_key_that_is_another_nodes_key_is_refused(tmp_path):
    for name in ("mesh.yml", "policy.hujson"):
        shutil.copy(GOLDEN / name, tmp_path / name)
    build(tmp_path, run_tests=False, keys={"db1": fake_key("db1")}).lock.save()
    with pytest.raises(InputError, match="web1: has the same public key as node db1"):
        build(tmp_path, run_tests=False, keys={"web1": fake_key("db1")})


def golden_copy(tmp: Path) -> Path:
    for name in ("mesh.yml", "policy.hujson"):
        shutil.copy(GOLDEN / name, tmp / name)
    return tmp


def check(tmp: Path, capsys) -> tuple[int, str]:
    code = cli.main(["check", "-i", str(tmp), "--today", "2026-01-01"])
    return code, capsys.readouterr().err


def test_yaml_nested_deeper_than_the_limit(tmp_path, capsys):
    golden_copy(tmp_path)
    text = (tmp_path / "mesh.yml").read_text()
    deep = "[" * 5000 + "]" * 5000
    (tmp_path / "mesh.yml").write_text(text.replace("    site: home\n",
                                                    f"    site: home\n    description: {deep}\n",
                                                    1))
    code, err = check(tmp_path, capsys)
    assert code == 2
    assert f"nested more than {limits.MAX_DEPTH} levels deep" in err
    assert re.match(r"error: \S+mesh.yml:\d+:\d+: ", err)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    golden_copy(tmp_path)
    layers = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 40):
        layers.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 30) + "]")
    bomb = "\n".join(layers) + "\n"
    (tmp_path / "mesh.yml").write_text(bomb + (tmp_path / "mesh.yml").read_text())
    start = time.monotonic()
    code, err = check(tmp_path, capsys)
    assert time.monotonic() - start < 5
    assert code == 2 and f"more than {limits.MAX_ALIASES} aliases" in err


def test_hujson_nested_deeper_than_the_limit(tmp_path, capsys):
    golden_copy(tmp_path)
    (tmp_path / "policy.hujson").write_text('{"x": ' + "[" * 500 + "]" * 500 + "}")
    code, err = check(tmp_path, capsys)
    assert code == 2 and f"nested more than {limits.MAX_DEPTH} levels deep" in err


def test_files_that_are_not_utf8(tmp_path, capsys):
    golden_copy(tmp_path)
    (tmp_path / "mesh.yml").write_bytes(b"plugin: wgmesh\nnodes:\n  a\xff: {}\n")
    code, err = check(tmp_path, capsys)
    assert code == 2 and "mesh.yml:3:4: not UTF-8 text" in err
    golden_copy(tmp_path)
    (tmp_path / "policy.hujson").write_bytes(b'{"groups": {"\xfe": []}}')
    code, err = check(tmp_path, capsys)
    assert code == 2 and "policy.hujson:1:14: not UTF-8 text" in err


def test_a_number_too_long_to_convert(tmp_path, capsys):
    golden_copy(tmp_path)
    text = (tmp_path / "mesh.yml").read_text()
    (tmp_path / "mesh.yml").write_text(text.replace("keepalive: 20", "keepalive: " + "7" * 5000))
    code, err = check(tmp_path, capsys)
    assert code == 2 and "not valid YAML" in err


def test_files_over_the_size_limit(tmp_path, capsys, monkeypatch):
    golden_copy(tmp_path)
    monkeypatch.setattr(limits, "MAX_POLICY_BYTES", 100)
    code, err = check(tmp_path, capsys)
    assert code == 2 and "more than the limit of 100" in err


def test_a_ruleset_over_the_output_limit(tmp_path, capsys):
    golden_copy(tmp_path)
    text = (tmp_path / "policy.hujson").read_text()
    ports = ",".join(str(p) for p in range(1, 65536, 2))
    (tmp_path / "policy.hujson").write_text(
        text.replace('"dst": ["tag:web:80,443"]', f'"dst": ["tag:web:{ports}"]'))
    code, err = check(tmp_path, capsys)
    assert code == 2
    assert re.search(r"host \S+ would get \d+ filter elements, more than the limit of "
                     rf"{limits.MAX_HOST_ELEMENTS}", err)


def test_errors_print_hostile_text_on_one_line(tmp_path, capsys):
    """An error names the offending value; a value must not forge lines in a CI log."""
    golden_copy(tmp_path)
    text = (tmp_path / "mesh.yml").read_text()
    (tmp_path / "mesh.yml").write_text(
        text.replace("site: home", 'site: "home\\n::error::forged\\r\\u2028x"', 1))
    code, err = check(tmp_path, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and "\\n::error::forged\\r\\u2028x" in err


def test_renderers_refuse_values_the_loaders_should_have_refused(tmp_path):
    """Defence in depth: a value that got past the loaders still never reaches a file."""
    import dataclasses

    from wgmesh import render

    b = build(golden_copy(tmp_path), run_tests=False)
    host = b.compiler.host("web1")
    net = b.mesh.network
    for bad in ("db1\n[Interface]", "db1 #", 'db1"', "db1;x", "db\u00e91"):
        peer = dataclasses.replace(host.peers[0], name=bad, public_key=fake_key("p"))
        with pytest.raises(render.RenderError):
            render.wg_quick(dataclasses.replace(host, peers=[peer]), net)
    peer = dataclasses.replace(host.peers[0], public_key=KEY + "\nPostUp = id")
    with pytest.raises(render.RenderError):
        render.wg_quick(dataclasses.replace(host, peers=[peer]), net)
    with pytest.raises(render.RenderError):
        render.nftables(host, dataclasses.replace(net, interface='wg0" accept'))
    with pytest.raises(render.RenderError):
        render.hosts_block(dataclasses.replace(host, names=[("100.64.0.1", ("a\nb", "c"))]))


def test_relay_addresses_must_not_collide(tmp_path, capsys):
    golden_copy(tmp_path)
    text = (tmp_path / "mesh.yml").read_text()
    pin = "    site: home\n    address6: 'fd7a:115c:a1e0:1::5'\n"
    text = text.replace("    site: home\n", pin, 1)
    text = text.replace("  bob-laptop:\n", "  bob-laptop:\n    address6: 'fd7a:115c:a1e0::5'\n")
    (tmp_path / "mesh.yml").write_text(text)
    code, err = check(tmp_path, capsys)
    assert code == 2 and "its relay address fd7a:115c:a1e1::5 is also node" in err


def test_host_modules_redact_keys_from_command_errors():
    from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_runner import redact

    err = f"Line unrecognized: `PrivateKey={KEY}'\nConfiguration parsing error"
    assert KEY not in redact(err) and "(key redacted)" in redact(err)
