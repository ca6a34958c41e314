"""The host's nftables table as nft(8) prints it in JSON: its rules without what changes by
itself, the differences from the table as loaded, and its named counters. Read by
wgmesh_apply (drift, repair, loading) and the monitor (metrics). Standard library only."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import struct
from typing import TYPE_CHECKING

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    PROTO_NAMES,
    RULESET_PATH,
    TABLE_FAMILY,
    TABLE_NAME,
)

if TYPE_CHECKING:
    from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_runner import Runner

TABLE = (TABLE_FAMILY, TABLE_NAME)
LIST_TABLE = ("nft", "-j", "list", "table", *TABLE)
LIST_COUNTERS = ("nft", "-j", "list", "counters", "table", *TABLE)
# nf_tables over netlink (linux/netfilter/nf_tables.h): the ruleset's generation, which every
# committed change of any table in the namespace moves on.
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN, NFT_MSG_NEWGEN = 16, 15
NFTA_GEN_ID = 1


def ruleset_stamp() -> str | None:
    """This boot's id and the ruleset's generation: equal stamps mean no table changed in
    between (the generation starts again at boot, the boot id never repeats)."""
    generation = ruleset_generation()
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
    except OSError:
        return None
    return f"{boot}/{generation}" if generation is not None else None


def ruleset_generation() -> int | None:
    """The namespace's nf_tables generation (None when it cannot be read): while it stays
    the same, no table has changed, so the costly listing of the whole table is skipped."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
            sock.bind((0, 0))
            sock.settimeout(2)
            body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
            sock.send(struct.pack("=IHHII", 16 + len(body),
                                  (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, 1, 0, 0) + body)
            data = sock.recv(4096)
    except OSError:
        return None
    if len(data) < 20 or struct.unpack_from("=H", data, 4)[0] != (
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN):
        return None
    gen = netlink_attributes(data, 20, min(len(data), struct.unpack_from("=I", data)[0]))
    return struct.unpack("!I", gen[NFTA_GEN_ID])[0] if len(gen.get(NFTA_GEN_ID, b"")) == 4 \
        else None


def netlink_attributes(data: bytes, at: int, end: int) -> dict[int, bytes]:
    """The attributes of one netfilter netlink message (after its headers, up to ``end``):
    type (without the nested flag) -> value."""
    attrs = {}
    while at + 4 <= end:
        size, kind = struct.unpack_from("=HH", data, at)
        if size < 4:
            break
        attrs[kind & 0x7FFF] = data[at + 4:at + size]
        at += (size + 3) & ~3
    return attrs


def canonical_table(nft_json: str) -> str:
    """``nft -j list table`` output without what changes by itself (counters, handles):
    what is compared with the table recorded right after the last load."""
    out = []
    for item in json.loads(nft_json)["nftables"]:
        kind, body = next(iter(item.items()))
        if kind == "metainfo":
            continue
        body = {k: v for k, v in body.items() if k not in ("handle", "packets", "bytes")}
        if kind == "rule":
            # An anonymous counter's figures change with traffic; a named one is a reference.
            body["expr"] = [{"counter": None} if isinstance(e.get("counter"), dict) else e
                            for e in body.get("expr", [])]
        out.append({kind: body})
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def named_counters(nft_json: str) -> dict[str, tuple[int, int]]:
    """The table's named counters: name -> (packets, bytes)."""
    out = {}
    for item in json.loads(nft_json)["nftables"]:
        c = item.get("counter")
        if c is not None:
            out[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    return out


def _element_text(e) -> str:
    return json.dumps(e, sort_keys=True, separators=(",", ":"))


def table_drift(recorded: str, live: str | None) -> list[str]:
    """The differences between the table as loaded and as it is now (both as
    canonical_table gives them; live None: not loaded), in words."""
    if live is None:
        return [f"table {' '.join(TABLE)} is not loaded"]
    if live == recorded:
        return []
    words = []

    def index(items):
        out = {}
        for item in items:
            kind, body = next(iter(item.items()))
            if kind == "rule":
                out.setdefault(("chain rules", body["chain"]), []).append(_element_text(body))
            else:
                out[(kind, body.get("name", ""))] = body
        return out

    want, have = index(json.loads(recorded)), index(json.loads(live))
    for key in sorted(set(want) | set(have)):
        kind, name = key
        if key not in have:
            words.append(f"{kind} {name} is missing")
        elif key not in want:
            words.append(f"{kind} {name} is not in the bundle")
        elif kind == "set":
            w = {_element_text(e) for e in want[key].get("elem", [])}
            h = {_element_text(e) for e in have[key].get("elem", [])}
            extra, missing = sorted(h - w), sorted(w - h)
            if extra:
                words.append(f"set {name} has {len(extra)} element(s) not in the bundle: "
                             + ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else ""))
            if missing:
                words.append(f"set {name} lacks {len(missing)} element(s) of the bundle: "
                             + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
            rest = ({k: v for k, v in want[key].items() if k != "elem"},
                    {k: v for k, v in have[key].items() if k != "elem"})
            if rest[0] != rest[1]:
                words.append(f"set {name} is declared differently")
        elif want[key] != have[key]:
            words.append(f"chain {name}: {len(have[key])} rules differ from the bundle's "
                         f"{len(want[key])}" if kind == "chain rules"
                         else f"{kind} {name} differs from the bundle")
    return words


# The rendered ruleset (render.nftables): replace-whole lines, then the declaration, whose
# objects start at four spaces of indentation.
DECLARATION = f"table {TABLE_FAMILY} {TABLE_NAME} {{\n"
_OBJECT = re.compile(r"^    (set|chain|counter|limit) (\S+) \{", re.M)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)
# Addresses, prefixes, ranges, protocol names and ports, joined by " . ".
_ELEMENT = re.compile(r"[0-9A-Za-z:./-]+(?: \. [0-9A-Za-z:./-]+)*", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def in_place(ruleset: str, live: str) -> str:
    """The one ``nft -f`` transaction that turns the loaded table (``live``, as
    canonical_table gives it) into ``ruleset``'s while both stay the same table: its chains'
    rules are replaced, and its sets lose the elements the ruleset has not and gain the ones
    it adds. An element both have is never touched. Replacing a table (or a set) whole is
    atomic for rules, but not for set contents: while the change commits, a packet can meet
    the incoming rules with a set whose contents are not yet visible, or the outgoing rules
    with contents already gone, and an untouched connection loses that packet. What the
    ruleset does not declare (sets, chains, counters, limits) is deleted. ValueError: the
    loaded table holds a name or an element wgmesh does not write."""
    start = ruleset.index(DECLARATION)
    declaration = ruleset[start:]
    wanted = {(kind, name) for kind, name in _OBJECT.findall(declaration)}
    elements = declared_elements(declaration)
    table = " ".join(TABLE)
    flush, drop, stale = [], [], []
    for item in json.loads(live):
        kind, body = next(iter(item.items()))
        if kind not in ("set", "chain", "counter", "limit"):
            continue
        # What the loaded table holds goes back into nft's input: names and elements as
        # wgmesh writes them, else (a table someone else shaped) the caller replaces it whole.
        name = body["name"]
        if not _NAME.fullmatch(name):
            raise ValueError(f"{kind} {name!r} is not a name wgmesh writes")
        texts = [json_element_text(e) for e in body.get("elem", [])] if kind == "set" else []
        if not all(_ELEMENT.fullmatch(text) for text in texts):
            raise ValueError(f"set {name}: element not as wgmesh writes them")
        if kind == "chain":
            flush.append(f"flush chain {table} {name}")
        if (kind, name) not in wanted:
            drop.append(f"delete {kind} {table} {name}")
        elif kind == "set":
            gone = [text for text in texts if element_key(text) not in elements.get(name, set())]
            if gone:
                stale.append(f"delete element {table} {name} {{ {', '.join(gone)} }}")
    return "\n".join([f"table {table}", *flush, *stale, *drop]) + "\n" + declaration


def declared_elements(declaration: str) -> dict[str, set[tuple]]:
    """Each declared set's elements (as element_key gives them)."""
    out, name, block = {}, None, []
    for line in declaration.splitlines():
        if name is None:
            found = _OBJECT.match(line)
            if found and found.group(1) == "set":
                name, block = found.group(2), []
        elif line == "    }":
            body = " ".join(block).partition("elements = {")[2].partition("}")[0]
            out[name] = {element_key(e.strip()) for e in body.split(",") if e.strip()}
            name = None
        else:
            block.append(line)
    return out


def json_element_text(item) -> str:
    """One element of ``nft -j`` output in nft's own syntax."""
    if isinstance(item, dict):
        if "elem" in item:
            return json_element_text(item["elem"]["val"])
        if "concat" in item:
            return " . ".join(map(json_element_text, item["concat"]))
        if "prefix" in item:
            return f"{item['prefix']['addr']}/{item['prefix']['len']}"
        if "range" in item:
            return "-".join(map(json_element_text, item["range"]))
    return str(item)


def element_key(text: str) -> tuple:
    """An element as values rather than spelling: nft prints an address, a prefix, a range,
    a protocol by name or number in its own way, and the same element compares equal."""
    return tuple(_value(part.strip()) for part in text.split(" . "))


def _value(part: str) -> tuple:
    if "." in part or ":" in part:
        try:
            if "/" in part:
                net = ipaddress.ip_network(part, strict=False)
                return ("address", int(net.network_address), int(net.broadcast_address))
            first, _, last = part.partition("-")
            return ("address", int(ipaddress.ip_address(first)),
                    int(ipaddress.ip_address(last or first)))
        except ValueError:
            return ("text", part)
    first, _, last = part.partition("-")
    if _DIGITS.fullmatch(first) and (not last or _DIGITS.fullmatch(last)):
        return ("number", int(first), int(last or first))
    try:
        number = socket.getprotobyname(part)
    except OSError:
        number = next((n for n, name in PROTO_NAMES.items() if name == part), None)
    return ("number", number, number) if number is not None else ("text", part)


def live_table(run: Runner) -> str | None:
    """The loaded table as canonical_table gives it; None when it is not loaded."""
    rc, text = run.output(*LIST_TABLE)
    return canonical_table(text) if rc == 0 else None


def load_table(run: Runner, ruleset: str, live: str | None) -> list[str]:
    """Load the bundle's table: changed in place where one is loaded (no untouched flow loses
    a packet, see in_place), else (or when the loaded table holds what wgmesh does not
    write, or nft refuses the change, as from a table of another layout) replaced whole.
    Either way one atomic transaction."""
    try:
        change = in_place(ruleset, live) if live is not None else None
    except ValueError:
        change = None
    if change is not None and run.rc("nft", "-f", "-", data=change) == 0:
        return []
    run("nft", "-f", RULESET_PATH)
    return [] if live is None else [f"table {' '.join(TABLE)}: replaced whole (not changed "
                                    "in place)"]
