"""`wgmesh graph`: the page is opened in headless Chromium (Debian's package) and what it
draws is measured there: every node inside the picture and apart from the others, every line
from one node's centre to the other's, names that fit their boxes, the connection types and
the policy view as compiled."""

import json
import random
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from meshkit import wgmesh

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")

MEASURE = """
<script>
const svg = document.querySelector('svg[data-wgmesh="mesh"]');
const vb = svg.viewBox.baseVal, out = {nodes: {}, pairs: [], problems: []};
const boxes = {};
out.groups = {};
for (const g of svg.querySelectorAll('g[data-node], g[data-group-box]')) {
  const r = g.querySelector('rect').getBBox(), name = g.dataset.node || g.dataset.groupBox;
  if (g.dataset.groupBox) out.groups[name] = g.querySelector('text + text').textContent;
  boxes[name] = r;
  if (g.dataset.node) out.nodes[name] = g.dataset.roles;
  if (r.x < vb.x || r.y < vb.y || r.x + r.width > vb.x + vb.width ||
      r.y + r.height > vb.y + vb.height) out.problems.push(name + ' outside the picture');
  const t = g.querySelector('text');
  if (t.getComputedTextLength() > r.width - 8) out.problems.push(name + ' overflows');
}
const names = Object.keys(boxes);
for (let i = 0; i < names.length; i++) for (let j = i + 1; j < names.length; j++) {
  const a = boxes[names[i]], b = boxes[names[j]];
  if (a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height &&
      b.y < a.y + a.height) out.problems.push(names[i] + ' overlaps ' + names[j]);
}
for (const p of svg.querySelectorAll('path[data-pair]')) {
  const [a, b] = p.dataset.pair.split(' '), len = p.getTotalLength();
  const s = p.getPointAtLength(0), e = p.getPointAtLength(len);
  const mid = (r, pt) => Math.abs(r.x + r.width / 2 - pt.x) < 1 &&
                         Math.abs(r.y + r.height / 2 - pt.y) < 1;
  if (!mid(boxes[a], s) || !mid(boxes[b], e))
    out.problems.push(p.dataset.pair + ' misses its nodes');
  out.pairs.push([a, b, p.dataset.connection, p.dataset.relay || null,
                  getComputedStyle(p).strokeDasharray]);
}
out.links = [];
for (const p of svg.querySelectorAll('path[data-link]')) {
  const [a, b] = p.dataset.link.split(' | '), len = p.getTotalLength();
  const s = p.getPointAtLength(0), e = p.getPointAtLength(len);
  const mid = (r, pt) => Math.abs(r.x + r.width / 2 - pt.x) < 1 &&
                         Math.abs(r.y + r.height / 2 - pt.y) < 1;
  if (!mid(boxes[a], s) || !mid(boxes[b], e)) out.problems.push(p.dataset.link + ' misses');
  out.links.push([a, b, +p.dataset.pairs]);
}
const rect = svg.getBoundingClientRect();
out.picture = {top: rect.top, width: rect.width, height: rect.height,
               scale: rect.width / vb.width};
out.pageWidth = document.documentElement.scrollWidth;
out.window = window.innerWidth;
out.rows = [...document.querySelectorAll('table[data-wgmesh="policy"] th[data-row]')]
  .map(th => th.dataset.row);
const finder = document.getElementById('find');
const shown = () => [...document.querySelectorAll('table[data-wgmesh="nodes"] tr[data-find]')]
  .filter(tr => !tr.hidden).map(tr => tr.querySelector('th').textContent);
out.nodeRows = shown().length;
finder.value = 'n042';
finder.dispatchEvent(new Event('input'));
out.found = shown();
finder.value = '';
finder.dispatchEvent(new Event('input'));
out.cells = {};
for (const td of document.querySelectorAll('td[data-cell]'))
  if (td.textContent) out.cells[td.dataset.cell] = td.textContent;
const pre = document.createElement('pre');
pre.id = 'measured';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>
"""


