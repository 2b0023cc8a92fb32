"""Test-owned NATS (MQTT gateway + JetStream) and RabbitMQ (MQTT plugin) brokers.

Beside :class:`agent.tools.broker.MosquittoBroker`: each broker runs as our own child
process on free loopback ports, with its config, data and logs in a work directory of
its own, never the system instance's (those may run on 1883, 4222, 5672 here).

- :class:`NatsServer`: one ``nats-server`` with JetStream (store in the work directory)
  and an MQTT listener. NATS speaks MQTT 3.1.1 only, and needs JetStream and a
  ``server_name`` for it: sessions, retained messages and QoS 1 queues live in the
  account's ``$MQTT_*`` streams.
- :class:`NatsCluster`: three such servers routed to each other, JetStream clustered,
  the MQTT streams replicated on every node (``mqtt { stream_replicas: 3 }``), so an
  MQTT session survives the loss of the node its client was connected to.
- :class:`RabbitNode`: a RabbitMQ node with the ``rabbitmq_mqtt`` plugin (MQTT 3.1.1
  only in 3.10), its own node name, Erlang cookie (``HOME`` in the work directory),
  ``epmd`` and ports. Starting it takes 10-20 s on a quiet 2-core machine (Erlang boot,
  Mnesia, plugin); the default timeout allows for a busy one.

Every class starts, waits until an MQTT CONNECT is accepted (not just until the port
listens: NATS accepts TCP before JetStream has a leader), stops (SIGTERM), kills
(SIGKILL, a crash) and restarts on the same ports and data; each is a context manager.
A missing binary raises :class:`TransportError` naming the Debian package.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import TransportError
from agent.tools.broker import free_port

__all__ = [
    "NatsCluster",
    "NatsRoutes",
    "NatsServer",
    "RabbitNode",
    "find_epmd",
    "find_nats_server",
    "find_rabbitmq_server",
    "mqtt_connack",
]

_SBIN = "/usr/sbin:/usr/local/sbin"


def find_nats_server() -> str | None:
    """Path of the nats-server binary (Debian package nats-server puts it in /usr/sbin)."""
    return shutil.which("nats-server") or shutil.which("nats-server", path=_SBIN)


def find_rabbitmq_server() -> str | None:
    """Path of RabbitMQ's own start script, or None when it or its MQTT plugin is missing.

    Not Debian's /usr/sbin/rabbitmq-server: run as root, that wrapper switches to the
    user 'rabbitmq' and to /var/lib/rabbitmq, where our work directory and cookie are not.
    """
    script = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if not script.exists():
        found = shutil.which("rabbitmq-server")
        if found is None or Path(found).resolve().parent == Path("/usr/sbin"):
            return None
        script = Path(found)
    plugins = Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/plugins/rabbitmq_mqtt-*")
    if script.is_relative_to("/usr/lib/rabbitmq") and not any(plugins):
        return None
    return str(script)


def find_epmd() -> str | None:
    """Path of Erlang's port mapper daemon (Debian package erlang-base)."""
    return shutil.which("epmd") or shutil.which("epmd", path="/usr/lib/erlang/bin")


def mqtt_connack(port: int, timeout: float = 2.0) -> int | None:
    """Send one MQTT 3.1.1 CONNECT (clean session) and return the CONNACK return code.

    None when the connection fails or closes before a CONNACK. 0 means accepted; NATS
    answers 3 (server unavailable) while JetStream has no meta leader.
    """
    client_id = f"edgegov-probe-{os.getpid()}".encode()
    # MQTT 3.1.1 §3.1: protocol name, level 4, flags 0x02 (clean session), keepalive 10 s
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
    packet = b"\x10" + bytes([len(variable)]) + variable
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(packet)
            reply = b""
            while len(reply) < 4:
                chunk = s.recv(4 - len(reply))
                if not chunk:
                    return None
                reply += chunk
            s.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return None
    if reply[0] != 0x20:
        return None
    return reply[3]


