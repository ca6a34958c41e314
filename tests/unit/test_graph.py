"""`wgmesh graph`: the page is opened in headless Chromium (Debian's package) and what it
draws is measured there: every node inside the picture and apart from the others, every line
from one node's centre to the other's, names that fit their boxes, the connection types and
the policy view as compiled."""

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WGMESH = str(Path(sys.executable).parent / "wgmesh")
CHROMIUM = shutil.which("chromium")

MEASURE = """
<script>
const svg = document.querySelector('svg[data-wgmesh="mesh"]');
const vb = svg.viewBox.baseVal, out = {nodes: {}, pairs: [], problems: []};
const boxes = {};
for (const g of svg.querySelectorAll('g[data-node]')) {
  const r = g.querySelector('rect').getBBox(), name = g.dataset.node;
  boxes[name] = r;
  out.nodes[name] = g.dataset.roles;
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
out.cells = {};
for (const td of document.querySelectorAll('td[data-cell]'))
  if (td.textContent) out.cells[td.dataset.cell] = td.textContent;
const pre = document.createElement('pre');
pre.id = 'measured';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>
"""


def measure(page: Path) -> dict:
    html = page.read_text().replace("</body>", MEASURE + "</body>")
    page.write_text(html)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")
                      .replace("&lt;", "<").replace("&gt;", ">"))


def graph(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / ("mesh." + (args[1] if args else "html"))
    run = subprocess.run([WGMESH, "graph", "-i", str(REPO / "inventories/lab"), *args,
                          "--out", str(out)], capture_output=True, text=True)
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
    plan = json.loads(subprocess.run([WGMESH, "render", "--all", "--json", "-i",
                                      str(REPO / "inventories/lab")],
                                     capture_output=True, text=True).stdout)
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
