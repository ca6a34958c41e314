"""A device wgmesh does not manage, on the lab: enrolled with `wgmesh device add`, its
configuration exported and run by a plain `wg-quick` on a host outside the mesh (web), it
reaches what the policy lets its owner reach, and nothing else: its peers filter for it."""

from __future__ import annotations

import pytest
from meshlab import MeshLab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("devices")
    (tmp / "inv").mkdir()
    lab = MeshLab(tmp / "inv", "wgv")
    lab.lab.down()
    lab.lab.up()
    key = tmp / "phone1.key"
    added = lab.wgmesh("device", "add", "phone1", "--owner", "carol@example.com",
                       "--key-out", str(key), "--no-qr")
    assert added.returncode == 0, added.stderr
    # Enrolled before the servers have keys: the app's first export lists them as pending.
    assert "pub2: its public key is not known yet" in added.stdout
    run = lab.playbook()
    assert run.returncode == 0, run.stdout[-3000:]
    lab.settle()
    conf = lab.wgmesh("device", "config", "phone1", "--key-file", str(key), "--no-qr")
    assert conf.returncode == 0, conf.stderr
    lab.phone_conf = conf.stdout
    lab.run("web", "sh", "-c", "cat > /etc/wireguard/phone.conf && chmod 600 "
            "/etc/wireguard/phone.conf", stdin=conf.stdout)
    # wg-quick falls back to wireguard-go where the kernel has no WireGuard (as here).
    up = lab.run("web", "wg-quick", "up", "phone", check=False, timeout=30)
    assert up.returncode == 0, up.stderr
    yield lab
    lab.run("web", "wg-quick", "down", "phone", check=False, timeout=30)
    lab.lab.down()


def test_the_exported_config_is_what_the_apps_import(lab):
    text = lab.phone_conf
    assert "PostUp" not in text and "PreDown" not in text and "ListenPort" not in text
    assert "PrivateKey = " in text
    # carol: group:ops reaches tag:db (pub2) on 22; alice's home1 only through the relay.
    assert "# pub2 (direct" in text
    assert "home1: both sides are behind NAT" in text
    assert "# pub1 " not in text and "# pub3 " not in text


def test_the_device_reaches_what_policy_allows_and_nothing_else(lab):
    plan = lab.plan()
    addr = {n: h["addresses"][0] for n, h in plan["hosts"].items()}
    listeners = lab.start_listeners({"pub2": addr["pub2"], "pub1": addr["pub1"]})
    try:
        before = lab.counter("pub2", "dropped_in")
        got = lab.probe("web", [
            ("pub2 tcp 22", addr["pub2"], "tcp", 22),       # group:ops -> tag:db:22
            ("pub2 ping", addr["pub2"], "icmp", None),      # follows the relation
            ("pub2 tcp 5432", addr["pub2"], "tcp", 5432),   # only tag:web reaches 5432
            ("pub2 udp 53", addr["pub2"], "udp", 53),
            ("pub1 tcp 80", addr["pub1"], "tcp", 80),       # not a peer of the device
        ])
        assert got == {"pub2 tcp 22": True, "pub2 ping": True, "pub2 tcp 5432": False,
                       "pub2 udp 53": False, "pub1 tcp 80": False}
        # The refusals happened at pub2's filter: the device has none of its own.
        assert lab.counter("pub2", "dropped_in") > before
    finally:
        for p in listeners:
            lab.stop(p)
    shown = lab.run("web", "wg", "show", "phone", "latest-handshakes").stdout.split()
    assert len(shown) == 2 and shown[1] != "0"  # one peer (pub2), and it has talked
