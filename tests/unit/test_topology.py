"""The lab topology loader: the shipped topologies load, bad ones are rejected with every
problem named at its file, line and column."""

import ipaddress
import textwrap
from pathlib import Path

import pytest

from wgmesh.errors import InputError
from wgmesh.lab.topology import load_topology

REPO = Path(__file__).resolve().parents[2]

VALID = """\
plugin: wgmesh_lab
name: t1
segments:
  internet: {subnet: 192.0.2.0/24, mgmt: 192.0.2.1}
  home: {subnet: 198.51.100.0/26}
routers:
  nat1: {uplink: internet, wan_address: 192.0.2.21, lan: home, lan_address: 198.51.100.1}
hosts:
  a: {interfaces: {internet: 192.0.2.11}}
  b: {interfaces: {home: 198.51.100.10}}
"""


def load(tmp_path, text):
    path = tmp_path / "topology.yml"
    path.write_text(textwrap.dedent(text))
    return load_topology(path)


def errors(tmp_path, text):
    with pytest.raises(InputError) as exc:
        load(tmp_path, text)
    return [str(p).replace(str(tmp_path) + "/", "") for p in exc.value.problems]


def test_default_lab_has_the_promised_shape():
    topo = load_topology(REPO / "inventories/lab")
    public = [h for h in topo.hosts.values() if h.wireguard and topo.natted(h) is None]
    natted = [h for h in topo.hosts.values() if topo.natted(h)]
    assert len(public) >= 3
    assert sorted(r.nat for r in topo.routers.values()) == [
        "endpoint-independent", "endpoint-independent", "symmetric"]
    by_router = {}
    for h in natted:
        by_router.setdefault(topo.natted(h).name, []).append(h.name)
    assert sorted(len(v) for v in by_router.values()) == [1, 1, 2]
    plain = [h for h in topo.hosts.values() if not h.wireguard]
    assert len(plain) == 2
    # The legacy host shares its LAN only with a WireGuard host (the future subnet router).
    legacy = next(h for h in plain if h.primary_segment == "office")
    assert any(h.wireguard and "office" in h.interfaces for h in topo.hosts.values())
    assert topo.router_of(legacy.primary_segment) is None
    # The lab never uses the machine's own ranges.
    for seg in topo.segments.values():
        assert not seg.subnet.overlaps(ipaddress.ip_network("203.0.113.0/24"))
    assert topo.segments["internet"].mgmt == ipaddress.ip_address("192.0.2.1")


def test_thirty_host_lab_loads():
    topo = load_topology(REPO / "inventories/lab30")
    assert len(topo.hosts) == 30


