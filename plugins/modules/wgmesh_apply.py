#!/usr/bin/python
"""Host-side: make the host run one bundle (everything the compiler made for it), in one
step, with the last good bundle to return to if any part fails."""

from __future__ import annotations

DOCUMENTATION = r"""
module: wgmesh_apply
short_description: Make a host run its wgmesh bundle, live, all or nothing
description:
  - A bundle is everything the compiler made for one host (the wg-quick files without a
    private key, the nftables table, the names block, the forwarding settings) with its
    content hash, as the C(wgmesh_compile) action returns it.
  - Compares the host's live state with the bundle and repairs every difference, in one
    module run - the files, the loaded table (each set element and rule, read with
    C(nft -j list table)), the running interfaces (the key they run with, peers, addresses,
    MTU, routes, exit-node routing), the names block, forwarding - and says which in words.
    Nothing differs - nothing is done and C(changed) is false. Check mode reports the same
    differences and changes nothing.
  - Changes are made live - interfaces with C(wg set) for the peers that differ (a peer the
    change leaves alone is not written, so its flows lose nothing) and C(ip), the table by
    one C(nft -f) transaction - so tunnels between unchanged peers keep flowing.
  - All or nothing - the new table is checked with C(nft -c) before anything is changed; if
    any later step fails, the host is returned to the last bundle that applied cleanly (kept
    under I(state_dir)), or with none to its state before wgmesh, and the task fails with
    the cause.
  - Every wgmesh interface's wg-quick file loads the table from C(/etc/wgmesh/nftables.nft)
    before the interface exists (a fixed C(PreUp) hook) and stays down when it cannot, so
    an interface brought up at boot, by hand or by this module never carries a packet
    unfiltered. Between runs that file is the table of the bundle that applied cleanly - a
    failed apply writes the last good one back.
  - Records what the host runs (bundle hash, commit, time, and the table as loaded, to
    notice later edits) in I(state_dir)/state.json.
  - Refuses a bundle that routes the default route through an exit node when this run's SSH
    client is reached through the default route and is not in the management networks.
  - The private key never leaves the key file (C(wg set private-key) reads it there).
  - Split DNS (C(network.split_dns) in mesh.yml) - per-link DNS on the mesh interface
    where systemd-resolved runs, else a dnsmasq of its own on 127.0.0.153 that answers the
    split domains from their nameservers and everything else from the resolvers
    C(/etc/resolv.conf) named before (kept in C(/etc/wgmesh)); C(/etc/resolv.conf) is restored
    when the bundle has no split DNS any more.
  - The mesh resolver (a node with C(resolver) set in mesh.yml) - a dnsmasq of its own, from the
    bundle's C(resolver_conf) written to C(/etc/wgmesh/resolver.conf), on the node's mesh
    addresses only; restarted when its configuration changes, stopped and removed when the
    bundle has none.
  - Where systemd runs the interfaces, installs a drop-in for C(wg-quick@) that, before an
    interface starts, puts back the files of the last bundle that applied whole (so a host
    rebooted half way through an apply comes back on its last good bundle).
  - On a host the policy's ssh rules name as destination, writes the sshd drop-in that lets
    each mesh source log in only as the users the rules name (connections to the host's mesh
    addresses only), checks it with C(sshd -t) and that sshd reads it (C(sshd -T)), then
    reloads sshd (C(systemctl reload) of its unit where systemd runs it, else SIGHUP to the
    pid in I(sshd_pidfile)); a drop-in sshd refuses is taken
    back with the rest of the bundle.
options:
  bundle:
    description: The host's bundle (C(wgmesh_compile)'s C(hosts[<host>].bundle)).
    type: dict
  state:
    description:
      - C(present) makes the host run I(bundle).
      - C(previous) makes the host run the bundle it ran before the current one (a canary
        that failed), or takes it out of the mesh if there was none.
      - C(absent) takes the host out of the mesh - interfaces down, table, files, names block,
        forwarding set by wgmesh and key removed.
    type: str
    choices: [present, absent, previous]
    default: present
  previous_hash:
    description:
      - With I(state=previous), the hash the host ran before (the C(previous) this module
        returned when it applied the current bundle); the host is left alone when it still
        runs it, and the task fails if the bundle kept as previous is another one.
    type: str
  key_file:
    description: The host's private key file (see wgmesh_key); its public key must be the
      one the bundle was compiled for.
    type: path
    required: true
  service:
    description: How to bring an interface up; C(auto) uses systemd's C(wg-quick@) when
      systemd runs, else C(wg-quick up).
    type: str
    choices: [auto, systemd, wg-quick]
    default: auto
  hosts_file:
    description: The hosts file that holds the block of mesh names.
    type: path
    default: /etc/hosts
  state_dir:
    description: Where the host keeps what it runs and the last good bundle.
    type: path
    default: /var/lib/wgmesh
  sshd_config:
    description: sshd's main configuration, which must include I(sshd_dropin) (Debian's
      includes C(/etc/ssh/sshd_config.d/*.conf)).
    type: path
    default: /etc/ssh/sshd_config
  sshd_dropin:
    description: The file the bundle's sshd rules are written to (removed when the bundle
      has none).
    type: path
    default: /etc/ssh/sshd_config.d/wgmesh.conf
  sshd_pidfile:
    description: The running sshd's pid file; it gets SIGHUP to read a changed drop-in.
    type: path
    default: /run/sshd.pid
  manifest:
    description:
      - The signed manifest the bundle comes from (C(wgmesh manifest create) and C(sign);
        C(wgmesh_compile) returns it when mesh.yml has a C(signing) section).
      - A host with a I(trust_file) runs a bundle only when the manifest has at least the
        threshold of valid signatures of the admins it trusts, no signature of any other
        key, a serial no lower than the one it runs (the same serial only for the same
        manifest), and lists the bundle's SHA-256 under the host's name. Anything else is
        refused before the host is touched, with the reason.
      - A manifest stating other admins or another threshold becomes the host's trust once
        it is accepted.
    type: dict
  trust:
    description:
      - Enrolment - the admins (name to ed25519 public key) and C(threshold) to install as
        I(trust_file) when the host has none. A host that has one keeps it; only a manifest
        its admins signed changes it.
    type: dict
  trust_file:
    description: Where the host keeps the admins it trusts, their threshold, and the serial
      and digest of the manifest it runs (kept when the host leaves the mesh).
    type: path
    default: /etc/wgmesh/trust.json
  agent_program:
    description:
      - The NAT traversal agent (a zip application of this collection's module_utils,
        base64), installed as C(agent.pyz) in I(state_dir) when the bundle has an agent part
        (lighthouses, and nodes behind NAT with relayed peers) and removed when it has none.
        Where systemd runs, the module also installs, enables and (re)starts
        C(wgmesh-agent.service); elsewhere the host's supervisor runs
        C(python3 STATE_DIR/agent.pyz).
      - C(wgmesh_compile) returns it as C(agent_program).
    type: str
  monitor_program:
    description:
      - The monitor (a zip application of this collection's module_utils, base64), installed
        as C(monitor.pyz) in I(state_dir) on every host that runs a bundle. It writes the
        node_exporter textfile I(metrics_textfile) every I(metrics_interval) seconds and
        logs the flows the policy denies (C(network.log_denied) in mesh.yml). Where systemd
        runs, the module installs, enables and (re)starts C(wgmesh-monitor.service);
        elsewhere the host's supervisor runs C(python3 STATE_DIR/monitor.pyz).
      - C(wgmesh_compile) returns it as C(monitor_program).
    type: str
  metrics_textfile:
    description:
      - The node_exporter textfile the monitor writes (whole, by rename); empty for none.
        The default is the folder Debian's prometheus-node-exporter reads.
    type: str
    default: /var/lib/prometheus/node-exporter/wgmesh.prom
  metrics_interval:
    description: Seconds between two writes of I(metrics_textfile) (1 to 3600).
    type: int
    default: 15
  root:
    description:
      - Write the bundle's files (and the names block, and the bundle as the record of what
        runs) under this directory on the host, as they would be under C(/), and touch
        nothing live - for an image or a chroot to boot into the mesh. The files go through
        the connection (no Python runs on the host); only files that differ are written.
        Nothing is validated with C(nft -c) and no key is checked.
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Every file and the names block before and after, and the running peers.
author: wgmesh
"""

