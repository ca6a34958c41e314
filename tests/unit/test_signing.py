"""Changes signed by M of N admins: the commands, and the host module's checks held to the
same verdicts as wgmesh.signing's."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from meshkit import TODAY, make, sign_with_admins

from ansible_collections.wgmesh.mesh.plugins.module_utils import wgmesh_trust
from wgmesh import cli, signing
from wgmesh.build import build
from wgmesh.errors import InputError

NODES = {"a": {"endpoint": "192.0.2.10:51820", "owner": "alice@example.com"},
         "b": {"endpoint": "192.0.2.11:51820", "owner": "bob@example.com"}}
POLICY = {"acls": [{"action": "accept", "src": ["alice@example.com"],
                    "dst": ["bob@example.com:22"]}]}


@pytest.fixture
def mesh(tmp_path):
    """A two-node mesh signed by two of three admins (ann, ben, cat)."""
    make(tmp_path, NODES, POLICY)
    sign_with_admins(tmp_path, tmp_path)
    return tmp_path


def run(*argv: str) -> int:
    return cli.main(list(argv))


def sign_as(tmp: Path, *names: str) -> None:
    for name in names:
        assert run("manifest", "sign", "-i", str(tmp), "--key", str(tmp / f"{name}.key")) == 0


def host_verdict(signed: dict, trust: dict, bundle: dict) -> str:
    """What a host (wgmesh_apply) says of the manifest before it runs ``bundle``."""
    try:
        wgmesh_trust.accept(signed, trust, bundle["name"], signing.bundle_digest(bundle))
    except wgmesh_trust.Refused as exc:
        return str(exc)
    return "ok"


def core_verdict(signed: dict, trust: dict, bundle: dict) -> str:
    try:
        signing.verify(signed, trust, trust)
    except signing.Refused as exc:
        return str(exc)
    listed = signed["manifest"]["bundles"].get(bundle["name"])
    return "ok" if listed == signing.bundle_digest(bundle) else "not listed"


def test_create_sign_verify(mesh, capsys):
    assert run("manifest", "create", "-i", str(mesh), "--today", str(TODAY)) == 0
    data = json.loads((mesh / "manifest.json").read_text())
    body = data["manifest"]
    assert body["serial"] == 1 and body["date"] == str(TODAY) and data["signatures"] == {}
    assert set(body["bundles"]) == {"a", "b"} and set(body["inputs"]) == {
        "mesh", "lockfile", "policy"}
    assert run("manifest", "verify", "-i", str(mesh)) == 1
    assert "0 valid signature(s) (none), 2 needed" in capsys.readouterr().out
    sign_as(mesh, "ann")
    assert run("manifest", "verify", "-i", str(mesh)) == 1
    sign_as(mesh, "cat")
    capsys.readouterr()
    assert run("manifest", "verify", "-i", str(mesh)) == 0
    assert "signed by ann, cat (2 needed)" in capsys.readouterr().out
    # The mesh is compiled as of the manifest's date; the bundle the host gets is listed.
    b = build(mesh)
    assert b.today == TODAY
    bundle = b.bundle("a")
    assert body["bundles"]["a"] == signing.bundle_digest(bundle)
    # A new manifest takes the next serial and drops the old signatures.
    assert run("manifest", "create", "-i", str(mesh)) == 0
    again = json.loads((mesh / "manifest.json").read_text())
    assert again["manifest"]["serial"] == 2 and again["signatures"] == {}
    assert run("manifest", "create", "-i", str(mesh), "--serial", "2") == 2


def test_an_admin_signs_only_what_the_inputs_compile_to(mesh, capsys):
    assert run("manifest", "create", "-i", str(mesh)) == 0
    policy = mesh / "policy.hujson"
    policy.write_text(policy.read_text().replace("bob@example.com:22", "bob@example.com:*"))
    assert run("manifest", "sign", "-i", str(mesh), "--key", str(mesh / "ann.key")) == 1
    assert "policy.hujson is not the file the manifest was made from" in capsys.readouterr().err
    assert json.loads((mesh / "manifest.json").read_text())["signatures"] == {}
    # A key that is not an admin's signs nothing.
    assert run("admin", "keygen", "--out", str(mesh / "eve.key")) == 0
    assert run("admin", "keygen", "--out", str(mesh / "eve.key")) == 2  # never overwritten
    assert run("manifest", "create", "-i", str(mesh)) == 0
    assert run("manifest", "sign", "-i", str(mesh), "--key", str(mesh / "eve.key")) == 2
    assert (mesh / "eve.key").stat().st_mode & 0o777 == 0o600


def test_the_host_module_and_the_core_agree(mesh):
    """One set of rules (module_utils/wgmesh_trust) on both sides; the host's accept adds
    that the manifest lists its bundle. Every refusal below, and the reasons hosts give."""
    assert run("manifest", "create", "-i", str(mesh)) == 0
    sign_as(mesh, "ann", "ben")
    b = build(mesh)
    good = b.manifest
    trust = dict(signing.trust_of(b), serial=0, digest=None)
    bundle = b.bundle("a")
    assert host_verdict(good, trust, bundle) == core_verdict(good, trust, bundle) == "ok"
    accepted = wgmesh_trust.accept(good, trust, "a", signing.bundle_digest(bundle))
    assert accepted["serial"] == 1 and accepted["digest"] == signing.manifest_digest(good)

    def case(change):
        data = copy.deepcopy(good)
        t = copy.deepcopy(trust)
        bun = copy.deepcopy(bundle)
        change(data, t, bun)
        return data, t, bun

    cases = {
        "tampered": case(lambda d, t, bun: d["manifest"]["inputs"].__setitem__("policy", "0" * 64)),
        "too few": case(lambda d, t, bun: d["signatures"].pop("ben")),
        "unknown key": case(lambda d, t, bun: d["signatures"].__setitem__(
            "eve", d["signatures"]["ann"])),
        "removed admin": case(lambda d, t, bun: t["admins"].pop("ann")),
        "older serial": case(lambda d, t, bun: t.__setitem__("serial", 2)),
        "serial reused": case(lambda d, t, bun: (t.__setitem__("serial", 1),
                                                 t.__setitem__("digest", "f" * 64))),
        "bundle not listed": case(lambda d, t, bun: bun.__setitem__("nftables", "table x\n")),
        "bad signature text": case(lambda d, t, bun: d["signatures"].__setitem__("ben", "!!")),
        "admin key not a key": case(lambda d, t, bun: t["admins"].__setitem__("ben", "x")),
        "signer not a name": case(lambda d, t, bun: d["signatures"].__setitem__(
            "eve\nok: forged", d["signatures"]["ann"])),
        "earlier date": case(lambda d, t, bun: t.__setitem__("date", "2099-01-01")),
    }
    for what, (data, t, bun) in cases.items():
        host, core = host_verdict(data, t, bun), core_verdict(data, t, bun)
        assert host != "ok" and core != "ok", what
    assert "2 needed" in host_verdict(*cases["tampered"])
    assert "1 valid signature(s) (ann), 2 needed" in host_verdict(*cases["too few"])
    assert "eve, not an admin" in host_verdict(*cases["unknown key"])
    assert "ann, not an admin" in host_verdict(*cases["removed admin"])
    assert "lower than serial 2" in host_verdict(*cases["older serial"])
    assert "already used" in host_verdict(*cases["serial reused"])
    assert "does not list this bundle" in host_verdict(*cases["bundle not listed"])
    assert "earlier than 2099-01-01" in host_verdict(*cases["earlier date"])
    assert "earlier than 2099-01-01" in core_verdict(*cases["earlier date"])
    assert accepted["date"] == good["manifest"]["date"]  # recorded: the next is no earlier
    # The same manifest again (same serial, same digest) is fine: a second run.
    again = dict(trust, serial=1, digest=accepted["digest"])
    assert host_verdict(good, again, bundle) == core_verdict(good, again, bundle) == "ok"


def test_signing_section_is_checked(tmp_path):
    make(tmp_path, NODES, POLICY)
    data = yaml.safe_load((tmp_path / "mesh.yml").read_text())
    data["signing"] = {"threshold": 3, "admins": {"Ann": "x", "ben": "A" * 43 + "="}}
    (tmp_path / "mesh.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(InputError) as exc:
        build(tmp_path)
    text = "\n".join(map(str, exc.value.problems))
    assert "signing.admins.Ann: is not an admin name" in text
    assert ("signing.threshold: must be a whole number from 1 to the number of admins (1), "
            "not 3") in text


def test_enrolment_pins_a_key_and_makes_a_host_key(tmp_path, capsys):
    make(tmp_path, NODES, POLICY, keys=False)
    keydir = tmp_path / "etc-wireguard"
    assert run("host", "enrol", "--key-dir", str(keydir)) == 0
    public = capsys.readouterr().out.strip()
    assert (keydir / "wg0.key").stat().st_mode & 0o777 == 0o600
    assert run("host", "enrol", "--key-dir", str(keydir)) == 0  # the key is kept
    assert capsys.readouterr().out.strip() == public
    assert run("enrol", "-i", str(tmp_path), "a", public) == 0
    assert public in (tmp_path / "mesh.lock.yml").read_text()
    assert run("enrol", "-i", str(tmp_path), "a", "A" * 43 + "=") == 1  # another key: refused
    assert run("enrol", "-i", str(tmp_path), "zed", public) == 2


def test_check_warns_while_the_manifest_does_not_cover_the_inputs(mesh, capsys):
    assert run("check", "-i", str(mesh)) == 0
    assert "there is no" in capsys.readouterr().err
    assert run("manifest", "create", "-i", str(mesh)) == 0
    sign_as(mesh, "ann")
    capsys.readouterr()
    assert run("check", "-i", str(mesh)) == 0
    assert "1 valid signature(s) (ann), 2 needed" in capsys.readouterr().err
    sign_as(mesh, "ben")
    capsys.readouterr()
    assert run("check", "-i", str(mesh)) == 0
    assert "signed mesh" not in capsys.readouterr().err
    policy = mesh / "policy.hujson"
    policy.write_text(policy.read_text().replace("bob@example.com:22", "bob@example.com:*"))
    assert run("check", "-i", str(mesh)) == 0
    assert "policy.hujson is not the file the manifest was made from" in capsys.readouterr().err


def test_host_enrol_installs_a_trust_once_and_refuses_a_bad_one(mesh, tmp_path, capsys):
    assert run("manifest", "trust", "-i", str(mesh)) == 0
    (tmp_path / "trust.json").write_text(capsys.readouterr().out)
    (tmp_path / "bad.json").write_text('{"admins": {"ann": "x"}, "threshold": 1}')
    host = ["host", "enrol", "--key-dir", str(tmp_path / "keys"), "--trust-file",
            str(tmp_path / "etc/trust.json"), "--trust"]
    assert run(*host, str(tmp_path / "bad.json")) == 2
    assert not (tmp_path / "keys").exists()  # nothing written
    assert run(*host, str(tmp_path / "trust.json")) == 0
    installed = json.loads((tmp_path / "etc/trust.json").read_text())
    assert installed["threshold"] == 2 and installed["serial"] == 0
    assert sorted(installed["admins"]) == ["ann", "ben", "cat"]
    (tmp_path / "one.json").write_text(json.dumps({"admins": {"eve": installed["admins"]["ann"]},
                                                   "threshold": 1}))
    assert run(*host, str(tmp_path / "one.json")) == 0  # kept: only a manifest changes it
    assert json.loads((tmp_path / "etc/trust.json").read_text()) == installed
    assert run("manifest", "create", "-i", str(mesh)) == 0
    sign_as(mesh, "ann", "ben")
    verify = ["manifest", "verify", "-i", str(mesh), "--trust"]
    assert run(*verify, str(tmp_path / "etc/trust.json")) == 0
    assert run(*verify, str(tmp_path / "one.json")) == 1  # ann and ben are not its admins
    assert run(*verify, str(tmp_path / "bad.json")) == 2


def test_plan_shows_the_signatures_and_flags_more_signers_as_widening(mesh, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(mesh, base)
    assert run("plan", "-i", str(mesh), "--base", str(base)) == 0
    assert "no manifest yet" in capsys.readouterr().out
    assert run("manifest", "create", "-i", str(mesh)) == 0
    sign_as(mesh, "ann")
    capsys.readouterr()
    assert run("plan", "-i", str(mesh), "--base", str(base)) == 0
    out = capsys.readouterr().out
    assert "manifest serial 1 states these inputs; hosts refuse it: `1 valid signature(s)" in out
    sign_as(mesh, "ben")
    capsys.readouterr()
    assert run("plan", "-i", str(mesh), "--base", str(base)) == 0
    assert "signed by `ann`, `ben` (threshold 2)" in capsys.readouterr().out
    # One more admin and a lower threshold: more people can change access.
    data = yaml.safe_load((mesh / "mesh.yml").read_text())
    data["signing"]["threshold"] = 1
    data["signing"]["admins"]["dan"] = data["signing"]["admins"].pop("cat")
    (mesh / "mesh.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert run("plan", "-i", str(mesh), "--base", str(base)) == 4
    out = capsys.readouterr().out
    assert "threshold 2 -> 1" in out and "admins added (or with a new key): `dan`" in out
    assert "admins removed: `cat`" in out and "does not state these inputs" in out


def test_a_key_changed_in_the_lockfile_needs_a_new_manifest(mesh, capsys):
    """Node keys are signed like access rules: the lockfile is one of the stated inputs."""
    assert run("manifest", "create", "-i", str(mesh)) == 0
    sign_as(mesh, "ann", "ben")
    lock = mesh / "mesh.lock.yml"
    b = build(mesh)
    old = b.alloc["a"].public_key
    lock.write_text(lock.read_text().replace(old, "A" * 43 + "="))
    capsys.readouterr()
    assert run("manifest", "verify", "-i", str(mesh)) == 1
    assert "mesh.lock.yml is not the file the manifest was made from" in capsys.readouterr().out


def test_one_key_under_two_names_is_refused_as_a_trust_on_host_and_controller(
        mesh, tmp_path, capsys):
    """Otherwise one admin's signature, copied under a second name, would count twice."""
    assert run("manifest", "trust", "-i", str(mesh)) == 0
    ann = json.loads(capsys.readouterr().out)["admins"]["ann"]
    twice = {"admins": {"ann": ann, "eve": ann}, "threshold": 2}
    (tmp_path / "twice.json").write_text(json.dumps(twice))
    assert run("host", "enrol", "--key-dir", str(tmp_path / "keys"), "--trust-file",
               str(tmp_path / "etc/trust.json"), "--trust", str(tmp_path / "twice.json")) == 2
    assert "each key once" in capsys.readouterr().err
    assert not (tmp_path / "etc/trust.json").exists()
    with pytest.raises(wgmesh_trust.Refused, match="each with a key of its own"):
        wgmesh_trust.checked_trust(twice)
    assert wgmesh_trust.checked_trust({"admins": {"ann": ann}, "threshold": 1})["threshold"] == 1


