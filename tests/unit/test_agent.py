"""The NAT traversal agent's rules, without a network: what it accepts from lighthouses
and peers, what a lighthouse tells whom, how a pair goes direct and falls back."""

from __future__ import annotations

import pytest
from meshkit import fake_key

from ansible_collections.wgmesh.mesh.plugins.module_utils import wgmesh_agent as ag

A, B, C = fake_key("a"), fake_key("b"), fake_key("c")
RELAY_B = "[fd7a:115c:a1e1::2]:51820"


@pytest.mark.parametrize("text", ["192.0.2.23:51820", "[2001:db8::1]:51820", "198.51.100.1:1"])
def test_endpoints_the_agent_takes(text):
    assert ag.endpoint(text) == text


@pytest.mark.parametrize("text", [
    "192.0.2.023:51820", "192.0.2.23:0", "192.0.2.23:65536", "192.0.2.23:051820",
    "100.64.0.1:51820",  # a mesh address
    "[fd7a:115c:a1e1::1]:51820",  # a hop address
    "127.0.0.1:51820", "0.0.0.0:1", "224.0.0.1:1", "[fe80::1%eth0]:1", "[::1]:1",
    "host.example:51820", " 192.0.2.23:51820", "192.0.2.23:51820\n", "[2001:DB8::1]:1",
    None, 5, "1.2.3.4",
])
def test_endpoints_the_agent_refuses(text):
    assert ag.endpoint(text) is None


class FakeWireGuard:
    def __init__(self, endpoints):
        self.live = dict(endpoints)
        self.set = []

    def endpoints(self):
        return dict(self.live)

    def set_endpoint(self, key, ep):
        self.set.append((key, ep))
        self.live[key] = ep


def make_agent(part, endpoints=None):
    a = ag.Agent("/nonexistent", "wg0", FakeWireGuard(endpoints or {}))
    a.part = ag.check_bundle_part(part)
    a.peers = {p["public_key"]: ag.Peer(p) for p in part.get("punch", [])}
    a.by_address = {p.address: p for p in a.peers.values()}
    a.sent = []
    a.send = lambda address, msg: a.sent.append((address, msg))
    return a


LIGHTHOUSE = {"port": 51822, "address": "100.64.0.5", "lighthouses": [], "punch": [],
              "clients": {"100.64.0.1": {"name": "a", "public_key": A, "peers": [B]},
                          "100.64.0.2": {"name": "b", "public_key": B, "peers": [A]}}}


def test_a_lighthouse_tells_a_node_only_about_the_peers_its_bundle_pairs_it_with():
    lh = make_agent(LIGHTHOUSE, {A: "192.0.2.21:51820", B: "192.0.2.23:51820",
                                 C: "192.0.2.22:4000"})
    lh.handle("100.64.0.2", {"t": "ask", "verdict": "cone", "want": [A]}, 100.0)
    lh.handle("100.64.0.1", {"t": "ask", "verdict": "cone", "want": [B, C]}, 101.0)
    to, answer = lh.sent[-1]
    assert to == "100.64.0.1" and answer["you"] == "192.0.2.21:51820"
    assert answer["peers"] == {B: {"endpoint": "192.0.2.23:51820", "verdict": "cone",
                                   "age": 1.0}}  # C is no peer of a: never told
    lh.sent.clear()
    lh.handle("100.64.0.9", {"t": "ask", "verdict": "cone", "want": [B]}, 102.0)
    assert lh.sent == []  # not a client: no answer at all
    for i in range(20):  # a client asks about once a second: ten in five seconds at most
        lh.handle("100.64.0.1", {"t": "ask", "verdict": "cone", "want": [B]}, 110.0 + i / 10)
    assert len(lh.sent) == ag.ASKS_PER_CLIENT


NODE = {"port": 51822, "address": "100.64.0.1",
        "lighthouses": [{"name": "pub1", "address": "100.64.0.5", "public_key": C},
                        {"name": "pub2", "address": "100.64.0.6", "public_key": C}],
        "punch": [{"name": "b", "public_key": B, "address": "100.64.0.2",
                   "relay_endpoint": RELAY_B, "relay": "pub1"}]}


def seen(node, lighthouse, you, now, peer_ep="192.0.2.23:51820", verdict="cone"):
    node.handle(lighthouse, {"t": "seen", "you": you, "peers": {
        B: {"endpoint": peer_ep, "verdict": verdict, "age": 0.5}}}, now)


