"""A real multi-node Ray cluster on this machine, for tests and `curate bench cluster`.

    with LocalCluster(workers=2) as cluster:          # head + 2 worker nodes
        run curate with engine.address = cluster.address
        cluster.kill_node("node_b")                    # crash that node (SIGKILL all of it)

Every node is its own `ray start --block` process (its own raylet, node id, object
store, ports and temp dir), exactly what `ray start` does on separate machines,
only with every address on loopback (127.0.0.1). Each node has one CPU and a
custom resource named after it ({"node_a": 1}) so work can be pinned to it; one
worker node also carries a stand-in GPU resource (`GPU_STANDIN`), which is how a
test places model stages on "the GPU node" without a GPU.

Nothing here calls `ray stop` (that would stop every Ray on the machine, other
people's too): the cluster kills exactly the processes it started, found by its
own temp directory in their command lines.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
GPU_STANDIN = "gpu_standin"  # custom resource standing in for a GPU on one worker node
HEAD_RESOURCE = "head"

# Faster node-death detection than the defaults (which take tens of seconds):
# the GCS health-checks each raylet every 1 s and declares it dead after 3 misses.
_FAST_FAILURE_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class NodeSpec:
    name: str  # also the node's custom resource {name: 1}
    num_cpus: int = 1
    resources: dict = field(default_factory=dict)  # extra custom resources


@dataclass
class Node:
    spec: NodeSpec
    proc: subprocess.Popen
    temp_dir: str
    log_path: str
    node_id: Optional[str] = None
    killed: bool = False


# `ray start --node-ip-address=127.0.0.1` deliberately rewrites a loopback address
# to the machine's routable IP (so other machines can reach it). A cluster that
# lives on one machine must stay on loopback, so nodes are started through this
# wrapper, which keeps the address as given and is otherwise the `ray` CLI.
_RAY_START = (
    "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)


def default_workers(n: int = 2, gpu_on: int = 0) -> list[NodeSpec]:
    """n worker nodes node_a, node_b, ...; worker `gpu_on` also has the stand-in GPU."""
    specs = []
    for i in range(n):
        name = "node_" + chr(ord("a") + i)
        specs.append(NodeSpec(name, 1, {GPU_STANDIN: 1} if i == gpu_on else {}))
    return specs


class LocalCluster:
    """Head + worker nodes as separate `ray start` processes on loopback.

    head_cpus: CPUs of the head node (1 by default; 0 makes it a pure coordinator,
    as on many real clusters). object_store_mb: per node (Ray's minimum is ~75 MB)."""

    def __init__(self, workers: int | list[NodeSpec] = 2, head_cpus: int = 1, object_store_mb: int = 80,
                 root: Optional[str] = None, env: Optional[dict] = None, start_timeout_s: float = 120.0):
        self.worker_specs = default_workers(workers) if isinstance(workers, int) else list(workers)
        self.head_spec = NodeSpec(HEAD_RESOURCE, head_cpus, {})
        self.object_store_bytes = int(object_store_mb) << 20
        # Short path: Ray's unix sockets live under it (108-byte limit on socket paths).
        self.root = Path(root or tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        # Token authentication (Ray's default for clusters): one fresh token per cluster,
        # given to every node and driver through the environment, never on a command line.
        self.token = secrets.token_hex(32)
        self.port: Optional[int] = None
        self.nodes: dict[str, Node] = {}

    # ---- lifecycle -----------------------------------------------------------------
    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("cluster not started")
        return f"{LOOPBACK}:{self.port}"

    def __enter__(self) -> "LocalCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def driver_env(self, base: Optional[dict] = None) -> dict:
        """Environment for a process that joins this cluster (`curate run --address`).

        `ray.init(address="127.0.0.1:PORT")` rewrites a loopback address to the
        machine's routable IP, like `ray start`; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
        makes that rewrite return 127.0.0.1 (its only other effect, refusing to
        start a worker *node*, does not concern a driver). Not needed on a real
        cluster, whose addresses are real."""
        env = self._env(base)
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        return env

    def _env(self, base: Optional[dict] = None) -> dict:
        env = dict(os.environ if base is None else base)
        env.update(_FAST_FAILURE_ENV)
        env.update(self.env)
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = self.token
        # A worker process must import the project exactly as the driver does.
        repo = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([repo] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        return env

    def _start_node(self, spec: NodeSpec, head: bool) -> Node:
        temp_dir = self.root / spec.name
        temp_dir.mkdir(parents=True, exist_ok=True)
        resources = {spec.name: 1, **spec.resources}
        cmd = [
            sys.executable, "-c", _RAY_START, "start", "--block", "--disable-usage-stats",
            f"--node-ip-address={LOOPBACK}", f"--num-cpus={spec.num_cpus}", "--num-gpus=0",
            f"--resources={json.dumps(resources)}", f"--object-store-memory={self.object_store_bytes}",
            f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={free_port()}",
            f"--node-name={spec.name}",
        ]
        if head:
            self.port = free_port()
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}"]
        else:
            cmd += [f"--address={self.address}"]
        log_path = str(self.root / f"{spec.name}.log")
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self._env(),
                                    start_new_session=True)
        node = Node(spec, proc, str(temp_dir), log_path)
        self.nodes[spec.name] = node
        return node

    def start(self) -> "LocalCluster":
        self._start_node(self.head_spec, head=True)
        self._wait_for(lambda alive: HEAD_RESOURCE in alive, "head node")
        for spec in self.worker_specs:
            self._start_node(spec, head=False)
        self._wait_for(lambda alive: all(s.name in alive for s in self.worker_specs), "worker nodes")
        return self

    def _alive_nodes(self) -> dict[str, str]:
        """{node resource name: node id} of the nodes the GCS reports alive (queried in
        a subprocess, so the caller's own Ray connection is untouched)."""
        code = (
            "import json, ray\n"
            f"ray.init(address={self.address!r}, log_to_driver=False, logging_level='ERROR')\n"
            "print('NODES=' + json.dumps([[n['NodeID'], sorted(n['Resources'])] for n in ray.nodes() if n['Alive']]))\n"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.driver_env(),
                             timeout=60)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("NODES=")), None)
        if line is None:
            return {}
        names = {n.spec.name for n in self.nodes.values()}
        out = {}
        for node_id, keys in json.loads(line[len("NODES="):]):
            for k in keys:
                if k in names:
                    out[k] = node_id
        return out

    def _wait_for(self, ok, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            dead = [n.spec.name for n in self.nodes.values() if n.proc.poll() is not None and not n.killed]
            if dead:
                raise RuntimeError(f"ray start exited for {dead}: {self.tail_logs(dead)}")
            alive = self._alive_nodes()
            if ok(alive):
                for name, node_id in alive.items():
                    self.nodes[name].node_id = node_id
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not up after {self.start_timeout_s:.0f}s: {self.tail_logs()}")
            time.sleep(1.0)

    def alive_node_names(self) -> set[str]:
        """Names of the nodes the GCS reports alive now."""
        return set(self._alive_nodes())

    def wait_until_dead(self, name: str, timeout_s: float = 90.0) -> float:
        """Wait until the GCS reports node `name` dead; returns the seconds waited.
        The GCS learns of a crashed node from its missed health checks (Ray's defaults:
        one every 3 s, dead after 5 missed), so a job that retries the lost unit and
        finishes within those seconds still sees the node alive at its end."""
        t0 = time.monotonic()
        while name in self._alive_nodes():
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"node {name} still reported alive {timeout_s:.0f}s after its crash")
            time.sleep(1.0)
        return time.monotonic() - t0

    def tail_logs(self, names=None, n: int = 1500) -> str:
        out = []
        for name, node in self.nodes.items():
            if names and name not in names:
                continue
            try:
                out.append(f"[{name}] " + Path(node.log_path).read_text(errors="replace")[-n:])
            except OSError:
                pass
        return "\n".join(out)

    # ---- processes -----------------------------------------------------------------
    def _node_processes(self, name: str):
        """Every live process of one node: its `ray start` process and the descendants
        (raylet, object store, agents, workers)."""
        import psutil

        node = self.nodes[name]
        try:
            parent = psutil.Process(node.proc.pid)
            return [parent] + parent.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def raylet_pid(self, name: str) -> int:
        for p in self._node_processes(name):
            try:
                if p.name() == "raylet" or (p.cmdline() and p.cmdline()[0].endswith("/raylet")):
                    return p.pid
            except Exception:  # noqa: BLE001 - process vanished
                continue
        raise RuntimeError(f"no raylet process found for node {name}")

    def kill_node(self, name: str) -> int:
        """Crash node `name` as a machine crash would: every process of it (raylet,
        workers, agents) is frozen with SIGSTOP first, so nothing of it runs on while
        the others are being killed (a unit cannot slip in a commit), then SIGKILLed.
        The GCS marks the node dead after its missed health checks. Returns the
        raylet's pid."""
        pid = self.raylet_pid(name)
        self.nodes[name].killed = True
        procs = self._node_processes(name)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for p in procs:
                try:
                    os.kill(p.pid, sig)
                except OSError:  # already gone
                    pass
        log.info("crashed node %s: raylet pid %d and %d other processes killed", name, pid, len(procs) - 1)
        return pid

    def _own_processes(self):
        """Processes whose command line names this cluster's root dir, plus node trees."""
        import psutil

        found = {}
        for name in self.nodes:
            for p in self._node_processes(name):
                found[p.pid] = p
        root = str(self.root)
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(root in part for part in (p.info["cmdline"] or [])):
                    found[p.pid] = p
            except Exception:  # noqa: BLE001
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every process of the cluster, SIGKILL what is left after timeout_s."""
        import psutil

        # Worker nodes first, head last (a graceful `ray start --block` exit tears down its node).
        for node in list(self.nodes.values())[::-1]:
            if node.proc.poll() is None:
                try:
                    node.proc.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        procs = self._own_processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        for p in alive + self._own_processes():
            try:
                p.kill()
            except psutil.Error:
                pass
        for node in self.nodes.values():
            try:
                node.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                node.proc.kill()
        left = [p.pid for p in self._own_processes() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if left:
            log.warning("cluster processes still alive after stop: %s", left)
        shutil.rmtree(self.root, ignore_errors=True)

    def alive_processes(self) -> list[int]:
        import psutil

        return [p.pid for p in self._own_processes() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
