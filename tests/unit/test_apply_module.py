"""The pure parts of the host-side apply module, and the bundle the compiler gives it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import wgstrict
from meshkit import make, plugin

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_bundle import (
    BundleError,
    check_bundle,
    check_dns,
    with_hosts_block,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import bundle_hash
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_interface import (
    interface_section,
    set_peers,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_resolver import (
    UPSTREAM,
    dnsmasq_conf,
    our_resolv_conf,
    sync_resolved,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_units import (
    PLAIN_PATH,
    last_good_dropin,
    program_unit,
)
from wgmesh import render

HERE = Path(__file__).resolve().parents[2]
apply = plugin("plugins/modules/wgmesh_apply.py")

NODES = {"a": {"endpoint": "192.0.2.10:51820", "owner": "alice@example.com"},
         "b": {"endpoint": "192.0.2.11:51820", "owner": "bob@example.com"}}
POLICY = {"acls": [{"action": "accept", "src": ["alice@example.com"],
                    "dst": ["bob@example.com:22"]}]}


def bundle_of(tmp_path, name="a", policy=POLICY, commit=None):
    b = make(tmp_path, NODES, policy)
    return render.bundle(b.compiler.host(name), b.mesh.network, b.alloc[name].public_key,
                         commit)


def test_the_bundle_hash_follows_content_not_commit(tmp_path):
    one = bundle_of(tmp_path, commit="aaaa")
    two = bundle_of(tmp_path, commit="bbbb")
    assert one["hash"] == two["hash"] and one["commit"] != two["commit"]
    other = bundle_of(tmp_path, policy={"acls": [{"action": "accept", "src": ["*"],
                                                  "dst": ["*:*"]}]})
    assert other["hash"] != one["hash"]
    check_bundle(one)  # the module recomputes the same hash


def test_a_bundle_changed_on_the_way_is_refused(tmp_path):
    b = bundle_of(tmp_path)
    b["nftables"] = b["nftables"].replace("policy accept", "policy drop")
    with pytest.raises(BundleError, match="does not match its hash"):
        check_bundle(b)
    with pytest.raises(BundleError, match="format"):
        check_bundle({**bundle_of(tmp_path), "format": 2})


def test_the_interface_the_module_brings_up_loads_the_filter_first(tmp_path):
    """The module brings an interface up from its [Interface] section alone: the hooks
    come with it, the table's load first (wg-quick runs PreUp before the link exists)."""
    conf = bundle_of(tmp_path)["wg_conf"]
    head = interface_section(conf)
    parsed = wgstrict.parse(head)
    assert parsed["peers"] == [] and "[Peer]" in conf
    assert parsed["interface"]["PreUp"] == [render.FILTER_HOOK.removeprefix("PreUp = ")]
    assert render.RULESET_PATH in parsed["interface"]["PreUp"][0]


def test_hosts_block_is_replaced_in_place_and_removed():
    text = "127.0.0.1 localhost\n# BEGIN wgmesh wg0 (managed by Ansible)\nold\n" \
           "# END wgmesh wg0 (managed by Ansible)\n::1 localhost\n"
    new = with_hosts_block(text, "wg0", "100.64.0.1\ta a.mesh\n")
    assert new == text.replace("old\n", "100.64.0.1\ta a.mesh\n")
    assert with_hosts_block(new, "wg0", None) == "127.0.0.1 localhost\n::1 localhost\n"
    added = with_hosts_block("127.0.0.1 localhost", "wg0", "x\n")
    assert added == ("127.0.0.1 localhost\n# BEGIN wgmesh wg0 (managed by Ansible)\nx\n"
                     "# END wgmesh wg0 (managed by Ansible)\n")