EXAMPLES = r"""
- name: Make the host run its part of the mesh
  wgmesh_apply:
    bundle: "{{ plan.hosts[inventory_hostname].bundle }}"
    key_file: /etc/wireguard/wg0.key

- name: Take a host that left the mesh out of it
  wgmesh_apply:
    state: absent
    key_file: /etc/wireguard/wg0.key
"""

RETURN = r"""
serial:
  description: The serial of the signed manifest the host runs (with a trust file).
  returned: when the host has a trust file
  type: int
actions:
  description: Every difference found, in words, and what was (in check mode, would be) done.
  returned: always
  type: list
  elements: str
  sample: ["table inet wgmesh: set in4 has 1 element not in the bundle", "load the table"]
drift:
  description: Differences from the bundle the host was recorded as running (edits by hand).
  returned: always
  type: list
  elements: str
hash:
  description: Hash of the bundle the host runs now.
  returned: always
  type: str
previous:
  description: Hash of the bundle the host ran before (null for a host new to wgmesh).
  returned: always
  type: str
applied:
  description: What the host was recorded as running before this task - C(hash),
    C(commit), C(applied) (UTC time); nulls for a host new to wgmesh.
  returned: when state is present
  type: dict
ssh_client:
  description: This run's SSH client as the host sees it (checked against exit-node routing).
  returned: when the bundle uses an exit node
  type: str
peers:
  description: Number of peers on the mesh interface.
  returned: always
  type: int
seconds:
  description: How long the comparison and the apply took on the host.
  returned: success
  type: float
"""

