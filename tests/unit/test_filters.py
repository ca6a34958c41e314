"""The filter stage in process (wgmesh.compile.filters): a rule's elements per set, port 22 narrowed
for SSH policy, sets made disjoint, and hosts of one role sharing one computation."""

from meshkit import make

from wgmesh.compile.filters import add_rule, disjoint_sets, new_boxes, restrict_port

TCP, UDP = (6, 6), (17, 17)


def test_a_rules_elements_go_to_the_ping_port_and_protocol_sets(tmp_path):
    b = make(tmp_path, {"a": {"tags": ["tag:a"]}, "b": {"tags": ["tag:b"]}},
             {"tagOwners": {"tag:a": [], "tag:b": []},
              "acls": [{"action": "accept", "src": ["tag:a"], "dst": ["tag:b:80"]},
                       {"action": "accept", "proto": "gre", "src": ["tag:a"],
                        "dst": ["tag:b:*"]}]})
    web, gre = b.resolution.rules
    boxes = new_boxes()
    for rd in (web, gre):
        add_rule(boxes, "in4", (), [(10, 19)], rd)
    sets = disjoint_sets(boxes)
    assert sets == {"ping_in4": (((10, 19),),),
                    "in4": (((10, 19), TCP, (80, 80)), ((10, 19), UDP, (80, 80))),
                    "in4p": (((10, 19), (47, 47)),)}


def test_port_22_keeps_only_the_allowed_sources_and_nothing_else_changes():
    boxes = (((0, 100), TCP, (1, 65535)), ((0, 100), UDP, (22, 22)))
    out = restrict_port(boxes, 6, 22, [(40, 49)])
    # Disjoint again: 40-49 keep all of TCP; the others lose TCP 22 only; UDP 22 stays.
    assert out == (((0, 39), TCP, (1, 21)), ((0, 39), TCP, (23, 65535)),
                   ((0, 39), UDP, (22, 22)),
                   ((40, 49), TCP, (1, 65535)), ((40, 49), UDP, (22, 22)),
                   ((50, 100), TCP, (1, 21)), ((50, 100), TCP, (23, 65535)),
                   ((50, 100), UDP, (22, 22)))
    # On a forwarding set (source, destination, ...), the destination dimension is narrowed.
    fwd = (((0, 9), (0, 100), TCP, (22, 22)),)
    assert restrict_port(fwd, 6, 22, [(50, 100)], dim=1) == (((0, 9), (50, 100), TCP, (22, 22)),)
    assert restrict_port(fwd, 6, 22, []) == ()


def test_overlapping_rules_become_disjoint_elements():
    boxes = new_boxes()
    boxes["in4"][(TCP, (80, 80))] += [[(0, 10)], [(5, 20)]]
    boxes["in4"][(TCP, (81, 81))].append([(30, 30)])
    boxes["out4"][(TCP, (80, 80))].append([])
    assert disjoint_sets(boxes) == {"in4": (((0, 20), TCP, (80, 80)), ((30, 30), TCP, (81, 81)))}


def test_hosts_of_one_role_share_one_set_computation(tmp_path):
    nodes = {f"web{i}": {"tags": ["tag:web"]} for i in range(3)}
    nodes["alice"] = {"owner": "alice@example.com"}
    b = make(tmp_path, nodes, {"tagOwners": {"tag:web": []}, "acls": [
        {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]}]})
    hosts = [b.compiler.host(f"web{i}") for i in range(3)]
    assert hosts[0].sets["in4"] is hosts[1].sets["in4"] is hosts[2].sets["in4"]
    alice = b.alloc["alice"].ipv4
    assert hosts[0].sets["in4"] == (((int(alice), int(alice)), TCP, (443, 443)),
                                    ((int(alice), int(alice)), UDP, (443, 443)))
