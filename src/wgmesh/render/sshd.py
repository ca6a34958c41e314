"""The sshd drop-in of an SSH-managed host (the policy's ssh rules)."""

from __future__ import annotations

from wgmesh import grammar
from wgmesh.compile.hostoutput import HostOutput
from wgmesh.render.common import RenderError, clean


def sshd_dropin(host: HostOutput) -> str | None:
    """The sshd configuration of an SSH-managed host: over the mesh (connections to its mesh
    addresses), each source node may log in only as the users the ssh rules name. Other
    connections, the management path among them, do not match and are not affected."""
    if host.ssh is None:
        return None
    clean(host.name, str(host.ipv4), str(host.ipv6))
    me = f"{host.ipv4},{host.ipv6}"
    allow, deny = [], []
    for name, v4, v6, logins, nonroot in host.ssh:
        clean(name, v4, v6)
        for login in logins:
            if not grammar.matches(grammar.LOGIN, login):
                raise RenderError(f"refusing to render the login {login!r}")
        for addr in (v4, v6):
            if nonroot:
                allow.append(f"*@{addr}")
                if "root" not in logins:
                    deny.append(f"root@{addr}")
            else:
                allow += [f"{user}@{addr}" for user in logins]
    lines = [f"# wgmesh: who may log in to {host.name} over the mesh, as whom (the policy's "
             "ssh rules).",
             "# Generated; holds no secret. Only connections to this host's mesh addresses "
             "match:",
             "# every other connection (the management path) is not affected.",
             f"Match LocalAddress {me}"]
    if allow:
        lines.append(f"    AllowUsers {' '.join(allow)}")
    if deny or not allow:
        lines.append(f"    DenyUsers {' '.join(deny) if allow else '*'}")
    lines.append("Match all")
    return "\n".join(lines) + "\n"