def git_commit(repo: Path, message: str) -> None:
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", message]):
        if args[0] == "init" and (repo / ".git").exists():
            continue
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                        "user.email=t@example.com", *args], check=True, capture_output=True)


def test_a_manifest_never_goes_back_in_time_and_its_signers_see_the_change(mesh, capsys):
    """An earlier date would bring an expired node back: create refuses it, hosts refuse it
    (test_the_host_module_and_the_core_agree), and a signer is shown the date and what the
    manifest changes against the committed one."""
    assert run("manifest", "create", "-i", str(mesh), "--today", "2026-07-01") == 0
    sign_as(mesh, "ann", "ben")
    git_commit(mesh, "serial 1")
    capsys.readouterr()
    assert run("manifest", "create", "-i", str(mesh), "--today", "2026-03-01") == 2
    assert "earlier than the current manifest's date (2026-07-01)" in capsys.readouterr().err
    policy = mesh / "policy.hujson"
    policy.write_text(policy.read_text().replace("bob@example.com:22", "bob@example.com:*"))
    assert run("manifest", "create", "-i", str(mesh), "--today", "2026-07-02") == 0
    capsys.readouterr()
    sign_as(mesh, "ann")
    out = capsys.readouterr().out
    assert "manifest serial 2, dated 2026-07-02 (hosts judge node expiry as of this date)" in out
    assert "against serial 1, dated 2026-07-01" in out and "date 2026-07-01 -> 2026-07-02" in out
    assert "policy changed" in out and "hosts whose bundle changes: a, b" in out
    assert "mesh changed" not in out and "lockfile changed" not in out


def test_plan_judges_expiry_on_the_manifest_date(mesh, tmp_path, capsys):
    """The plan compiles each state as its hosts will: a signed mesh as of its manifest's
    date. A head whose manifest is dated before a node's expiry brings that node back, and
    the plan says so and calls it widening."""
    data = yaml.safe_load((mesh / "mesh.yml").read_text())
    data["nodes"]["b"]["expires"] = "2026-06-01"
    (mesh / "mesh.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    base = tmp_path / "base"
    shutil.copytree(mesh, base)
    assert run("manifest", "create", "-i", str(base), "--today", "2026-07-01") == 0
    assert run("manifest", "create", "-i", str(mesh), "--today", "2026-05-01") == 0
    capsys.readouterr()
    assert run("plan", "-i", str(mesh), "--base", str(base), "--json") == 4
    plan = json.loads(capsys.readouterr().out)
    assert [(i["node"], i["change"], i["widens"]) for i in plan["identities"]] == [
        ("b", "is no longer expired", True)]
