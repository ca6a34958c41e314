"""mesh.yml in process: what a valid file becomes (nodes, network, signing), and the field
reader every YAML input shares (yamlsource.Fields): a wrong value is a problem at its own
line and column, and reading goes on so one run reports them all. The exact messages of
the invalid-input corpus are test_invalid_inputs.py's."""

import datetime as dt
import ipaddress

import pytest
from meshkit import fake_key

from wgmesh import grammar
from wgmesh.errors import InputError
from wgmesh.mesh import load_mesh
from wgmesh.yamlsource import Fields, YamlSource, yaml_date

MESH = """\
plugin: wgmesh
policy: policy.hujson
network:
  listen_port: 51900
  split_dns: {corp.example: [198.51.100.53]}
nodes:
  gw:
    tags: [tag:router, tag:router]
    ansible_host: 192.0.2.10
    endpoint: 192.0.2.10:51900
    advertise_routes: [10.1.0.0/16]
    approved_routes: [10.1.0.0/16]
    address: 100.64.0.9
  phone:
    owner: alice@example.com
    managed: false
    public_key: {key}
    expires: 2026-03-01 12:00:00
"""


def write(tmp_path, text: str):
    (tmp_path / "mesh.yml").write_text(text)
    return tmp_path / "mesh.yml"


def problems(tmp_path, text: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(InputError) as exc:
        load_mesh(write(tmp_path, text))
    return [(p.line, p.column, p.path, p.message) for p in exc.value.problems]


def test_a_valid_mesh_becomes_nodes_and_a_network(tmp_path):
    text = MESH.replace("[tag:router, tag:router]", "[tag:router]")
    mesh = load_mesh(write(tmp_path, text.replace("{key}", fake_key("phone"))))
    gw, phone = mesh.nodes["gw"], mesh.nodes["phone"]
    assert gw.tags == ("tag:router",) and gw.owner is None and gw.managed
    assert gw.address == ipaddress.IPv4Address("100.64.0.9") and gw.address6 is None
    assert gw.approved_routes == (ipaddress.ip_network("10.1.0.0/16"),)
    assert not phone.managed and phone.public_key == fake_key("phone")
    assert phone.expires == dt.date(2026, 3, 1)  # a timestamp's day
    assert mesh.network.listen_port == 51900 and mesh.network.mtu == 1420  # default
    assert mesh.network.split_dns == (
        ("corp.example", (ipaddress.ip_address("198.51.100.53"),)),)
    assert mesh.policy_path == tmp_path / "policy.hujson"
    assert mesh.lock_path == tmp_path / "mesh.lock.yml"
    assert mesh.where("gw", "endpoint") == (10, 5)


def test_every_wrong_field_of_every_node_is_reported_at_its_place(tmp_path):
    text = (MESH.replace("{key}", "not-a-key")
            .replace("address: 100.64.0.9", "address: ~")
            .replace("endpoint: 192.0.2.10:51900", "endpoint: 192.0.2.10")
            .replace("managed: false", "managed: no-thanks"))
    # In file order; a wrong managed reads as the default (true), so the node also lacks
    # what a managed node needs, and says so.
    assert problems(tmp_path, text) == [
        (8, 5, "nodes.gw.tags", "a tag is listed twice"),
        (10, 5, "nodes.gw.endpoint", 'endpoint "192.0.2.10" is not host:port'),
        (13, 5, "nodes.gw.address", "nothing is not an IPv4 address"),
        (14, 3, "nodes.phone", 'missing required key "ansible_host"'),
        (16, 5, "nodes.phone.managed", 'must be true or false, not "no-thanks"'),
        (17, 5, "nodes.phone.public_key", "public_key is only for managed: false nodes"),
    ]


def test_the_field_reader_reads_whole_values_and_goes_on(tmp_path):
    path = tmp_path / "f.yml"
    path.write_text("a:\n  day: '2026-02-30'\n  when: 2026-01-02 03:04:05\n  ip: 10.0.0.1\n"
                    "  ip6: 10.0.0.1\n  on: 'yes'\n  kind: odd\n  name: ' x'\n")
    src = YamlSource(path)
    f = Fields(src, src.data["a"], "a")
    assert f.date("day", "is not a date") is None
    assert f.date("when", "is not a date") is None  # a timestamp is not a day here
    assert f.date("when", "is not a date", times=True) == dt.date(2026, 1, 2)
    assert f.address("ip", 4) == ipaddress.IPv4Address("10.0.0.1")
    assert f.address("ip6", 6) is None
    assert f.flag("on", default=True) is True
    assert f.choice("kind", ("even", "none"), "none", "kind") == "none"
    assert f.text("name", grammar.NODE_NAME, "a name") is None
    assert f.text("absent") is None and f.address("absent", 4) is None
    assert not f.ok
    assert [(p.line, p.path, p.message) for p in src.problems] == [
        (2, "a.day", '"2026-02-30" is not a date'),
        (3, "a.when", "datetime is not a date"),
        (5, "a.ip6", '"10.0.0.1" is not an IPv6 address'),
        (6, "a.on", 'must be true or false, not "yes"'),
        (7, "a.kind", 'unknown kind "odd"'),
        (8, "a.name", '" x" is not a name'),
    ]


def test_dates_as_yaml_gives_them():
    assert yaml_date(dt.date(2026, 1, 1)) == dt.date(2026, 1, 1)
    assert yaml_date("2026-01-01") == dt.date(2026, 1, 1)
    assert yaml_date("2026-1-1") is None and yaml_date("\uff12\uff10\uff12\uff16-01-01") is None
    assert yaml_date(dt.datetime(2026, 1, 1, 5)) is None
    assert yaml_date(dt.datetime(2026, 1, 1, 5), times=True) == dt.date(2026, 1, 1)