class Recorder:
    """A Runner that records commands instead of running them."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, *argv, data=None):
        self.calls.append(list(argv))
        return ""


def test_only_the_peers_that_differ_are_written(tmp_path):
    """wireguard-go replaces a peer's allowed IPs by removing them first: a peer the change
    leaves alone must not be named at all, and of a changed peer only what differs."""
    same = {"allowed": {"100.64.0.2/32"}, "keepalive": 0, "endpoint": "192.0.2.2:51820"}
    have = {"K1": same, "K2": {**same, "allowed": {"100.64.0.3/32"}},
            "K3": {**same, "allowed": {"100.64.0.4/32"}}}
    want = {"K1": same, "K2": {**have["K2"], "keepalive": 25},
            "K4": {"allowed": {"100.64.0.5/32", "fd7a::5/128"}, "keepalive": 0,
                   "endpoint": None}}
    run = Recorder()
    set_peers(run, "wg0", want, have, ["K4"], ["K3"], ["K2"], None)
    assert run.calls == [["wg", "set", "wg0", "peer", "K3", "remove",
                          "peer", "K4", "persistent-keepalive", "off",
                          "allowed-ips", "100.64.0.5/32,fd7a::5/128",
                          "peer", "K2", "persistent-keepalive", "25"]]
    assert not any("K1" in c for c in run.calls)
    # Many peers go in batches; a listen port alone is one call.
    many = {f"P{i}": same for i in range(450)}
    run = Recorder()
    set_peers(run, "wg0", many, {}, sorted(many), [], [], 51821)
    assert len(run.calls) == 3 and run.calls[0][3:5] == ["listen-port", "51821"]
    assert sum(c.count("peer") for c in run.calls) == 450
    run = Recorder()
    set_peers(run, "wg0", {}, {}, [], [], [], 51821)
    assert run.calls == [["wg", "set", "wg0", "listen-port", "51821"]]


def test_root_mode_writes_the_files_through_the_connection_once(tmp_path):
    """wgmesh_apply root=DIR (an image, a chroot): the bundle's files under DIR with their
    modes, the names merged into DIR/etc/hosts, no Python on the host; a second run writes
    nothing."""
    import sys

    (tmp_path / "mesh").mkdir()
    bundle = bundle_of(tmp_path / "mesh")
    (tmp_path / "vars.json").write_text(json.dumps({"bundle": bundle}))
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    play = tmp_path / "play.yml"
    play.write_text(f"""
- hosts: localhost
  gather_facts: false
  vars_files: [{tmp_path / 'vars.json'}]
  tasks:
    - wgmesh_apply:
        bundle: "{{{{ bundle }}}}"
        key_file: /nonexistent
        root: {root}
""")
    env = dict(os.environ, ANSIBLE_CONFIG=str(HERE / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_ENABLED="host_list")
    playbook = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
                "-c", "local", str(play)]
    first = subprocess.run(playbook, capture_output=True, text=True, env=env, cwd=HERE)
    assert first.returncode == 0, first.stdout[-2000:]
    assert "changed: [localhost]" in first.stdout
    conf = root / "etc/wireguard/wg0.conf"
    assert conf.read_text() == bundle["wg_conf"] and conf.stat().st_mode & 0o777 == 0o600
    assert (root / "etc/wgmesh/nftables.nft").read_text() == bundle["nftables"]
    hosts = (root / "etc/hosts").read_text()
    assert hosts.startswith("127.0.0.1 localhost\n# BEGIN wgmesh wg0") and "\ta a.mesh" in hosts
    second = subprocess.run(playbook, capture_output=True, text=True, env=env, cwd=HERE)
    assert second.returncode == 0 and "ok: [localhost]" in second.stdout, second.stdout[-2000:]


def test_split_dns_reaches_the_bundle_of_hosts_that_may_reach_the_nameserver(tmp_path):
    nodes = {**NODES, "ns": {"endpoint": "192.0.2.12:51820", "tags": ["tag:dns"]}}
    policy = {"tagOwners": {"tag:dns": []},
              "acls": [{"action": "accept", "src": ["alice@example.com"],
                        "dst": ["tag:dns:53"]}]}
    b = make(tmp_path, nodes, policy, network={"split_dns": {"corp.example": ["100.64.0.3"]}})
    assert b.alloc["ns"].ipv4.compressed == "100.64.0.3"
    bundles = {n: render.bundle(b.compiler.host(n), b.mesh.network, None) for n in nodes}
    assert bundles["a"]["dns"] == {"corp.example": ["100.64.0.3"]}
    assert bundles["b"]["dns"] is None  # bob may not reach it: left as it was, and warned
    assert any("b (corp.example)" in w for w in b.compiler.warnings)
    check_bundle(bundles["a"])
    bad = dict(bundles["a"], dns={"corp.example\nserver=/x/1.2.3.4": ["100.64.0.3"]})
    with pytest.raises(BundleError):
        check_dns(bad["dns"])


def test_the_local_resolver_keeps_the_hosts_search_and_upstream():
    original = "# from DHCP\nnameserver 192.0.2.53\nsearch example.net\noptions edns0\n"
    ours = our_resolv_conf(original)
    assert "nameserver 127.0.0.153\n" in ours and "nameserver 192.0.2.53" not in ours
    assert "search example.net\n" in ours and "options edns0\n" in ours
    conf = dnsmasq_conf({"corp.example": ["198.51.100.53", "198.51.100.54"]},
                              UPSTREAM)
    assert "server=/corp.example/198.51.100.53\nserver=/corp.example/198.51.100.54\n" in conf
    assert f"resolv-file={UPSTREAM}\n" in conf and "listen-address=127.0.0.153\n" in conf


class FakeResolvectl:
    """resolvectl as the module calls it: `dns`/`domain` read or set a link's settings."""

    def __init__(self):
        self.link = {"dns": [], "domain": []}
        self.calls = []

    def __call__(self, *argv, check=True):
        self.calls.append(argv)
        _, what, iface, *values = argv
        if what == "revert":
            self.link = {"dns": [], "domain": []}
            return ""
        if values:
            self.link[what] = list(values)
        return f"Link 7 ({iface}): {' '.join(self.link[what])}"