def write_big_mesh(d: Path, n: int) -> None:
    """n nodes: two in three at one of 8 sites (with LAN addresses), one in five with an
    endpoint, half tagged (12 tags), half owned by 40 users in 8 groups; a relay."""
    rnd = random.Random(n)
    tags = [f"tag:t{i}" for i in range(12)]
    users = [f"user{i}@example.com" for i in range(40)]
    groups = {f"group:g{i}": users[i * 5:(i + 1) * 5] for i in range(8)}
    nodes = {}
    for i in range(n):
        spec = {"ansible_host": f"192.0.2.{i % 250 + 1}"}
        if i % 3:
            spec.update(site=f"site{i % 8}", lan_address=f"10.{i % 8}.{i // 250}.{i % 250 + 1}")
        if i % 5 == 0:
            spec["endpoint"] = f"198.51.{i // 250}.{i % 250 + 1}:51820"
        if i % 2:
            spec["tags"] = [rnd.choice(tags)]
        else:
            spec["owner"] = rnd.choice(users)
        nodes[f"n{i:03d}"] = spec
    nodes["n000"].update(relay=True, endpoint="203.0.113.1:51820")
    d.mkdir()
    (d / "mesh.yml").write_text(yaml.safe_dump({"plugin": "wgmesh", "policy": "policy.hujson",
                                                "nodes": nodes}, sort_keys=False))
    acls = [{"action": "accept", "src": [g], "dst": [f"{t}:22,443" for t in rnd.sample(tags, 2)]}
            for g in groups]
    acls += [{"action": "accept", "src": [t], "dst": [f"{rnd.choice(tags)}:5432"]}
             for t in tags[:6]]
    (d / "policy.hujson").write_text(json.dumps(
        {"groups": groups, "tagOwners": {t: [] for t in tags}, "acls": acls}))


def measure(page: Path) -> dict:
    html = page.read_text().replace("</body>", MEASURE + "</body>")
    page.write_text(html)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--window-size=1400,1000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")
                      .replace("&lt;", "<").replace("&gt;", ">"))


def graph(tmp_path: Path, *args: str, inventory: Path = REPO / "inventories/lab") -> Path:
    out = tmp_path / ("mesh." + (args[1] if args and args[0] == "--format" else "html"))
    run = wgmesh(["graph", "-i", str(inventory), *args, "--out", str(out)])
    assert run.returncode == 0, run.stderr
    return out


def test_the_lab_page_as_chromium_draws_it(tmp_path):
    assert CHROMIUM, "chromium is missing: ./dev.sh install (Debian's chromium package)"
    page = graph(tmp_path)
    assert "http://" not in page.read_text().replace("http://www.w3.org/2000/svg", "")
    got = measure(page)
    assert got["problems"] == []
    assert set(got["nodes"]) == {"pub1", "pub2", "pub3", "home1", "home2", "cafe1", "branch1"}
    assert got["nodes"]["pub1"] == "relay; lighthouse; exit node"
    assert got["nodes"]["pub3"] == "router 198.51.100.128/26"
    pairs = {(a, b): (how, relay, dash) for a, b, how, relay, dash in got["pairs"]}
    assert pairs[("home1", "home2")][:2] == ("lan", None)
    assert pairs[("cafe1", "home1")][:2] == ("relay", "pub1")
    assert pairs[("cafe1", "home1")][2] != "none"  # drawn dashed
    assert pairs[("pub1", "pub2")][:2] == ("direct", None)
    # The peer pairs are the compiled ones, no more, no fewer.
    plan = json.loads(wgmesh(["render", "--all", "--json", "-i",
                              str(REPO / "inventories/lab")]).stdout)
    compiled = {tuple(sorted((h, p["name"]))) for h, v in plan["hosts"].items()
                for p in v["peers"]}
    assert set(pairs) == compiled
    assert got["cells"]["carol@example.com -> tag:db"] == "tcp 22; udp 22"
    assert got["cells"]["tag:web -> tag:db"] == "tcp 5432"
    assert got["cells"]["bob@example.com -> autogroup:internet"] == "tcp *; udp *"
    assert "alice@example.com -> tag:db" not in got["cells"]


