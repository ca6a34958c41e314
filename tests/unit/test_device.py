"""`wgmesh device`: enrol a device wgmesh does not manage and export what its app imports."""

import base64
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import wgstrict
import yaml
from meshkit import wgmesh
from nacl.public import PrivateKey

REPO = Path(__file__).resolve().parents[2]
KEYS = {"web1": "Q0VCv1s6m1Jd9u8Tn6j4rQ1y6n3fM2b0o0hC3Qx3v2M=",
        "db1": "mS7m3x5W1kq7n4s0aBzL8Yw2sQ1hC9rT4uV6yX0zA2c="}


def wg(*args: str, inv: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return wgmesh([*args, "-i", str(inv), "--today", "2026-01-01"], input=stdin)


@pytest.fixture
def inv(tmp_path):
    """The example mesh, its servers' keys pinned (as a site.yml run would have)."""
    shutil.copy(REPO / "inventories/example/mesh.yml", tmp_path / "mesh.yml")
    shutil.copy(REPO / "policies/article.hujson", tmp_path / "article.hujson")
    text = (tmp_path / "mesh.yml").read_text().replace("../../policies/", "")
    (tmp_path / "mesh.yml").write_text(text)
    assert wg("lock", inv=tmp_path).returncode == 0
    lock = yaml.safe_load((tmp_path / "mesh.lock.yml").read_text())
    for node, key in KEYS.items():
        lock["nodes"][node]["public_key"] = key
    (tmp_path / "mesh.lock.yml").write_text(yaml.safe_dump(lock))
    return tmp_path


def config_part(stdout: str) -> str:
    """The configuration printed before the notes and the QR code."""
    return stdout.split("\n\n# not reachable", 1)[0].split("\n█", 1)[0].rstrip("\n") + "\n"


def test_add_pins_only_the_public_key_and_prints_the_config_once(inv, tmp_path):
    before = (inv / "mesh.yml").read_text()
    key_file, png, svg = tmp_path / "dana.key", tmp_path / "dana.png", tmp_path / "dana.svg"
    out = wg("device", "add", "dana-tablet", "--owner", "carol@example.com", "--key-out",
             str(key_file), "--qr-png", str(png), "--qr-svg", str(svg), inv=inv)
    assert out.returncode == 0, out.stderr
    private = key_file.read_text().strip()
    public = base64.b64encode(bytes(PrivateKey(base64.b64decode(private)).public_key)).decode()
    # mesh.yml: the same file (comments and all) with the device appended; no private key.
    after = (inv / "mesh.yml").read_text()
    assert after.startswith(before)
    assert after[len(before):] == ("  dana-tablet:\n    owner: carol@example.com\n"
                                   f"    managed: false\n    public_key: {public}\n")
    assert private not in after and private not in (inv / "mesh.lock.yml").read_text()
    assert "dana-tablet" in yaml.safe_load((inv / "mesh.lock.yml").read_text())["nodes"]
    for secret in (key_file, png, svg):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert png.read_bytes().startswith(b"\x89PNG") and b"<svg" in svg.read_bytes()
    assert "█" in out.stdout  # the QR code in the terminal

    conf = wgstrict.parse(config_part(out.stdout), device=True)
    assert conf["interface"]["PrivateKey"] == [private]
    assert "PostUp" not in config_part(out.stdout) and "table inet" not in out.stdout
    peers = {p["PublicKey"][0]: p for p in conf["peers"]}
    # carol is on call: prod-db on 5432 and 22; she is no engineer, so not prod-web.
    assert set(peers) == {KEYS["db1"]}
    plan = json.loads(wg("render", "--all", "--json", inv=inv).stdout)
    db1 = plan["hosts"]["db1"]["addresses"]
    assert peers[KEYS["db1"]]["AllowedIPs"] == [f"{db1[0]}/32, {db1[1]}/128"]
    assert peers[KEYS["db1"]]["Endpoint"] == ["192.0.2.12:51820"]
    assert "its peers filter" in out.stdout
    # db1 learns the device (its filter admits it on 5432 and 22 only).
    db1_peers = {p["name"] for p in plan["hosts"]["db1"]["peers"]}
    assert "dana-tablet" in db1_peers

    # Later exports: with the key file, the same configuration; without it, no key, no QR.
    again = wg("device", "config", "dana-tablet", "--key-file", str(key_file), "--no-qr",
               inv=inv)
    assert again.returncode == 0 and config_part(again.stdout) == config_part(out.stdout)
    keyless = wg("device", "config", "dana-tablet", inv=inv)
    assert keyless.returncode == 0 and "PrivateKey =" not in keyless.stdout
    assert "█" not in keyless.stdout
    shown = wg("render", "--host", "dana-tablet", inv=inv)
    assert shown.returncode == 0 and "PostUp" not in shown.stdout
    assert config_part(keyless.stdout) in shown.stdout


def test_refusals_leave_mesh_yml_as_it_was(inv, tmp_path):
    before = (inv / "mesh.yml").read_text()
    taken = wg("device", "add", "carol-phone", "--owner", "carol@example.com", inv=inv)
    assert taken.returncode == 2 and "nodes.carol-phone: already exists" in taken.stderr
    # carol may not assign tag:prod-db: the mesh is checked with the device, then undone.
    tagged = wg("device", "add", "dana-tablet", "--owner", "carol@example.com", "--tag",
                "tag:prod-db", inv=inv)
    assert tagged.returncode == 2 and 'may not assign "tag:prod-db"' in tagged.stderr
    bad = wg("device", "add", "Dana Tablet", "--owner", "carol@example.com", inv=inv)
    assert bad.returncode == 2 and "is not a node name" in bad.stderr
    assert (inv / "mesh.yml").read_text() == before
    other = tmp_path / "other.key"
    other.write_text(base64.b64encode(bytes(PrivateKey.generate())).decode() + "\n")
    wrong = wg("device", "config", "carol-phone", "--key-file", str(other), inv=inv)
    assert wrong.returncode == 2 and "is not carol-phone's key" in wrong.stderr
    managed = wg("device", "config", "db1", inv=inv)
    assert managed.returncode == 2 and "is not a device" in managed.stderr


def test_peers_behind_nat_are_named_not_relayed(tmp_path):
    """A device cannot run the relay hop: a pair of it and a node behind NAT has no path,
    so neither side gets a peer entry, and the export names such nodes."""
    from wgmesh import device
    from wgmesh.build import build

    shutil.copytree(REPO / "tests/data/golden-mesh", tmp_path / "m")
    with (tmp_path / "m/mesh.yml").open("a") as f:  # carol's laptop, behind NAT too
        f.write("  carol-laptop:\n    ansible_host: 198.51.100.9\n"
                "    owner: carol@example.com\n")
    b = build(tmp_path / "m", run_tests=False)
    phone = b.compiler.host("carol-phone")
    assert all(p.connection != "relay" for p in phone.peers)
    assert phone.unreachable == ("carol-laptop",)  # autogroup:self relates them
    text, left_out = device.client_config(phone, b.mesh.network, None)
    for name in phone.unreachable:
        assert f"{name}: both sides are behind NAT" in "\n".join(left_out)
        assert f"# {name} " not in text
        assert "carol-phone" not in {p.name for p in b.compiler.host(name).peers}
    assert any("a device wgmesh does not manage cannot use one" in w
               for w in b.compiler.warnings)


def test_a_key_file_that_cannot_be_new_changes_nothing(inv, tmp_path):
    """--key-out (and a QR code file) must be a new file in a folder that exists: checked
    before mesh.yml or the lockfile change, so an input is never overwritten with a key."""
    inputs = {p: p.read_bytes() for p in (inv / "mesh.yml", inv / "mesh.lock.yml")}
    for option, target, says in (
            ("--key-out", tmp_path / "missing/dana.key", "does not exist"),
            ("--key-out", inv / "mesh.yml", "exists already"),
            ("--qr-png", inv / "mesh.lock.yml", "exists already")):
        out = wg("device", "add", "dana-tablet", "--owner", "carol@example.com", option,
                 str(target), inv=inv)
        assert out.returncode == 2 and says in out.stderr, (option, out.stderr)
        assert "Traceback" not in out.stderr
        assert {p: p.read_bytes() for p in inputs} == inputs
    assert not (tmp_path / "missing").exists()
    # A device the mesh refuses (a tag its owner may not assign) leaves no key file behind.
    key = tmp_path / "dana.key"
    out = wg("device", "add", "dana-tablet", "--owner", "carol@example.com", "--tag",
             "tag:prod-db", "--key-out", str(key), inv=inv)
    assert out.returncode == 2 and not key.exists(), out.stderr
    assert {p: p.read_bytes() for p in inputs} == inputs


def test_a_configuration_too_large_for_a_qr_code_is_refused_before_anything_is_written(
        tmp_path):
    """30 servers the owner may reach make a configuration no QR code holds: `device add`
    says so and what to do, mesh.yml and the lockfile stay byte for byte, no key file is
    left; with --no-qr the same device is added and its configuration printed."""
    nodes = "".join(f"  srv{i}:\n    ansible_host: 192.0.2.{i + 10}\n"
                    f"    endpoint: 192.0.2.{i + 10}:51820\n    tags: [tag:srv]\n"
                    for i in range(30))
    (tmp_path / "policy.hujson").write_text(
        '{"tagOwners": {"tag:srv": []}, '
        '"acls": [{"action": "accept", "src": ["ann@example.com"], "dst": ["tag:srv:443"]}]}')
    (tmp_path / "mesh.yml").write_text(f"plugin: wgmesh\npolicy: policy.hujson\nnodes:\n{nodes}")
    assert wg("lock", inv=tmp_path).returncode == 0
    lock = yaml.safe_load((tmp_path / "mesh.lock.yml").read_text())
    for node in lock["nodes"].values():
        node["public_key"] = base64.b64encode(
            bytes(PrivateKey.generate().public_key)).decode()
    (tmp_path / "mesh.lock.yml").write_text(yaml.safe_dump(lock))
    before = {f: (tmp_path / f).read_bytes() for f in ("mesh.yml", "mesh.lock.yml")}
    key, png = tmp_path / "ann.key", tmp_path / "ann.png"
    # A QR code in the terminal (the default), or only as a PNG file.
    for extra in ([], ["--no-qr", "--qr-png", str(png)]):
        out = wg("device", "add", "ann-phone", "--owner", "ann@example.com", "--key-out",
                 str(key), *extra, inv=tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "too large for one QR code" in out.stderr and "--no-qr --key-out" in out.stderr
        assert out.stdout == "" and not key.exists() and not png.exists()
        assert {f: (tmp_path / f).read_bytes() for f in before} == before
    out = wg("device", "add", "ann-phone", "--owner", "ann@example.com", "--key-out", str(key),
             "--no-qr", inv=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("[Peer]") == 30 and "█" not in out.stdout


def test_a_device_enrolled_before_its_peers_have_keys_is_told_how_to_get_them_later(tmp_path):
    """The servers have not run site.yml: the configuration leaves them out, and `device
    add` says so, and how to export the whole configuration once they have (with the key
    kept where the user chose)."""
    shutil.copy(REPO / "inventories/example/mesh.yml", tmp_path / "mesh.yml")
    shutil.copy(REPO / "policies/article.hujson", tmp_path / "article.hujson")
    text = (tmp_path / "mesh.yml").read_text().replace("../../policies/", "")
    (tmp_path / "mesh.yml").write_text(text)
    key = tmp_path / "dana.key"
    out = wg("device", "add", "dana-phone", "--owner", "alice@example.com", "--no-qr",
             "--key-out", str(key), inv=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (f"warning: 2 of its peers have no public key yet (their hosts have not run "
            f"site.yml), so this configuration leaves them out; the key is in {key}; after "
            "site.yml, `wgmesh device config dana-phone --key-file FILE` gives the whole "
            "configuration") in out.stderr
    assert "[Peer]" not in out.stdout
    # The servers run site.yml (their keys are pinned); the export now holds both peers.
    lock = yaml.safe_load((tmp_path / "mesh.lock.yml").read_text())
    for node, public in KEYS.items():
        lock["nodes"][node]["public_key"] = public
    (tmp_path / "mesh.lock.yml").write_text(yaml.safe_dump(lock))
    full = wg("device", "config", "dana-phone", "--key-file", str(key), "--no-qr",
              inv=tmp_path)
    assert full.returncode == 0, full.stderr
    assert full.stdout.count("[Peer]") == 2 and KEYS["web1"] in full.stdout
    assert f"PrivateKey = {key.read_text().strip()}" in full.stdout