import base64
import datetime
import json
import os
import re
import shutil
import signal
import time

from ansible.module_utils.basic import AnsibleModule

# What the controller renders and this module must agree on, in one copy (Ansible packs it
# into this module's payload): the bundle's format and hash, canonical JSON, the paths.
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_bundle import (
    SSHD_DROPIN,
    SYSCTL_PATH,
    BundleError,
    bundle_files,
    check_bundle,
    with_hosts_block,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    RULESET_PATH,
    bundle_digest,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import (
    read_text as read,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import (
    write_atomic,
    write_system_file,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_interface import (
    public_key_of,
    sync_interface,
    take_down,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_nftables import (
    TABLE,
    live_table,
    load_table,
    ruleset_stamp,
    table_drift,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_resolver import (
    resolved_runs,
    sync_dnsmasq,
    sync_resolved,
    sync_resolver,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_routing import refuse_exit_over_ssh
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_runner import ApplyError, Runner
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_sshd import check_sshd, reload_sshd
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_trust import (
    Refused,
    accept,
    checked_trust,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_units import (
    DEFAULT_TEXTFILE,
    LAST_GOOD_DROPIN,
    LAST_GOOD_FILES,
    LAST_GOOD_SCRIPT,
    LAST_GOOD_SCRIPT_TEXT,
    PLAIN_PATH,
    Programs,
    last_good_dropin,
)

FORWARDING = {"/proc/sys/net/ipv4/ip_forward": "1",
              "/proc/sys/net/ipv6/conf/all/forwarding": "1"}


class Host:
    """One host's paths and tools; ``converge`` makes it run a bundle."""

    def __init__(self, module: AnsibleModule):
        p = module.params
        self.module, self.run = module, Runner(module)
        self.key_file = p["key_file"]
        self.sshd_config, self.sshd_dropin = p["sshd_config"], p["sshd_dropin"]
        self.sshd_pidfile = p["sshd_pidfile"]
        self.hosts_file, self.state_dir = p["hosts_file"], p["state_dir"]
        self.textfile = p["metrics_textfile"]
        service = p["service"]
        if service == "auto":
            service = "systemd" if os.path.isdir("/run/systemd/system") else "wg-quick"
        self.service = service
        self.programs = Programs(
            self.run, self.state_dir, service,
            {k: base64.b64decode(p[f"{k}_program"]) if p.get(f"{k}_program") is not None
             else None for k in ("agent", "monitor")},
            {"textfile": self.textfile, "interval": p["metrics_interval"],
             "key_file": self.key_file})
        self.diff_before: list[str] = []
        self.diff_after: list[str] = []

    def files(self, b: dict) -> list[tuple[str, str | None, int]]:
        files = bundle_files(b, self.sshd_dropin)
        if self.service == "systemd":
            files += [(LAST_GOOD_SCRIPT, LAST_GOOD_SCRIPT_TEXT, 0o755),
                      (LAST_GOOD_DROPIN, last_good_dropin(self.state_dir), 0o644)]
        return files

    def state(self) -> dict:
        text = read(os.path.join(self.state_dir, "state.json"))
        return json.loads(text) if text else {}

    def last_good(self) -> dict | None:
        text = read(os.path.join(self.state_dir, "bundle.json"))
        return json.loads(text) if text else None

    def record(self, b: dict) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 - hosts' Python < 3.11
        # The ruleset's stamp before the table is read: while it stays, the monitor knows
        # the table is this one without listing it.
        stamp = ruleset_stamp()
        state = {"hash": b["hash"], "commit": b.get("commit"), "name": b["name"],
                 "applied": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "table": live_table(self.run), "ruleset": stamp}
        last = self.last_good()
        if last is not None and last.get("hash") != b["hash"]:
            # What a canary failure returns to (state=previous).
            write_atomic(os.path.join(self.state_dir, "previous.json"), json.dumps(last), 0o600)
        write_atomic(os.path.join(self.state_dir, "bundle.json"), json.dumps(b), 0o600)
        write_atomic(os.path.join(self.state_dir, "state.json"), json.dumps(state), 0o600)
        # Last: what a boot puts back if the next apply is interrupted (LAST_GOOD_SCRIPT).
        write_atomic(os.path.join(self.state_dir, LAST_GOOD_FILES), json.dumps(
            {"hash": b["hash"], "interfaces": [b["interface"], b["hop_interface"]],
             "files": bundle_files(b, self.sshd_dropin)}), 0o600)

    def converge(self, b: dict, check_mode: bool, reload_table: bool = False) -> list[str]:
        """Compare the host with bundle ``b`` and repair every difference."""
        run, actions = self.run, []
        state = self.state()
        sshd_changed = units_changed = False
        for path, text, mode in self.files(b):
            old = read(path)
            if old != text:
                actions.append(f"{'write' if text is not None else 'remove'} {path}")
                self.diff_before.append(f"--- {path}\n{old or ''}")
                self.diff_after.append(f"+++ {path}\n{text or ''}")
                sshd_changed |= path == self.sshd_dropin
                units_changed |= path == LAST_GOOD_DROPIN
                if not check_mode:
                    write_atomic(path, text, mode, dir_mode=0o755)
        if units_changed and not check_mode:
            run("systemctl", "daemon-reload")
        if sshd_changed and not check_mode:
            if b.get("sshd"):
                check_sshd(self.sshd_config, b["sshd"], self.sshd_dropin)
            actions.append(reload_sshd(run, self.sshd_pidfile))
        live = live_table(run)
        if state.get("hash") == b["hash"] and isinstance(state.get("table"), str):
            drift = table_drift(state["table"], live)
        else:
            drift = [] if live is not None else [f"table {' '.join(TABLE)} is not loaded"]
            reload_table = True
        actions += [f"table {' '.join(TABLE)}: {w}" for w in drift]
        if reload_table or drift:
            actions.append(f"load the table from {RULESET_PATH}")
            if not check_mode:
                actions += load_table(run, b["nftables"], live)
        if b["sysctl"]:
            for path, value in FORWARDING.items():
                if (read(path) or "").strip() != value:
                    actions.append(f"{path} is not {value}: apply {SYSCTL_PATH}")
                    if not check_mode:
                        run("sysctl", "-q", "-p", SYSCTL_PATH)
                    break

        hop, wg = b["hop_interface"], b["interface"]
        if b["hop_conf"] is not None:
            actions += sync_interface(run, hop, b["hop_conf"], self.key_file, self.service,
                                      [], check_mode)
        else:
            actions += take_down(run, hop, self.service, f"/etc/wireguard/{hop}.conf",
                                 check_mode)
        # The agent moves relayed peers to a direct path and back: their endpoints are live
        # state, never drift (everything else of them is compared as usual).
        roaming = {p["public_key"] for p in (b.get("agent") or {}).get("punch", [])}
        actions += sync_interface(run, wg, b["wg_conf"], self.key_file, self.service,
                                  b["management_networks"], check_mode, roaming)

        text = read(self.hosts_file) or ""
        new = with_hosts_block(text, wg, b["hosts_block"] or None)
        if new != text:
            actions.append(f"write the mesh names in {self.hosts_file}")
            self.diff_before.append(f"--- {self.hosts_file}\n{text}")
            self.diff_after.append(f"+++ {self.hosts_file}\n{new}")
            if not check_mode:
                write_system_file(self.hosts_file, new)
        if resolved_runs():
            actions += sync_resolved(run, wg, b.get("dns"), check_mode)
        else:
            actions += sync_dnsmasq(run, b.get("dns"), check_mode)
        actions += sync_resolver(run, b.get("resolver_conf"), check_mode)
        return actions

    def leave(self, interface: str, hop_interface: str, check_mode: bool,
              keep_key: bool = False) -> list[str]:
        """Take the host out of the mesh: everything a bundle made, and the key."""
        run, actions = self.run, []
        for iface in (hop_interface, interface):
            actions += take_down(run, iface, self.service, f"/etc/wireguard/{iface}.conf",
                                 check_mode)
        if run.rc("nft", "list", "table", *TABLE) == 0:
            actions.append(f"delete table {' '.join(TABLE)}")
            if not check_mode:
                run("nft", "delete", "table", *TABLE)
        forwarded = os.path.exists(SYSCTL_PATH)
        dropin_installed = os.path.exists(LAST_GOOD_DROPIN)
        actions += self.programs.sync(None, check_mode)
        if not resolved_runs():  # (resolved forgets a link's DNS when the link goes)
            actions += sync_dnsmasq(run, None, check_mode)
        actions += sync_resolver(run, None, check_mode)
        if os.path.exists(self.sshd_dropin):
            actions.append(f"remove {self.sshd_dropin}")
            if not check_mode:
                os.unlink(self.sshd_dropin)
                actions.append(reload_sshd(run, self.sshd_pidfile))
        for path in (f"/etc/wireguard/{interface}.conf", f"/etc/wireguard/{hop_interface}.conf",
                     RULESET_PATH, SYSCTL_PATH, *([] if keep_key else [self.key_file]),
                     LAST_GOOD_DROPIN, LAST_GOOD_SCRIPT,
                     *([self.textfile] if self.textfile else []),
                     *(os.path.join(self.state_dir, f) for f in (
                         "state.json", "bundle.json", "previous.json", LAST_GOOD_FILES,
                         "agent.json", "denied.json", "monitor-state.json"))):
            if os.path.exists(path):
                actions.append(f"remove {path}")
                if not check_mode:
                    os.unlink(path)
        for directory in (os.path.dirname(RULESET_PATH), self.state_dir,
                          os.path.dirname(LAST_GOOD_SCRIPT), os.path.dirname(LAST_GOOD_DROPIN)):
            if os.path.isdir(directory) and not os.listdir(directory) and not check_mode:
                os.rmdir(directory)
        if dropin_installed and not check_mode:
            run("systemctl", "daemon-reload")
        if forwarded:
            actions.append("stop forwarding")
            if not check_mode:
                for path in FORWARDING:
                    with open(path, "w") as fh:
                        fh.write("0\n")
        text = read(self.hosts_file) or ""
        new = with_hosts_block(text, interface, None)
        if new != text:
            actions.append(f"remove the mesh names from {self.hosts_file}")
            if not check_mode:
                write_system_file(self.hosts_file, new)
        return actions


TRUST_FILE = "/etc/wgmesh/trust.json"


ARGUMENT_SPEC = {
    "bundle": {"type": "dict"},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent", "previous"]},
    "previous_hash": {"type": "str"},
    "key_file": {"type": "path", "required": True, "no_log": False},
    "service": {"type": "str", "default": "auto", "choices": ["auto", "systemd", "wg-quick"]},
    "hosts_file": {"type": "path", "default": "/etc/hosts"},
    "state_dir": {"type": "path", "default": "/var/lib/wgmesh"},
    "sshd_config": {"type": "path", "default": "/etc/ssh/sshd_config"},
    "sshd_dropin": {"type": "path", "default": SSHD_DROPIN},
    "sshd_pidfile": {"type": "path", "default": "/run/sshd.pid"},
    "root": {"type": "path"},
    "agent_program": {"type": "str"},
    "monitor_program": {"type": "str"},
    "metrics_textfile": {"type": "str", "default": DEFAULT_TEXTFILE},
    "metrics_interval": {"type": "int", "default": 15},
    "manifest": {"type": "dict"},
    "trust": {"type": "dict"},
    "trust_file": {"type": "path", "default": TRUST_FILE},
}


def leave(module: AnsibleModule, host: Host, before: dict, keep_key: bool = False) -> None:
    """Take the host out of the mesh (the interfaces its last bundle named) and exit."""
    last = host.last_good() or {}
    try:
        actions = host.leave(last.get("interface", "wg0"), last.get("hop_interface", "wg0-hop"),
                             module.check_mode, keep_key=keep_key)
    except ApplyError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=bool(actions), actions=actions, drift=[], hash=None,
                     previous=before.get("hash"), peers=0)


def previous_bundle(module: AnsibleModule, host: Host, before: dict) -> dict:
    """state=previous: the bundle the host ran before this run's (a canary failed)."""
    target = module.params["previous_hash"]
    if target and target == before.get("hash"):  # this run did not change the host
        module.exit_json(changed=False, actions=[], drift=[], hash=target, previous=target,
                         peers=0)
    text = read(os.path.join(host.state_dir, "previous.json"))
    if text is not None and target and json.loads(text).get("hash") != target:
        module.fail_json(msg=f"cannot return to bundle {target}: the host kept "
                         f"{json.loads(text).get('hash')} as its previous one")
    if text is None:  # wgmesh never ran here before this bundle: take it out again
        leave(module, host, before, keep_key=True)
    return json.loads(text)


def accept_signed(module: AnsibleModule, b: dict, on_disk: dict | None) -> dict | None:
    """The trust to record when the host takes signed manifests (it has a trust, or one
    comes to enrol it): the manifest must hold to it. None for an unsigned mesh."""
    trust_file = module.params["trust_file"]
    try:
        trust = on_disk
        if trust is None and module.params["trust"] is not None:  # enrolment
            trust = dict(checked_trust(module.params["trust"]), serial=0, digest=None)
    except Refused as exc:
        raise ApplyError(str(exc)) from exc
    if trust is None:
        if module.params["manifest"] is not None:
            raise ApplyError("a manifest came but the host trusts no admins: pass trust")
        return None
    if module.params["manifest"] is None:
        raise ApplyError(f"refused: this host takes only bundles of a signed manifest (it has "
                         f"{trust_file}); mesh.yml has no signing section")
    try:
        import nacl.signing  # noqa: F401
    except ImportError as exc:
        raise ApplyError("checking signed manifests needs PyNaCl on the host (Debian: "
                         "python3-nacl; wgmesh_manage_packages installs it)") from exc
    try:
        return accept(module.params["manifest"], checked_trust(trust), b["name"],
                      bundle_digest(b))
    except Refused as exc:
        raise ApplyError(f"refused: {exc}") from exc


def prepare(module: AnsibleModule, host: Host, b: dict, before: dict, result: dict) -> None:
    """What is refused before anything on the host changes (beside the bundle's shape and
    signature): another key, an exit node that would cut the management path, a table nft
    refuses."""
    if b["uses_exit_node"]:
        result["ssh_client"] = refuse_exit_over_ssh(host.run, b, b["name"])
    if b["public_key"] and os.path.exists(host.key_file):
        have = public_key_of(host.key_file)
        if have != b["public_key"]:
            raise ApplyError(
                f"{host.key_file} holds the key of public key {have}, but the bundle was "
                f"compiled for {b['public_key']}: a host's key changes only by rotation "
                "(playbooks/rotate.yml)")
    elif not os.path.exists(host.key_file) and not module.check_mode:
        raise ApplyError(f"{host.key_file} is missing: make it with wgmesh_key first")
    # A table the host runs already passed.
    checked = before.get("hash") == b["hash"] and read(RULESET_PATH) == b["nftables"]
    if not checked and shutil.which("nft"):
        host.run("nft", "-c", "-f", "-", data=b["nftables"])
    elif not checked and not module.check_mode:
        raise ApplyError("nft is missing: install nftables (wgmesh_manage_packages)")


def converge_or_roll_back(module: AnsibleModule, host: Host, b: dict, before: dict,
                          result: dict) -> list[str]:
    """Make the host run ``b`` and record it; on any failure, return it to the last good
    bundle (or to its state before wgmesh) and fail saying which."""
    check_mode = module.check_mode
    try:
        actions = host.converge(b, check_mode)
        if not check_mode and (actions or before.get("hash") != b["hash"]):
            host.record(b)
        return actions + host.programs.sync(b, check_mode)
    except (ApplyError, OSError) as exc:
        cause = str(exc)
    last = host.last_good()
    try:
        if last is None:
            Host(module).leave(b["interface"], b["hop_interface"], check_mode=False,
                               keep_key=True)
            back = "returned to its state before wgmesh (no bundle had applied before)"
        else:
            Host(module).converge(last, check_mode=False, reload_table=True)
            back = (f"returned to the last good bundle {last['hash']}"
                    if last.get("hash") != b["hash"] else
                    f"re-applied the bundle it ran, {last['hash']}")
    except (ApplyError, OSError) as again:
        back = f"and returning to the last good bundle failed too: {again}"
    module.fail_json(msg=f"applying bundle {b['hash']} failed: {cause}; {back}", changed=True,
                     **result)


def main() -> None:
    started = time.monotonic()
    # A connection cut mid-apply must not cut the transaction half-way: the apply (or its
    # rollback) finishes on the host whatever happens to the session it was started from.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("state", "present", ["bundle"])])
    p = module.params
    if os.geteuid() != 0:
        module.fail_json(msg="wgmesh needs root on this host (WireGuard keys, interfaces, "
                         "nftables): connect as root, or as a user with sudo and "
                         "ansible_become: true (group_vars/all.yml beside mesh.yml)")
    for name in ("state_dir", "metrics_textfile"):  # both land on a systemd command line
        value = p[name]
        if not PLAIN_PATH.fullmatch(value) and (name == "state_dir" or value):
            module.fail_json(msg=f"{name} {value!r} is not a plain absolute path (letters, "
                             "digits, '.', '_', '-' and '/')")
    if not 1 <= p["metrics_interval"] <= 3600:
        module.fail_json(msg="metrics_interval must be 1 to 3600 seconds")
    host = Host(module)
    before = host.state()
    trust_file = p["trust_file"]
    try:
        on_disk = json.loads(read(trust_file) or "null")
    except ValueError:
        module.fail_json(msg=f"{trust_file} is not JSON: the host's trust is damaged")
    if on_disk is not None and p["state"] == "previous":
        module.fail_json(msg=f"refused: this host takes only signed manifests ({trust_file}), "
                         "and going back to the bundle before is going back to an older one")
    if p["state"] == "absent":
        leave(module, host, before)
    if p["root"]:
        module.fail_json(msg="root is handled by the wgmesh_apply action on the controller")
    b = previous_bundle(module, host, before) if p["state"] == "previous" else p["bundle"]
    result = {"previous": before.get("hash"), "hash": b.get("hash"),
              "applied": {k: before.get(k) for k in ("hash", "commit", "applied")}}
    try:
        check_bundle(b)
        accepted = accept_signed(module, b, on_disk)
        if accepted is not None:
            result["serial"] = accepted["serial"]
        prepare(module, host, b, before, result)
    except (ApplyError, BundleError) as exc:
        module.fail_json(msg=str(exc), changed=False, **result)

    actions = converge_or_roll_back(module, host, b, before, result)
    # The host was recorded as running this bundle: every difference found is drift.
    drift = actions if before.get("hash") == b["hash"] else []
    if accepted is not None and accepted != on_disk:
        actions.append(f"accept manifest serial {accepted['serial']}" + (
            "" if on_disk is None or (on_disk.get("admins"), on_disk.get("threshold")) ==
            (accepted["admins"], accepted["threshold"]) else
            f" and its admins ({', '.join(sorted(accepted['admins']))}, threshold "
            f"{accepted['threshold']})"))
        if not module.check_mode:
            write_atomic(trust_file, json.dumps(accepted, sort_keys=True), 0o644, dir_mode=0o755)
    diff = {"before": "\n".join(host.diff_before), "after": "\n".join(host.diff_after)}
    if actions:  # what differs, in words, with the files' diff
        diff["prepared"] = "".join(f"{'drift' if drift else 'change'}: {a}\n" for a in actions)
    module.exit_json(changed=bool(actions), actions=actions, drift=drift, diff=diff,
                     peers=len(re.findall(r"^\[Peer\]", b["wg_conf"], re.M)),
                     seconds=round(time.monotonic() - started, 3), **result)


if __name__ == "__main__":
    main()