def test_svg_and_dot(tmp_path):
    root = ET.parse(graph(tmp_path, "--format", "svg")).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    nodes = {g.get("data-node") for g in root.iter(f"{ns}g") if g.get("data-node")}
    assert nodes == {"pub1", "pub2", "pub3", "home1", "home2", "cafe1", "branch1"}
    dot = graph(tmp_path, "--format", "dot").read_text()
    assert dot.startswith("graph wgmesh {") and dot.rstrip().endswith("}")
    assert '"cafe1" -- "home1" [color="#ef6c00", style=dashed, label="relay pub1"];' in dot
    assert 'subgraph cluster_0 { label="home";' in dot
    # docs/graph.md's pipe: Graphviz (dev.sh installs it) draws the file as a PNG.
    png = subprocess.run(["dot", "-Tpng"], input=dot.encode(), capture_output=True, check=True)
    assert png.stdout.startswith(b"\x89PNG\r\n\x1a\n") and len(png.stdout) > 10_000


def test_live_agent_state_draws_a_punched_pair_as_direct(tmp_path):
    from meshkit import make

    from wgmesh import graph as graph_module
    nodes = {"pub": {"tags": ["tag:db"], "endpoint": "192.0.2.11:51820", "relay": True,
                     "lighthouse": True},
             "n1": {"owner": "alice@example.com"}, "n2": {"owner": "alice@example.com"}}
    b = make(tmp_path, nodes, {"tagOwners": {"tag:db": []}, "acls": [
        {"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:*"]}]})
    assert graph_module.collect(b).pairs[("n1", "n2")] == ("relay", "pub")
    live = {"n2": {"peers": {"n1": {"path": "direct (punched)"}}}}
    g = graph_module.collect(b, live)
    assert g.pairs[("n1", "n2")] == ("punched", "pub")
    assert "lighthouse" in g.nodes["pub"].roles
    assert 'data-connection="punched"' in graph_module.svg(g)
    assert '"n1" -- "n2" [color="#1565c0", style=solid, label="punched"]' in graph_module.dot(g)


@pytest.mark.parametrize("n", [100, 500])
def test_a_large_mesh_reads_in_a_1400_px_window(tmp_path, n):
    """Past the ring's slots the picture shows the sites, as boxes with their sizes and one
    line per pair of sites as thick as its pairs; it fits the window at full size (no
    scaling, so no smaller text) and starts on the first screen. Every node is a row of the
    nodes table, found by the search; users whose access is their group's are that group's
    row of the matrix."""
    assert CHROMIUM, "chromium is missing: ./dev.sh install (Debian's chromium package)"
    inv = tmp_path / "mesh"
    write_big_mesh(inv, n)
    got = measure(graph(tmp_path, inventory=inv))
    assert got["problems"] == []
    assert got["nodes"] == {}  # no node ring: the groups
    assert set(got["groups"]) == {f"site{i}" for i in range(8)} | {"internet", "behind NAT"}
    picture = got["picture"]
    assert got["pageWidth"] <= got["window"] == 1400
    assert picture["scale"] == 1 and picture["width"] <= 1400 - 48
    assert picture["top"] < 300 and picture["height"] <= 900
    plan = json.loads(wgmesh(["render", "--all", "--json", "-i", str(inv)]).stdout)
    compiled = {tuple(sorted((h, p["name"]))) for h, v in plan["hosts"].items()
                for p in v["peers"]}
    inside = sum(int(text.split(", ")[1].split()[0]) for text in got["groups"].values())
    assert sum(k for _, _, k in got["links"]) + inside == len(compiled)
    assert got["nodeRows"] == n and got["found"] == ["n042"]
    assert not any("@" in row for row in got["rows"])
    assert {f"group:g{i}" for i in range(8)} <= set(got["rows"])


def test_one_nodes_neighbourhood(tmp_path):
    """--node: the node, its peers grouped by site, a line to each group it has peers in."""
    inv = tmp_path / "mesh"
    write_big_mesh(inv, 500)
    got = measure(graph(tmp_path, "--node", "n007", inventory=inv))
    assert got["problems"] == [] and got["groups"]["n007"] == "tag:t3"
    assert {a for a, _, _ in got["links"]} | {b for _, b, _ in got["links"]} >= {"n007"}
    assert all("n007" in (a, b) for a, b, _ in got["links"])
    lab = ET.parse(graph(tmp_path, "--format", "svg", "--node", "home1")).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    pairs = {g.get("data-pair") for g in lab.iter(f"{ns}path") if g.get("data-pair")}
    assert pairs and all("home1" in p.split() for p in pairs)