def test_per_link_dns_with_systemd_resolved():
    run = FakeResolvectl()
    dns = {"corp.example": ["198.51.100.53"], "lab.example": ["198.51.100.54"]}
    assert sync_resolved(run, "wg0", dns, check_mode=True) \
        == ["per-link DNS on wg0: ~corp.example ~lab.example"]
    assert run.link == {"dns": [], "domain": []}  # check mode sets nothing
    sync_resolved(run, "wg0", dns, check_mode=False)
    assert run.link == {"dns": ["198.51.100.53", "198.51.100.54"],
                        "domain": ["~corp.example", "~lab.example"]}
    assert sync_resolved(run, "wg0", dns, check_mode=False) == []  # nothing differs
    sync_resolved(run, "wg0", None, check_mode=False)
    assert run.calls[-1] == ("resolvectl", "revert", "wg0") and run.link["domain"] == []


def test_only_a_plain_state_folder_reaches_the_last_good_drop_in():
    assert PLAIN_PATH.fullmatch("/var/lib/wgmesh")
    assert "%i /var/lib/wgmesh/last-good-files.json\n" in last_good_dropin("/var/lib/wgmesh")
    for bad in ("/var/lib/wg mesh", "/var/lib/x\nExecStartPre=/bin/sh", "var/lib", "/a/%h",
                "/a/$x", "/"):
        assert not PLAIN_PATH.fullmatch(bad), bad


def test_the_agents_endpoints_are_live_state_and_the_rest_stays_strict():
    """A relayed peer the agent moved to a direct path keeps its endpoint through a run; a
    change of its allowed IPs is still written, without the endpoint."""
    relay = "[fd7a:115c:a1e1::1]:51820"
    want = {"K1": {"allowed": {"100.64.0.2/32"}, "keepalive": 0, "endpoint": relay}}
    have = {"K1": {"allowed": {"100.64.0.2/32"}, "keepalive": 0,
                   "endpoint": "192.0.2.23:51820"}}
    run = Recorder()
    set_peers(run, "wg0", want, have, [], [], ["K1"], None)
    assert run.calls == [["wg", "set", "wg0", "peer", "K1", "endpoint", relay]]
    want["K1"]["allowed"] = {"100.64.0.2/32", "10.0.0.0/24"}
    run = Recorder()
    set_peers(run, "wg0", want, have, [], [], ["K1"], None, roaming={"K1"})
    assert run.calls == [["wg", "set", "wg0", "peer", "K1", "allowed-ips",
                          "10.0.0.0/24,100.64.0.2/32"]]


def test_the_agent_part_of_a_bundle_is_checked(tmp_path):
    b = bundle_of(tmp_path)
    b["agent"] = {"port": 51822, "lighthouses": [], "punch": [{"public_key": "x; rm -rf /"}]}
    body = {k: v for k, v in b.items() if k not in ("hash", "commit")}
    b["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                               .encode()).hexdigest()[:16]
    with pytest.raises(BundleError, match="agent part is malformed"):
        check_bundle(b)
    unit = program_unit("agent", "/var/lib/wgmesh", "wg0")
    assert "ExecStart=/usr/bin/python3 /var/lib/wgmesh/agent.pyz --state-dir /var/lib/wgmesh" \
        in unit
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW" in unit
    assert "After=network-online.target wg-quick@wg0.service" in unit


def test_the_monitor_part_of_a_bundle_is_checked_and_its_unit_may_write_the_textfile(tmp_path):
    for part in ({"key_max_age_days": 90, "expires": "2027-13-01"},
                 {"key_max_age_days": "90", "expires": None},
                 {"key_max_age_days": 90, "expires": None, "textfile": "/etc/shadow"}):
        b = bundle_of(tmp_path)
        b["monitor"] = part
        b["hash"] = bundle_hash(b)
        with pytest.raises(BundleError, match="monitor part is malformed"):
            check_bundle(b)
    unit = program_unit("monitor", "/var/lib/wgmesh", "wg0", "-/var/lib/node-exporter")
    assert "ExecStart=/usr/bin/python3 /var/lib/wgmesh/monitor.pyz --state-dir " \
           "/var/lib/wgmesh" in unit
    assert "CapabilityBoundingSet=CAP_NET_ADMIN\n" in unit
    assert "ReadWritePaths=/var/lib/wgmesh -/run/wireguard -/var/lib/node-exporter\n" in unit
