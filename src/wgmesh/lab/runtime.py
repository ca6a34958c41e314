"""Bring a lab topology up and down on this machine.

Every lab object lives in a network namespace named ``<lab>-<node>``: the fabric (all segment
bridges, the dead-end gateway and Ansible's way in), one per NAT router and one per host. The
root network namespace is never given an address, a route, a link or a rule. Processes are
ended by the PID each host's init recorded, after checking it is that init.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from wgmesh.errors import LabError
from wgmesh.lab.topology import Host, Router, Topology

HOST_INIT = Path(__file__).with_name("host-init.sh")
SYSTEMD_INIT = Path(__file__).with_name("systemd-host-init.sh")
NETNS_DIR = Path("/run/netns")
READY_TIMEOUT = 15.0
# systemd hosts boot in parallel: seconds each on this kind of machine, more under load.
BOOT_TIMEOUT = 120.0
# Debian root file systems for systemd hosts, built once by debootstrap and shared read-only
# as every such host's lower layer.
ROOTFS_CACHE = Path("/var/cache/wgmesh-lab")
ROOTFS_VERSION = "v5"  # bump when the recipe below changes: older caches are rebuilt
# What a systemd host has before Ansible comes: what sshd, Ansible's modules and wgmesh's
# host side need (the role would install the WireGuard tools and nftables; they are here so
# that a lab comes up without a download), the resolver Debian's systemd hosts mostly run
# (split DNS goes through it), what pull mode needs to install wgmesh from a kit and fetch
# (python3-venv, git), and the lab's probes (ping, pgrep).
ROOTFS_PACKAGES = ("systemd", "systemd-sysv", "systemd-resolved", "dbus", "iproute2", "nftables",
                   "wireguard-tools", "wireguard-go", "openssh-server", "python3", "python3-nacl",
                   # debootstrap does not resolve virtual packages: python3-nacl's cffi.
                   "python3-cffi-backend", "python3-venv", "git", "sudo", "iputils-ping",
                   "procps")



def run(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def ip_batch(netns: str | None, commands: list[str]) -> None:
    """Run many ``ip`` commands in one process; the lab is created in a few dozen calls."""
    if commands:
        argv = ["ip", "-n", netns] if netns else ["ip"]
        run(*argv, "-batch", "-", stdin="\n".join(commands) + "\n")


def sysctl(netns: str, values: dict[str, int]) -> None:
    """Set network sysctls inside a namespace (/proc/sys/net is per namespace)."""
    run("nsenter", f"--net={NETNS_DIR / netns}", "sysctl", "-qw",
        *(f"{k}={v}" for k, v in values.items()))


def pid_is_init(pid: int, host_dir: Path) -> bool:
    """True if ``pid`` is the init (or a systemd host's supervisor) of ``host_dir``
    (guards against reused PIDs)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return (str(HOST_INIT).encode() in cmdline or str(SYSTEMD_INIT).encode() in cmdline) \
        and str(host_dir).encode() in cmdline


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def apt_mirror() -> str:
    """The Debian archive this machine's apt uses (its first entry for a release's main
    suite), so debootstrap takes packages from where apt does, a local mirror included."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines()
                          if ":" in line and not line.startswith(("#", " ")))
            suites = fields.get("Suites", "").split()
            if "deb" in fields.get("Types", "").split() and any("-" not in x for x in suites):
                return fields["URIs"].split()[0]
    sources = Path("/etc/apt/sources.list")
    for line in sources.read_text().splitlines() if sources.exists() else []:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb" and "-" not in parts[2]:
            return next(p for p in parts[1:] if not p.startswith("["))
    raise LabError("no Debian archive in this machine's apt sources: systemd hosts need one "
                   "for debootstrap")


def rootfs(release: str) -> Path:
    """The root file system of a systemd host running ``release``, built on first use."""
    path = ROOTFS_CACHE / f"rootfs-{release}-{ROOTFS_VERSION}"
    if (path / ".wgmesh-complete").exists():
        return path
    for old in ROOTFS_CACHE.glob(f"rootfs-{release}*"):  # an earlier recipe's
        shutil.rmtree(old, ignore_errors=True)
    for tool in ("debootstrap", "systemd-nspawn"):
        if shutil.which(tool) is None:
            raise LabError(f"systemd hosts need {tool} (Debian packages debootstrap and "
                           "systemd-container; ./dev.sh install installs them)")
    ROOTFS_CACHE.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    try:
        run("debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}",
            release, str(building), apt_mirror())
    except LabError as exc:
        log = building / "debootstrap/debootstrap.log"
        tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
        raise LabError(f"{exc} {tail}") from exc
    # The lab's users besides root (topology.USERS): wgadmin with sudo, guest without.
    for uid, name in ((1000, "wgadmin"), (1001, "guest")):
        run("chroot", str(building), "useradd", "--create-home", "--shell", "/bin/bash",
            "--uid", str(uid), "--user-group", name)
    # As systemd-resolved leaves a booted system (its setup skips a chroot): names go to its
    # stub, not to the resolver of the machine that built the file system.
    resolv = building / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    sudoers = building / "etc/sudoers.d/wgadmin"
    sudoers.write_text("wgadmin ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    (building / ".wgmesh-complete").touch()
    shutil.rmtree(path, ignore_errors=True)
    building.rename(path)
    return path


@dataclass
class NodeStatus:
    name: str
    kind: str
    netns: str
    address: str
    state: str


class Lab:
    def __init__(self, topology: Topology):
        self.topo = topology
        self.dir = topology.state_dir

    # Paths -----------------------------------------------------------------------------
    def host_dir(self, host: str) -> Path:
        return self.dir / "hosts" / host

    @property
    def key_file(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    def namespaces(self) -> list[str]:
        """Every namespace this lab owns, from the topology and from what an earlier up
        recorded (the topology file may have changed since)."""
        names = {self.topo.fabric}
        names.update(self.topo.netns(n) for n in (*self.topo.routers, *self.topo.hosts))
        with contextlib.suppress(OSError, ValueError, KeyError):
            names.update(json.loads((self.dir / "state.json").read_text())["namespaces"])
        prefix = f"{self.topo.name}-"
        return sorted(n for n in names if n.startswith(prefix))

    def init_pid(self, host: str) -> int | None:
        """PID of a host's init (a systemd host's supervisor) if it is running, else None."""
        try:
            pid = int((self.host_dir(host) / "init.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if pid_is_init(pid, self.host_dir(host)) else None

    def container_pid(self, host: str) -> int | None:
        """A systemd host's PID 1 (systemd) as this machine sees it, while it is booted."""
        pid = self.init_pid(host)
        nspawn = [c for c in children(pid) if _comm(c) == "systemd-nspawn"] if pid else []
        inner = [p for c in nspawn for p in children(c)]
        return inner[0] if inner else None

    def booted(self, host: str) -> bool:
        """A systemd host's systemd has finished starting (running, or degraded by a unit
        that failed) and its sshd listens."""
        try:
            state, listening = (subprocess.run(self.exec_argv(host, argv), capture_output=True,
                                               text=True, check=False).stdout.strip()
                                for argv in (["systemctl", "is-system-running"],
                                             ["ss", "-Hltn", "sport = :22"]))
        except LabError:  # not booted (yet, or any more)
            return False
        return state in ("running", "degraded") and bool(listening)

    def reboot(self, host: str) -> float:
        """Reboot a systemd host from inside (systemctl reboot) and wait until it has booted
        again; returns the seconds that took."""
        if self.topo.hosts[host].init != "systemd":
            raise LabError(f'lab host "{host}" runs no init system to reboot')
        before = self.container_pid(host)
        if before is None:
            raise LabError(f'lab host "{host}" is not running (try: wgmesh lab up)')
        started = time.monotonic()
        subprocess.run(self.exec_argv(host, ["systemctl", "reboot"]), capture_output=True,
                       check=False)
        deadline = started + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            now = self.container_pid(host)
            if now is not None and now != before and self.booted(host):
                return time.monotonic() - started
            time.sleep(0.1)
        raise LabError(f'lab host "{host}" did not boot again within {BOOT_TIMEOUT:.0f} s: '
                       + (self.host_dir(host) / "init.log").read_text(errors="replace")[-400:])

    # Up --------------------------------------------------------------------------------
    def up(self) -> None:
        """Create whatever is missing; a second call changes nothing."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        all_ns = sorted({*self.namespaces()})
        (self.dir / "state.json").write_text(
            json.dumps({"lab": self.topo.name, "topology": str(self.topo.source),
                        "namespaces": all_ns}, indent=2) + "\n")
        if not self.key_file.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"wgmesh-lab-{self.topo.name}",
                "-f", str(self.key_file))
        self._fabric()
        for router in self.topo.routers.values():
            self._router(router)
        starting = [h for h in self.topo.hosts.values() if not self._host_healthy(h)]
        for host in starting:
            self._remove_host(host.name)
            self._create_host(host)
        self._wait_ready(starting)
        self._write_known_hosts()

    def _fabric(self) -> None:
        marker = self.dir / "fabric.done"
        if marker.exists() and netns_exists(self.topo.fabric):
            return
        self._del_netns(self.topo.fabric)
        run("ip", "netns", "add", self.topo.fabric)
        cmds = ["link set lo up"]
        for seg in self.topo.segments.values():
            br = f"br-{seg.name}"
            cmds += [f"link add {br} type bridge",
                     f"addr add {seg.mgmt}/{seg.subnet.prefixlen} dev {br}",
                     f"link set {br} up"]
        ip_batch(self.topo.fabric, cmds)
        # The fabric is a switch and a dead end, never a router; bridged frames skip the
        # ip-family netfilter hooks (br_netfilter is loaded on this kind of machine).
        values = {"net.ipv4.ip_forward": 0}
        if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
            values |= {"net.bridge.bridge-nf-call-iptables": 0,
                       "net.bridge.bridge-nf-call-ip6tables": 0}
        sysctl(self.topo.fabric, values)
        marker.touch()

    def _veth(self, fabric_end: str, netns: str, inner: str, segment: str) -> None:
        run("ip", "link", "add", fabric_end, "netns", self.topo.fabric, "type", "veth",
            "peer", "name", inner, "netns", netns)
        ip_batch(self.topo.fabric, [f"link set {fabric_end} master br-{segment} up"])

    def _router(self, r: Router) -> None:
        ns = self.topo.netns(r.name)
        marker = self.dir / f"router-{r.name}.done"
        if marker.exists() and netns_exists(ns):
            return
        self._del_netns(ns)
        run("ip", "netns", "add", ns)
        self._veth(f"{r.name}.w", ns, "wan", r.uplink)
        self._veth(f"{r.name}.l", ns, "lan", r.lan)
        up_seg, lan_seg = self.topo.segments[r.uplink], self.topo.segments[r.lan]
        ip_batch(ns, [
            "link set lo up",
            f"addr add {r.wan_address}/{up_seg.subnet.prefixlen} dev wan",
            f"addr add {r.lan_address}/{lan_seg.subnet.prefixlen} dev lan",
            "link set wan up", "link set lan up",
            f"route add default via {up_seg.gateway}",
        ])
        sysctl(ns, {"net.ipv4.ip_forward": 1})
        run("nsenter", f"--net={NETNS_DIR / ns}", "nft", "-f", "-", stdin=nat_ruleset(r))
        marker.touch()

    def _host_healthy(self, host: Host) -> bool:
        return (netns_exists(self.topo.netns(host.name)) and self.init_pid(host.name) is not None
                and self._ready(host))

    def _ready(self, host: Host) -> bool:
        if host.init == "systemd":
            return self.booted(host.name)
        return (self.host_dir(host.name) / "ready").exists()

    def _create_host(self, host: Host) -> None:
        ns = self.topo.netns(host.name)
        run("ip", "netns", "add", ns)
        cmds = ["link set lo up"]
        for i, (seg_name, addr) in enumerate(host.interfaces.items()):
            self._veth(f"{host.name}.{i}", ns, f"eth{i}", seg_name)
            prefix = self.topo.segments[seg_name].subnet.prefixlen
            cmds += [f"addr add {addr}/{prefix} dev eth{i}", f"link set eth{i} up"]
        cmds.append(f"route add default via {self.topo.segments[host.primary_segment].gateway}")
        ip_batch(ns, cmds)
        hdir = self.host_dir(host.name)
        if host.init == "systemd":
            argv = ["unshare", "--mount", "--propagation", "private", "/bin/bash",
                    str(SYSTEMD_INIT), str(hdir), host.name, str(rootfs(host.release)),
                    str(NETNS_DIR / ns)]
            self._seed_systemd_host(host, hdir)
        else:
            argv = ["nsenter", f"--net={NETNS_DIR / ns}", "unshare", "--mount", "--uts",
                    "--pid", "--fork", "--propagation", "private", "/bin/bash",
                    str(HOST_INIT), str(hdir), host.name]
            self._seed_host_dir(host, hdir)
        with open(hdir / "init.log", "wb") as log:
            # setsid -f: the init is not our child, so nothing waits on it or leaves a zombie.
            subprocess.run(["setsid", "-f", *argv], stdin=subprocess.DEVNULL, stdout=log,
                           stderr=subprocess.STDOUT, check=True)

    def _seed_host_dir(self, host: Host, hdir: Path) -> None:
        """The host's private files, placed in the overlay upper layers before it starts."""
        etc = hdir / "etc.upper"
        for sub in ("etc.work", "var.work", "var.upper/lib/dbus", "run", "root/.ssh",
                    "etc.upper/ssh"):
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        (hdir / "tmp").mkdir(mode=0o1777, exist_ok=True)
        os.chmod(hdir / "tmp", 0o1777)
        (etc / "wireguard").mkdir(mode=0o700, exist_ok=True)
        (etc / "hostname").write_text(f"{host.name}\n")
        (etc / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n")
        # No resolver in the lab: with no nameserver line, lookups fail at once on 127.0.0.1.
        (etc / "resolv.conf").write_text("# wgmesh lab: no DNS server\n")
        machine_id = os.urandom(16).hex() + "\n"
        (etc / "machine-id").write_text(machine_id)
        # Ansible reads the D-Bus copy before /etc/machine-id.
        (hdir / "var.upper/lib/dbus/machine-id").write_text(machine_id)
        ssh = etc / "ssh"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name,
            "-f", str(ssh / "ssh_host_ed25519_key"))
        # Overlay whiteouts hide the machine's own RSA/ECDSA host keys from this host.
        for kind in ("rsa", "ecdsa"):
            for suffix in ("", ".pub"):
                path = ssh / f"ssh_host_{kind}_key{suffix}"
                if not path.exists():
                    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))
        (ssh / "sshd_config").write_text(sshd_config(host))
        shutil.copyfile(f"{self.key_file}.pub", hdir / "root/.ssh/authorized_keys")
        os.chmod(hdir / "root/.ssh", 0o700)

    def _seed_systemd_host(self, host: Host, hdir: Path) -> None:
        """A systemd host's own layer before its first boot: name, machine id, its own SSH
        host key (the only one its sshd offers) and the lab's key for root."""
        upper = hdir / "upper"
        for sub in ("work", "root", "upper/etc/ssh/sshd_config.d"):
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        etc = upper / "etc"
        (etc / "hostname").write_text(f"{host.name}\n")
        (etc / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n")
        # /etc/resolv.conf stays the root file system's: resolved's stub (which has no
        # server but the per-link ones wgmesh gives it, so other names fail at once).
        (etc / "machine-id").write_text(os.urandom(16).hex() + "\n")
        # A persistent journal, as a server keeps: what a boot before the last one logged
        # (its shutdown) can be read after a reboot.
        (upper / "var/log/journal").mkdir(parents=True, exist_ok=True)
        ssh = etc / "ssh"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name,
            "-f", str(ssh / "ssh_host_ed25519_key"))
        (ssh / "sshd_config.d/00-wgmesh-lab.conf").write_text("\n".join([
            "# wgmesh lab host: its own key only, many parallel sessions",
            "HostKey /etc/ssh/ssh_host_ed25519_key",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "UseDNS no",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "",
        ]))
        # The lab's key for every user (topology.USERS), each owning its own .ssh.
        for home, uid in (("root", 0), ("home/wgadmin", 1000), ("home/guest", 1001)):
            ssh_dir = upper / home / ".ssh"
            ssh_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f"{self.key_file}.pub", ssh_dir / "authorized_keys")
            os.chmod(ssh_dir, 0o700)
            for path in (ssh_dir.parent, ssh_dir, ssh_dir / "authorized_keys"):
                os.chown(path, uid, uid)

    def _wait_ready(self, hosts: list[Host]) -> None:
        deadline = time.monotonic() + (BOOT_TIMEOUT if any(h.init == "systemd" for h in hosts)
                                       else READY_TIMEOUT)
        waiting = {h.name for h in hosts}
        while waiting:
            for name in sorted(waiting):
                if self._ready(self.topo.hosts[name]):
                    waiting.discard(name)
            if not waiting:
                return
            if time.monotonic() > deadline:
                logs = {n: (self.host_dir(n) / "init.log").read_text(errors="replace")[-400:]
                        for n in sorted(waiting)}
                raise LabError(f"hosts did not become ready: {logs}")
            time.sleep(0.02)

    def _write_known_hosts(self) -> None:
        lines = []
        for host in self.topo.hosts.values():
            layer = "upper/etc" if host.init == "systemd" else "etc.upper"
            pub = (self.host_dir(host.name) / layer / "ssh/ssh_host_ed25519_key.pub").read_text()
            key = " ".join(pub.split()[:2])
            lines.append(f"{host.address} {key}\n")
        self.known_hosts.write_text("".join(lines))

    # Down ------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove every namespace, link, process and file of this lab; safe to repeat."""
        for host in self._recorded_hosts():
            self._kill_host(host)
        namespaces = [ns for ns in self.namespaces() if netns_exists(ns)]
        self._kill_netns_processes(namespaces)
        for ns in namespaces:
            self._del_netns(ns)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _recorded_hosts(self) -> list[str]:
        hosts_dir = self.dir / "hosts"
        return sorted(p.name for p in hosts_dir.iterdir()) if hosts_dir.is_dir() else []

    def _kill_host(self, name: str) -> None:
        pid = self.init_pid(name)
        if pid is None:
            return
        # A systemd host: its supervisor first (so it boots nothing again), then the
        # container's PID 1, which takes every process of the host with it, and nspawn.
        inner = self.container_pid(name)
        nspawn = children(pid)
        # PID 1 of the host's PID namespace: the kernel ends every process inside with it.
        for p in (pid, *([inner] if inner else []), *nspawn):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        _wait_gone([pid, *([inner] if inner else []), *nspawn])

    def _kill_netns_processes(self, namespaces: list[str]) -> None:
        """End anything still running inside a lab namespace (e.g. a ProxyCommand's nc)."""
        pids = []
        for ns in namespaces:
            out = run("ip", "netns", "pids", ns, check=False)
            pids += [int(p) for p in out.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(pids)

    def _remove_host(self, name: str) -> None:
        self._kill_host(name)
        ns = self.topo.netns(name)
        if netns_exists(ns):
            self._kill_netns_processes([ns])
            self._del_netns(ns)
        shutil.rmtree(self.host_dir(name), ignore_errors=True)

    def _del_netns(self, ns: str) -> None:
        if netns_exists(ns):
            # Deleting a namespace's veth end removes its peer in the fabric with it.
            run("ip", "netns", "del", ns)

    # Status ----------------------------------------------------------------------------
    def status(self) -> list[NodeStatus]:
        rows = [NodeStatus("fabric", "fabric", self.topo.fabric,
                           ", ".join(str(s.mgmt) for s in self.topo.segments.values()),
                           "up" if netns_exists(self.topo.fabric) else "down")]
        for r in self.topo.routers.values():
            ns = self.topo.netns(r.name)
            rows.append(NodeStatus(r.name, f"nat ({r.nat})", ns, str(r.wan_address),
                                   "up" if netns_exists(ns) else "down"))
        for h in self.topo.hosts.values():
            ns = self.topo.netns(h.name)
            pid = self.init_pid(h.name)
            state = f"up (init {pid})" if self._host_healthy(h) else (
                "broken" if netns_exists(ns) else "down")
            rows.append(NodeStatus(h.name, "host" if h.wireguard else "host (plain)", ns,
                                   str(h.address), state))
        return rows

    def start_agents(self, only: list[str] | None = None) -> list[str]:
        """Start the NAT traversal agent and the monitor where wgmesh_apply installed them
        and systemd does not run them (namespace hosts have no init system): runners the
        host's PID 1 adopts, logging to /var/log/wgmesh-agent.log and wgmesh-monitor.log.
        Programs that run already are left; hosts where one started are returned."""
        started = []
        for h in self.topo.hosts.values():
            if not h.wireguard or h.init == "systemd" or (only and h.name not in only):
                continue
            for program, log in PROGRAMS:
                if not (self.host_dir(h.name) / "var.upper" / program).exists():
                    continue
                command = f"python3 /var/{program}"
                running = subprocess.run(self.exec_argv(h.name, ["pgrep", "-f", command]),
                                         capture_output=True)
                if running.returncode == 0:
                    continue
                run(*self.exec_argv(h.name, ["setsid", "-f", "sh", "-c",
                                             f"exec {command} >>{log} 2>&1 </dev/null"]))
                if h.name not in started:
                    started.append(h.name)
        return started

    def exec_argv(self, node: str, command: list[str]) -> list[str]:
        """argv that runs ``command`` inside a host (all its namespaces) or router/fabric."""
        if node in self.topo.hosts:
            systemd = self.topo.hosts[node].init == "systemd"
            pid = self.container_pid(node) if systemd else self.init_pid(node)
            if pid is None:
                raise LabError(f'lab host "{node}" is not running (try: wgmesh lab up)')
            # A systemd host's root is its container's (-r), and so its working directory
            # (-w: PID 1's, /).
            where = ["-i", "-C", "-r", "-w"] if systemd else ["--wd=/"]
            return ["nsenter", "-t", str(pid), "-m", "-u", "-n", "-p", *where, *command]
        if node in self.topo.routers or node == "fabric":
            ns = self.topo.netns(node)
            if not netns_exists(ns):
                raise LabError(f'lab node "{node}" is not running (try: wgmesh lab up)')
            return ["nsenter", f"--net={NETNS_DIR / ns}", *command]
        known = ", ".join(["fabric", *self.topo.routers, *self.topo.hosts])
        raise LabError(f'no lab node "{node}" (known: {known})')


def _wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        pending = {p for p in pending if Path(f"/proc/{p}").exists() and not _is_zombie(p)}
        if pending:
            time.sleep(0.01)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def sshd_config(host: Host) -> str:
    return "\n".join([
        "# wgmesh lab host: sshd on the host's own underlay address",
        f"ListenAddress {host.address}",
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        "PidFile /run/sshd.pid",
        # No PAM: root's shadow entry would make the account look locked to it.
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "UseDNS no",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
        "",
    ])


# Where wgmesh_apply installs the agent (under the host's own /var), and how it runs there.
# The programs wgmesh_apply installs in the state folder, and their logs.
PROGRAMS = (("lib/wgmesh/agent.pyz", "/var/log/wgmesh-agent.log"),
            ("lib/wgmesh/monitor.pyz", "/var/log/wgmesh-monitor.log"))


def nat_ruleset(r: Router) -> str:
    """A home-router NAT: LAN out, replies back, nothing unsolicited in."""
    # fully-random picks a fresh source port for every new flow, so the mapping differs per
    # destination (a symmetric NAT); plain masquerade keeps the port where it can.
    masq = "masquerade fully-random" if r.nat == "symmetric" else "masquerade"
    return f"""table ip wgmesh_lab_nat
delete table ip wgmesh_lab_nat
table ip wgmesh_lab_nat {{
    chain input {{
        # Nothing unsolicited reaches the router itself either: a packet it accepted would
        # leave a connection entry that makes it map a LAN host's port to another one.
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname {{ "lo", "lan" }} accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
        counter comment "unsolicited inbound"
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {masq}
    }}
}}
"""
