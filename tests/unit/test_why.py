"""`wgmesh why`: the compiled answer (golden mesh) and the judgement of what hosts say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wgmesh import why
from wgmesh.build import build

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests/data/golden-mesh"


@pytest.fixture(scope="module")
def golden():
    return build(str(GOLDEN), run_tests=False)


@pytest.mark.parametrize(("what", "flow"), [
    (None, ("icmp", None)), ("5432/tcp", ("tcp", 5432)), ("53/udp", ("udp", 53)),
    ("8080", ("tcp", 8080)), ("icmp", ("icmp", None)), ("UDP", None), ("0/tcp", None),
    ("22/icmp", None), ("22/nosuch", None), ("x/tcp", None),
])
def test_a_flow_is_read_strictly(what, flow):
    if flow is None:
        with pytest.raises(ValueError):
            why.parse_flow("a", "b", what)
    else:
        f = why.parse_flow("a", "b", what)
        assert (f.proto, f.port) == flow


def test_the_answer_names_the_rule_and_the_path(golden):
    allowed = why.compiled(golden, why.parse_flow("bob-laptop", "alice-desktop", "8080/tcp"))
    assert allowed.verdict["allow"] and allowed.verdict["rule"] == "acls[5]"
    assert allowed.path == "relayed via web1, endpoint [fd7a:115c:a1e1::1]:51820"
    assert allowed.lines("policy.hujson")[1] == "  policy: allows it: acls[5] (policy.hujson:19)"
    denied = why.compiled(golden, why.parse_flow("alice-desktop", "bob-laptop", "8080/tcp"))
    assert not denied.verdict["allow"]
    assert denied.lines("p")[1] == "  policy: denies it: no rule allows it (default deny)"
    # A routed address goes to the peer with the longest prefix that holds it (not the exit
    # node's default route).
    routed = why.compiled(golden, why.parse_flow("alice-laptop", "198.51.100.130", "22/tcp"))
    assert routed.peer == "office-gw" and routed.path.startswith("through office-gw")
    internet = why.compiled(golden, why.parse_flow("alice-laptop", "203.0.113.9", "443"))
    assert internet.peer == "exit1"
    with pytest.raises(ValueError, match="not a node"):
        why.compiled(golden, why.parse_flow("nosuch", "db1", None))


def test_nodes_the_policy_does_not_relate_are_not_peers(golden):
    comp, res = golden.compiler, golden.resolution
    pairs = [(a, b) for a in res.index for b in res.index if a != b
             and comp.host(a) is not None and b not in {p.name for p in comp.host(a).peers}]
    assert pairs, "the golden mesh has a pair that holds no peer"
    a, b = pairs[0]
    answer = why.compiled(golden, why.parse_flow(a, b, "22/tcp"))
    assert answer.peer is None and answer.path.startswith(f"none: {a} does not hold {b}")


def facts(**hosts):
    return {n: {"drift": [], "peers": {}, "before": {}, "after": {}, "denied": []} | f
            for n, f in hosts.items()}


def test_the_judgement_names_who_refused(golden):
    denied = why.compiled(golden, why.parse_flow("db1", "web1", "443/tcp"))
    why.judge(denied, facts(
        db1={"probe": {"command": "nc", "ok": False}, "before": {"dropped_out": 4},
             "after": {"dropped_out": 6}, "denied": ["denied out: db1 -> web1 tcp/443"]},
        web1={}))
    assert denied.refused == ["the policy, enforced by db1's filter"]
    assert "  db1: drops during the probe: dropped_out +2" in denied.live
    assert "  db1: logged: denied out: db1 -> web1 tcp/443" in denied.live
    assert not denied.passes

    allowed = why.compiled(golden, why.parse_flow("bob-laptop", "alice-desktop", "8080/tcp"))
    why.judge(allowed, facts(
        **{"bob-laptop": {"probe": {"command": "nc", "ok": False}},
           "alice-desktop": {"drift": ["set in4 lacks 1 element(s)"],
                             "before": {"dropped_in": 0}, "after": {"dropped_in": 1}}}))
    assert allowed.refused == ["alice-desktop does not run its bundle (site.yml repairs it)",
                               "alice-desktop's filter, against the policy"]

    why.judge(allowed, facts(**{"bob-laptop": {
        "probe": {"command": "nc", "ok": False},
        "peers": {"web1": {"endpoint": None, "handshake": 0}}}, "alice-desktop": {}}))
    assert allowed.refused == ["the destination: no drop on either host and the path is up "
                               "(is the service listening?)"]
    allowed.peer = "alice-desktop"
    why.judge(allowed, facts(**{"bob-laptop": {
        "probe": {"command": "nc", "ok": False},
        "peers": {"alice-desktop": {"endpoint": None, "handshake": 0}}}}))
    assert allowed.refused == ["the path: no handshake with alice-desktop"]

    why.judge(allowed, facts(**{"bob-laptop": {"probe": {"command": "nc", "ok": True}}}))
    assert allowed.passes and allowed.live[-1] == "  refused by: nothing, it passes"
    why.judge(denied, facts(db1={"probe": {"command": "nc", "ok": True}}))
    assert denied.refused[-1] == "yet the probe passed: the hosts do not enforce the policy"


def test_what_a_host_brought_back_is_read(golden):
    from wgmesh import render
    conf = render.wg_quick(golden.compiler.host("db1"), golden.mesh.network)
    # carol-phone's key is in mesh.yml (a device); the golden mesh's hosts have none here.
    key = next(p.public_key for p in golden.compiler.host("db1").peers
               if p.name == "carol-phone")
    counters = {"nftables": [{"metainfo": {}}, {"counter": {"name": "dropped_in",
                                                            "packets": 7, "bytes": 1}}]}
    old = {"direction": "in", "src": "100.64.0.1", "src_node": None, "dst": "100.64.0.5",
           "dst_node": "db1", "proto": "tcp", "port": 1, "time": "2026-12-07T10:00:00Z"}
    new = old | {"port": 443}
    raw = {"drift": [], "dump": f"priv\tpub\t51820\toff\n{key}\t(none)\t192.0.2.11:51820\t"
                                "100.64.0.4/32\t1700000000\t1\t2\toff\n",
           "before": json.dumps(counters), "after": json.dumps(counters),
           "denied_before": json.dumps([old]), "denied_after": json.dumps([old, new]),
           "probe_rc": "1"}
    f = why.host_facts(raw, conf, why.probe_argv(why.Flow("db1", "web1", "tcp", 443),
                                                 "100.64.0.8"))
    assert f["peers"] == {"carol-phone": {"endpoint": "192.0.2.11:51820",
                                          "handshake": 1700000000}}
    assert f["before"] == {"dropped_in": 7} and f["denied"] == [
        "denied in: 100.64.0.1 -> db1 (100.64.0.5) tcp/443"]
    # A host writes nothing to the operator's terminal but records of the monitor's shape.
    for bad in ({"src_node": "\x1b]0;pwned\x07"}, {"src": "a"}, {"port": "443"},
                {"extra": 1}, {"time": "now"}):
        shown = why.host_facts(raw | {"denied_after": json.dumps([old, new | bad]),
                                      "drift": ["set in4\x1b[2J"]}, conf, [])
        assert shown["denied"] == ["(a malformed record, not shown)"], bad
        assert shown["drift"] == ["set in4\\x1b[2J"]
    assert f["probe"] == {"command": "tcp connect 100.64.0.8 port 443", "ok": False}
    punched = why.host_facts(raw | {"agent": json.dumps(
        {"peers": {"carol-phone": {"path": "direct (punched)"}}})}, conf, [])
    assert punched["peers"]["carol-phone"]["path"] == "direct (punched by the NAT agent)"
    answer = why.compiled(golden, why.parse_flow("db1", "carol-phone", "22/tcp"))
    why.judge(answer, {"db1": punched}, now=1700000005)
    assert "  db1: peer carol-phone, direct (punched by the NAT agent), endpoint " \
           "192.0.2.11:51820, handshake 5 s ago" in answer.live
    udp = why.host_facts(raw | {"probe_rc": "0"}, conf,
                         why.probe_argv(why.Flow("db1", "web1", "udp", 53), "100.64.0.8"))
    assert udp["probe"] == {"command": "udp datagram to 100.64.0.8 port 53", "ok": None}


def test_the_command_exits_0_only_when_the_flow_passes():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "wgmesh.cli", "why", *args, "-i",
                               str(GOLDEN)], capture_output=True, text=True)
    ok = run("bob-laptop", "alice-desktop", "8080/tcp")
    assert ok.returncode == 0 and "allows it: acls[5]" in ok.stdout
    assert run("alice-desktop", "bob-laptop", "8080/tcp").returncode == 1
    bad = run("alice-desktop", "bob-laptop", "22/icmp")
    assert bad.returncode == 2 and "icmp has no port" in bad.stderr
    phone = run("carol-phone", "db1", "22/tcp", "--live")
    assert phone.returncode == 2 and "carol-phone is not one Ansible manages" in phone.stderr


def test_the_probes_run_with_python_alone(tmp_path):
    """A TCP probe exits 0 only when a listener accepts; the UDP probe sends (both as the
    source host runs them, with its python3)."""
    import socket
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    tcp = why.probe_argv(why.Flow("a", "b", "tcp", port), "127.0.0.1")
    assert subprocess.run([sys.executable, *tcp[1:]]).returncode == 0
    listener.close()
    assert subprocess.run([sys.executable, *tcp[1:]], capture_output=True).returncode != 0
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    udp = why.probe_argv(why.Flow("a", "b", "udp", receiver.getsockname()[1]), "127.0.0.1")
    assert subprocess.run([sys.executable, *udp[1:]]).returncode == 0
    assert receiver.recv(100) == b"wgmesh why"
    receiver.close()
    assert why.probe_argv(why.Flow("a", "b", "icmp"), "10.0.0.1")[0] == "ping"