def test_two_lighthouses_tell_a_symmetric_nat_and_nothing_is_punched():
    node = make_agent(NODE, {B: RELAY_B})
    assert node.verdict(100.0) == "pending"
    seen(node, "100.64.0.5", "192.0.2.22:4000", 100.0)
    assert node.verdict(100.0) == "pending"  # one view of two
    seen(node, "100.64.0.6", "192.0.2.22:4001", 100.1)
    assert node.verdict(100.2) == "symmetric"
    node.tick(100.2)
    assert node.peers[B].state == "relay" and node.peers[B].attempts == 0
    assert node.wg.set == []
    # Answers from anyone but a lighthouse, and bad values from one, are ignored.
    node.handle("100.64.0.2", {"t": "seen", "you": "192.0.2.22:4000", "peers": {}}, 100.3)
    assert "100.64.0.2" not in node.seen
    seen(node, "100.64.0.5", "192.0.2.22:4000", 100.4, peer_ep="100.64.0.2:51820")
    assert node.peers[B].candidate["endpoint"] == "192.0.2.23:51820"  # the earlier one


def test_a_pair_goes_direct_once_answered_over_a_steady_endpoint_and_falls_back():
    node = make_agent(NODE, {B: RELAY_B})
    for lh in ("100.64.0.5", "100.64.0.6"):
        seen(node, lh, "192.0.2.21:51820", 100.0)
    node.tick(100.1)
    peer = node.peers[B]
    assert peer.state == "trying" and node.wg.set == [(B, "192.0.2.23:51820")]
    assert ("100.64.0.2", {"t": "punch"}) in node.sent  # over the relay, before the move
    # A packet over the relay moves WireGuard's endpoint back: the agent moves it again
    # and the steady time starts over.
    node.wg.live[B] = RELAY_B
    node.tick(100.5)
    assert node.wg.live[B] == "192.0.2.23:51820" and peer.stable_since == 100.5
    node.handle("100.64.0.2", {"t": "ack", "n": 1}, 101.0)
    node.tick(101.2)
    assert peer.state == "trying"  # steady for 0.7 s only
    node.handle("100.64.0.2", {"t": "probe", "n": 7}, 101.4)
    assert node.sent[-1] == ("100.64.0.2", {"t": "ack", "n": 7})
    node.tick(101.5)
    assert peer.state == "direct" and peer.upgrades == 1
    # Probes over the direct path unanswered for DEAD seconds: back to the relay.
    node.tick(101.5 + ag.DEAD + 0.1)
    assert peer.state == "relay" and node.wg.live[B] == RELAY_B and peer.fallbacks == 1
    assert peer.next_try > 101.5 + ag.DEAD


def test_a_punch_that_does_not_work_returns_to_the_relay_with_backoff():
    node = make_agent(NODE, {B: RELAY_B})
    for lh in ("100.64.0.5", "100.64.0.6"):
        seen(node, lh, "192.0.2.21:51820", 100.0, peer_ep="192.0.2.99:51820")
    node.tick(100.1)
    node.tick(100.1 + ag.ATTEMPT + 0.1)
    peer = node.peers[B]
    assert peer.state == "relay" and node.wg.live[B] == RELAY_B
    assert peer.last_event[0] == "punch failed" and peer.next_try >= 100.2 + ag.ATTEMPT + 10
    # Only the peer's endpoint was ever set: to the reported address, then the relay's.
    assert node.wg.set == [(B, "192.0.2.99:51820"), (B, RELAY_B)]


@pytest.mark.parametrize("change", [
    {"port": 0}, {"address": "not-an-address"},
    {"punch": [{"name": "b", "public_key": "x", "address": "100.64.0.2",
                "relay_endpoint": RELAY_B}]},
    {"punch": [{"name": "b", "public_key": B, "address": "100.64.0.2",
                "relay_endpoint": "[x]:1; rm -rf /"}]},
])
def test_a_malformed_agent_part_is_refused(change):
    with pytest.raises((ValueError, KeyError, TypeError)):
        ag.check_bundle_part({**NODE, **change})


def test_wgmesh_agent_waits_for_its_bundle(tmp_path):
    """`wgmesh agent` (docs/relay.md) is the service's program: before wgmesh_apply wrote a
    bundle it waits, and says so."""
    import subprocess
    import sys
    from pathlib import Path

    wgmesh = str(Path(sys.executable).parent / "wgmesh")
    proc = subprocess.Popen([wgmesh, "agent", "--state-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()
    assert line == f"wgmesh agent: waiting for {tmp_path}/bundle.json (wgmesh_apply writes it)\n"


def test_the_agent_program_runs_from_its_zip_alone(tmp_path):
    """Hosts get the agent as one zip of module_utils (as the monitor): it starts with the
    standard library only, and the same code gives the same bytes."""
    import subprocess
    import sys

    from wgmesh.programs import agent_program
    program = tmp_path / "agent.pyz"
    program.write_bytes(agent_program())
    assert agent_program() == program.read_bytes()
    run = subprocess.run([sys.executable, "-I", "-S", str(program), "--help"],
                         capture_output=True, text=True, env={"PATH": "/nonexistent"})
    assert run.returncode == 0 and run.stdout.startswith("usage: wgmesh agent"), run.stderr