def _wait(ready: Callable[[], bool], alive: Callable[[], str | None], timeout: float) -> bool:
    """Poll ready() until it holds (True) or timeout (False); alive() returning a
    message means the process died: raise it."""
    deadline = time.monotonic() + timeout
    while True:
        died = alive()
        if died is not None:
            raise TransportError(died)
        if ready():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _tail(path: Path, n: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class NatsRoutes:
    """One node's place in a NATS cluster: the cluster's name, this node's route port
    and every node's route port (its own included; NATS ignores a route to itself)."""

    name: str
    port: int
    routes: tuple[int, ...]
    replicas: int = 3


class NatsServer:
    """One nats-server with JetStream and an MQTT listener; a context manager.

    Args:
        workdir: config, log and the JetStream store (kept across stop/start and kill).
        cluster: this node's routes when it is part of a :class:`NatsCluster`.
        name: the ``server_name`` (must be unique within a cluster).
    """

    def __init__(
        self, workdir: Path, *, cluster: NatsRoutes | None = None, name: str = "edgegov-nats"
    ) -> None:
        binary = find_nats_server()
        if binary is None:
            raise TransportError("nats-server is not installed (apt-get install nats-server)")
        self.binary = binary
        self.workdir = workdir
        self.cluster = cluster
        self.name = name
        self._pick_ports()
        self._ports_free_to_change = True  # until it first listens
        self.log_path = workdir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _pick_ports(self) -> None:
        self.client_port = free_port()
        self.mqtt_port = free_port()
        self.monitor_port = free_port()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def config(self) -> str:
        store = self.workdir / "jetstream"
        text = (
            f"server_name: {json.dumps(self.name)}\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f"log_file: {json.dumps(str(self.log_path))}\n"
            f"jetstream {{ store_dir: {json.dumps(str(store))}, "
            "max_memory_store: 256MB, max_file_store: 2GB }\n"
        )
        replicas = f", stream_replicas: {self.cluster.replicas}" if self.cluster else ""
        text += f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}{replicas} }}\n"
        if self.cluster:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.cluster.routes)
            text += (
                f"cluster {{ name: {json.dumps(self.cluster.name)}, "
                f"listen: 127.0.0.1:{self.cluster.port}, routes: [{routes}] }}\n"
            )
        return text

    def start(self, timeout: float = 30.0) -> NatsServer:
        """Start and wait until JetStream is up and an MQTT CONNECT is accepted.

        Ports we picked that another process took meanwhile are picked again (at most
        twice) before the first successful start; afterwards a restart keeps them.
        """
        for attempt in range(3):
            try:
                self.launch()
                self.wait_ready(timeout)
            except TransportError as e:
                self.kill()
                if not self._ports_free_to_change or "address already in use" not in str(e):
                    raise
                if attempt == 2:
                    raise
                self._pick_ports()
                continue
            self._ports_free_to_change = False
            return self
        raise AssertionError("unreachable")

    def launch(self) -> None:
        """Start the process without waiting (a cluster starts all nodes, then waits)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nats.conf"
        conf.write_text(self.config())
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def _died(self) -> str | None:
        if self.proc is None or self.proc.poll() is None:
            return None
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        log = ""
        if self.log_path.exists():
            log = self.log_path.read_bytes()[self._log_offset :].decode(errors="replace")
        return f"{self.name} exited with {self.proc.returncode}: {(err + log).strip()[-800:]}"

    def healthy(self) -> bool:
        """The monitoring endpoint's ``/healthz?js-server-only=true``: JetStream enabled
        and, in a cluster, this node current with the meta leader.

        Not the full /healthz: after a node is killed and restarted, NATS 2.9.10 can
        report an MQTT consumer the dead process had created (``$MQTT_rmsgs_…``) as "not
        current" for minutes although the node serves MQTT; the MQTT CONNECT probe in
        :meth:`wait_ready` is the check that matters to clients.
        """
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-server-only=true"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(json.load(r).get("status") == "ok")
        except (OSError, ValueError):
            return False

    def jsz(self) -> dict[str, object]:
        """The monitoring endpoint's /jsz (JetStream figures, meta leader, streams)."""
        url = f"http://127.0.0.1:{self.monitor_port}/jsz?streams=true&config=true"
        with urllib.request.urlopen(url, timeout=2) as r:
            data: dict[str, object] = json.load(r)
            return data

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            return self.healthy() and mqtt_connack(self.mqtt_port) == 0

        if not _wait(ready, self._died, timeout):
            raise TransportError(
                f"{self.name} did not accept MQTT on 127.0.0.1:{self.mqtt_port} with JetStream "
                f"healthy within {timeout} s; log: {_tail(self.log_path)}"
            )

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after 10 s."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsCluster:
    """``nodes`` NATS servers routed to each other, JetStream clustered, the MQTT
    streams replicated on every node (up to 3), an MQTT listener on each node.

    ``.urls[i]`` is node i's MQTT URL; ``.kill(i)`` / ``.stop(i)`` / ``.start(i)`` act on
    one node (same ports and store on restart); the context manager stops them all.
    """

    def __init__(self, workdir: Path, nodes: int = 3, *, name: str = "edgegov") -> None:
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        route_ports = tuple(free_port() for _ in range(nodes))
        self.workdir = workdir
        self.nodes = [
            NatsServer(
                workdir / f"n{i}",
                name=f"{name}-n{i}",
                cluster=NatsRoutes(name, route_ports[i], route_ports, min(nodes, 3)),
            )
            for i in range(nodes)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start_all(self, timeout: float = 60.0) -> NatsCluster:
        """Start every node, then wait until each knows the meta leader and accepts an
        MQTT CONNECT (its ``$MQTT_*`` streams exist)."""
        try:
            for n in self.nodes:
                n.launch()
            deadline = time.monotonic() + timeout
            for n in self.nodes:
                n.wait_ready(max(1.0, deadline - time.monotonic()))
                n._ports_free_to_change = False
        except BaseException:
            self.stop_all()
            raise
        return self

    def start(self, i: int, timeout: float = 60.0) -> None:
        """Restart node i and wait until it is current with the meta leader and accepts
        an MQTT CONNECT (5-10 s here: the MQTT layer waits for its streams)."""
        node = self.nodes[i]
        node.launch()
        node.wait_ready(timeout)

    def stop(self, i: int) -> None:
        self.nodes[i].stop()

    def kill(self, i: int) -> None:
        self.nodes[i].kill()

    def stop_all(self) -> None:
        for n in self.nodes:
            n.stop()

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name, asked of the first running node."""
        for n in self.nodes:
            if n.running:
                try:
                    meta = n.jsz().get("meta_cluster")
                except OSError:
                    continue
                if isinstance(meta, dict) and meta.get("leader"):
                    return str(meta["leader"])
        return None

    def mqtt_stream_replicas(self) -> dict[str, int]:
        """Replica count of each ``$MQTT_*`` stream, as the first running node sees it."""
        for n in self.nodes:
            if not n.running:
                continue
            found: dict[str, int] = {}
            accounts = n.jsz().get("account_details")
            for account in accounts if isinstance(accounts, list) else []:
                for stream in account.get("stream_detail") or []:
                    if str(stream.get("name", "")).startswith("$MQTT_"):
                        found[stream["name"]] = int(stream["config"]["num_replicas"])
            return found
        return {}

    def __enter__(self) -> NatsCluster:
        return self.start_all()

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


class RabbitNode:
    """A test-owned RabbitMQ node with the MQTT plugin; a context manager.

    Everything is in ``workdir``: rabbitmq.conf, enabled_plugins, Mnesia, logs, and a
    ``HOME`` holding the node's own ``.erlang.cookie``. The node registers with an
    ``epmd`` we start on a free port (``ERL_EPMD_PORT``), so it never touches the system
    node's epmd or leaves a daemon behind. Anonymous MQTT and the guest user on loopback
    are allowed (tests only). Start-up: 10-20 s here (Erlang boot, Mnesia, plugins);
    a restart keeps the Mnesia directory, i.e. durable sessions and retained messages.
    """

    def __init__(self, workdir: Path) -> None:
        script = find_rabbitmq_server()
        if script is None:
            raise TransportError(
                "rabbitmq-server with its MQTT plugin is not installed "
                "(apt-get install rabbitmq-server)"
            )
        epmd = find_epmd()
        if epmd is None:
            raise TransportError("epmd is not installed (apt-get install erlang-base)")
        self.script = script
        self.epmd_binary = epmd
        self.workdir = workdir
        self.nodename = f"edgegov-{os.getpid()}-{id(self) % 100000}@localhost"
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.mqtt_port = free_port()
        self.epmd_port = free_port()
        self.log_dir = workdir / "log"
        self.out_path = workdir / "rabbitmq.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def _env(self) -> dict[str, str]:
        w = self.workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(w / "home"),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            # an empty env file: /etc/rabbitmq/rabbitmq-env.conf is the system node's
            RABBITMQ_CONF_ENV_FILE=str(w / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(w / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(w / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(w / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(w / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_PID_FILE=str(w / "rabbitmq.pid"),
        )
        return env

    def _write_config(self) -> None:
        w = self.workdir
        (w / "home").mkdir(parents=True, exist_ok=True)
        cookie = w / "home" / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(os.urandom(16).hex().upper())
            cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (w / "rabbitmq-env.conf").write_text("")
        (w / "advanced.config").write_text("[].\n")
        (w / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (w / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )

    def start(self, timeout: float = 90.0) -> RabbitNode:
        """Start epmd and the node; wait until the MQTT plugin accepts a CONNECT."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.nodename} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        t0 = time.monotonic()
        try:
            if self.epmd is None or self.epmd.poll() is not None:
                self.epmd = subprocess.Popen(
                    [self.epmd_binary, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            with self.out_path.open("ab") as out:
                # a session of its own: stop() and kill() signal the whole group (the
                # script, beam.smp, erl_child_setup, inet_gethost)
                self.proc = subprocess.Popen(
                    [self.script],
                    env=self._env(),
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if not _wait(lambda: mqtt_connack(self.mqtt_port) == 0, self._died, timeout):
                raise TransportError(
                    f"RabbitMQ node {self.nodename} did not accept MQTT on "
                    f"127.0.0.1:{self.mqtt_port} within {timeout} s; "
                    f"output: {_tail(self.out_path)}; log: {self._log_tail()}"
                )
        except BaseException:
            self.kill()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _log_tail(self) -> str:
        return _tail(self.log_dir / f"{self.nodename}.log")

    def _died(self) -> str | None:
        if self.proc is None or self.proc.poll() is None:
            return None
        return (
            f"RabbitMQ node {self.nodename} exited with {self.proc.returncode}: "
            f"{_tail(self.out_path)} {self._log_tail()}"
        )

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the Erlang VM (RabbitMQ shuts down cleanly on it), SIGKILL to the
        node's process group after ``timeout``; then epmd."""
        if self.proc is not None and self.proc.poll() is None:
            # the Erlang VM itself (its pid file), not the group: erl_child_setup and
            # inet_gethost are the VM's to stop
            pid_file = self.workdir / "rabbitmq.pid"
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the node's whole process group (a crash), then to our epmd."""
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.kill()
            self.epmd.wait()

    def __enter__(self) -> RabbitNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