def test_valid_minimal(tmp_path):
    topo = load(tmp_path, VALID)
    assert topo.netns("a") == "t1-a"
    assert topo.natted(topo.hosts["b"]).name == "nat1"
    assert str(topo.segments["home"].gateway) == "198.51.100.1"
    assert str(topo.segments["internet"].gateway) == "192.0.2.1"
    # mgmt defaults to the last usable address of the subnet.
    assert str(topo.segments["home"].mgmt) == "198.51.100.62"
    # Hosts run in namespaces unless they boot systemd, Debian 12 unless another release.
    assert (topo.hosts["a"].init, topo.hosts["a"].release) == ("namespace", "bookworm")
    booting = load(tmp_path, VALID.replace("192.0.2.11}}", "192.0.2.11}, init: systemd, "
                                           "release: trixie}"))
    assert (booting.hosts["a"].init, booting.hosts["a"].release) == ("systemd", "trixie")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("name: t1", "name: Lab-One",
         'topology.yml:2:1: name: lab name "Lab-One" is not valid'),
        ("  a: {interfaces", "  a: {interface",
         'topology.yml:9:7: hosts.a.interface: unknown key "interface" '
         '(did you mean "interfaces"?)'),
        ("{internet: 192.0.2.11}", "{internet: 192.0.2.300}",
         "topology.yml:9:20: hosts.a.interfaces.internet: \"192.0.2.300\" is not an IPv4 address"),
        ("{internet: 192.0.2.11}", "{internet: 198.51.100.5}",
         'hosts.a.interfaces.internet: 198.51.100.5 is not a host address of segment "internet"'),
        ("{internet: 192.0.2.11}", "{internet: 192.0.2.21}",
         'hosts.a.interfaces.internet: 192.0.2.21 is already used by router "nat1"'),
        ("{internet: 192.0.2.11}", "{internet: 192.0.2.1}",
         "hosts.a.interfaces.internet: 192.0.2.1 is already used by the fabric (mgmt)"),
        ("{internet: 192.0.2.11}", "{moon: 192.0.2.11}",
         'topology.yml:9:20: hosts.a.interfaces.moon: unknown key "moon"'),
        ("{internet: 192.0.2.11}", "{}", "hosts.a.interfaces: a host needs an interface"),
        ("lan: home,", "lan: internet,",
         "routers.nat1.lan: a router's LAN must differ from its uplink"),
        ("uplink: internet", "uplink: sky", 'routers.nat1.uplink: unknown segment "sky"'),
        ("subnet: 198.51.100.0/26", "subnet: 198.51.100.1/26",
         "segments.home.subnet: not an IPv4 network"),
        ("subnet: 198.51.100.0/26", "subnet: 192.0.2.0/25",
         'segments.home: subnet 192.0.2.0/25 overlaps segment "internet"'),
        ("  b: {", "  B_1: {", 'hosts.B_1: name "B_1" is not valid'),
        ("  b: {", "  fabric: {", 'hosts.fabric: name "fabric" is not valid'),
        ("  b: {", "  nat1: {", 'hosts.nat1: "nat1" is both a router and a host'),
        ("lan_address: 198.51.100.1}", "lan_address: 198.51.100.1, nat: cone}",
         'routers.nat1.nat: unknown NAT behaviour "cone"'),
        ("  a: {interfaces: {internet: 192.0.2.11}}",
         "  a: {interfaces: {internet: 192.0.2.11}, wireguard: maybe}",
         'hosts.a.wireguard: must be true or false, not "maybe"'),
        ("  a: {interfaces: {internet: 192.0.2.11}}",
         "  a: {interfaces: {internet: 192.0.2.11}, init: openrc}",
         'hosts.a.init: unknown init "openrc" (expected one of: namespace, systemd)'),
        ("  a: {interfaces: {internet: 192.0.2.11}}",
         "  a: {interfaces: {internet: 192.0.2.11}, init: systemd, release: sid}",
         'hosts.a.release: unknown release "sid" (expected one of: bookworm, trixie)'),
        ("  a: {interfaces: {internet: 192.0.2.11}}",
         "  a: {interfaces: {internet: 192.0.2.11}, init: systemd, user: admin}",
         'hosts.a.user: unknown user "admin" (expected one of: root, wgadmin, guest)'),
        ("  a: {interfaces: {internet: 192.0.2.11}}",
         "  a: {interfaces: {internet: 192.0.2.11}, user: wgadmin}",
         'hosts.a.user: user "wgadmin" needs init: systemd (namespace hosts have root only)'),
        ("segments:\n", "segment:\n", 'topology.yml:3:1: segment: unknown key "segment"'),
        ("routers:\n  nat1:", "routers: 3\n  x:", "not valid YAML"),
        ("routers:\n  nat1: {uplink: internet, wan_address: 192.0.2.21, lan: home, "
         "lan_address: 198.51.100.1}\n", "routers: 3\n",
         "topology.yml:6:1: routers: must be a mapping of names, not a number"),
        ("  a: {interfaces: {internet: 192.0.2.11}}", "  a: {interfaces: {internet: [}}",
         "topology.yml:9:31: not valid YAML"),
    ],
)
def test_invalid(tmp_path, old, new, expected):
    assert old in VALID
    found = errors(tmp_path, VALID.replace(old, new, 1))
    assert any(expected in e for e in found), found


def test_all_problems_are_reported_at_once(tmp_path):
    text = VALID.replace("name: t1", "name: BAD").replace("192.0.2.11", "10.0.0.1")
    text = text.replace("uplink: internet", "uplink: sky")
    found = errors(tmp_path, text)
    assert len(found) == 3, found
    # Sorted by position, so they read top to bottom like the file.
    assert [e.split(":")[1] for e in found] == sorted(
        (e.split(":")[1] for e in found), key=int)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        load_topology(tmp_path / "nope.yml")


def test_molecule_lab_is_the_default_lab_under_another_name():
    default = (REPO / "inventories/lab/topology.yml").read_text()
    mol = (REPO / "molecule/default/inventory/topology.yml").read_text()
    body = default[default.index("plugin: wgmesh_lab"):].replace("\nname: wgl\n", "\nname: wmol\n")
    assert mol.endswith(body)
    mesh = (REPO / "inventories/lab/mesh.yml").read_text()
    mol_mesh = (REPO / "molecule/default/inventory/mesh.yml").read_text()
    assert mol_mesh == mesh.replace("/wgmesh-lab/wgl/", "/wgmesh-lab/wmol/").replace(
        "../../policies/", "../../../policies/")


def test_molecule_finds_every_plugin_folder_that_ansible_cfg_names():
    import configparser

    import yaml

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "ansible.cfg")
    ours = {k: v for k, v in cfg["defaults"].items()
            if k.endswith("_plugins") or k in ("library", "roles_path")}
    mol = yaml.safe_load((REPO / "molecule/default/molecule.yml").read_text())
    theirs = mol["ansible"]["cfg"]["defaults"]
    assert {k: theirs.get(k, "").replace("${MOLECULE_PROJECT_DIRECTORY}/", "")
            for k in ours} == ours
