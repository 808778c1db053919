"""Process and socket helpers shared by the interop tests.

`Server` starts a NATS-compatible server binary (Tern or the real
nats-server) on random ports and learns them from the ports file the server
writes into `--ports_file_dir`.  `RawConn` is a tiny blocking socket client
for byte-exact protocol checks.  Nothing here sleeps to "let the server catch
up": every wait polls for a condition and is bounded by a deadline.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every server process we start, so that an abrupt interpreter exit can still
# kill them (the fixtures normally do it on teardown).
_LIVE: dict[int, subprocess.Popen] = {}


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGKILL the child when pytest dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def kill_all_servers() -> None:
    for pid, proc in list(_LIVE.items()):
        try:
            os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired, ChildProcessError):
            pass
        _LIVE.pop(pid, None)


def server_kind() -> str:
    kind = os.environ.get("SERVER_UNDER_TEST", "tern").strip() or "tern"
    if kind not in ("tern", "nats-server"):
        raise ValueError(f"SERVER_UNDER_TEST must be 'tern' or 'nats-server', not {kind!r}")
    return kind


def nats_server_bin() -> str:
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        return env
    venv = REPO_ROOT / ".venv" / "bin" / "nats-server"
    if venv.exists():
        return str(venv)
    return "nats-server"


def tern_bin() -> str:
    env = os.environ.get("TERN_BIN")
    if env:
        return env
    return str(REPO_ROOT / "target" / "release" / "tern")


def binary_for(kind: str) -> str:
    return nats_server_bin() if kind == "nats-server" else tern_bin()


class ServerError(RuntimeError):
    pass


class Server:
    """One server process.  `start()` may be called again after `stop()`;
    with `same_ports=True` it reuses the previous client/monitor ports."""

    def __init__(self, binary: str, workdir: Path, config: str | None = None,
                 extra_args: list[str] | None = None, monitor: bool = True,
                 name: str = "srv", nofile: int | None = None):
        self.binary = binary
        # RLIMIT_NOFILE (soft and hard) for the process (descriptor-exhaustion tests).
        self.nofile = nofile
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.workdir / f"{name}.conf"
            self.config_path.write_text(config)
        self.extra_args = list(extra_args or [])
        self.monitor = monitor
        self.proc: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.http_port: int | None = None
        self.log_path = self.workdir / f"{name}.log"
        self._starts = 0

    # -- lifecycle ---------------------------------------------------------
    def start(self, same_ports: bool = False, timeout: float = 15.0) -> "Server":
        if self.proc is not None:
            raise ServerError("already running")
        if not os.path.exists(self.binary):
            raise ServerError(f"server binary not found: {self.binary}")
        self._starts += 1
        ports_dir = self.workdir / f"{self.name}-ports-{self._starts}"
        ports_dir.mkdir(parents=True, exist_ok=True)
        port = str(self.port) if (same_ports and self.port) else "-1"
        args = [self.binary, "-a", self.host, "-p", port]
        if self.monitor:
            mport = str(self.http_port) if (same_ports and self.http_port) else "-1"
            args += ["-m", mport]
        args += ["--ports_file_dir", str(ports_dir)]
        if self.config_path is not None:
            args += ["-c", str(self.config_path)]
        args += self.extra_args
        log = open(self.log_path, "ab")
        log.write(f"\n=== start #{self._starts}: {' '.join(args)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     preexec_fn=self._preexec, cwd=self.workdir)
        log.close()
        _LIVE[self.proc.pid] = self.proc
        try:
            # Both servers write the ports file only once their listeners are
            # bound, so the kernel already completes connections to them.  No
            # probe connection: the server would count it (in /varz, /connz,
            # max_connections) until it noticed the close, at a moment no
            # test can wait for.
            self._wait_ports(ports_dir, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _preexec(self) -> None:
        _die_with_parent()
        if self.nofile is not None:
            import resource
            # Hard limit too: Go programs raise their soft limit to the hard one.
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def _wait_ports(self, ports_dir: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pid = self.proc.pid
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"server exited with {self.proc.returncode} before "
                                  f"writing its ports file; log:\n{self.log_tail()}")
            files = glob.glob(str(ports_dir / f"*_{pid}.ports"))
            if files:
                try:
                    data = json.loads(Path(files[0]).read_text())
                except (json.JSONDecodeError, OSError):
                    data = None  # partially written; poll again
                if data and data.get("nats"):
                    self._parse_ports(data)
                    return
            time.sleep(0.02)
        raise ServerError(f"no ports file in {ports_dir} after {timeout}s; "
                          f"log:\n{self.log_tail()}")

    def _parse_ports(self, data: dict) -> None:
        url = data["nats"][0]  # nats://127.0.0.1:PORT
        hostport = url.split("://", 1)[1]
        self.port = int(hostport.rsplit(":", 1)[1])
        if self.monitor:
            mon = data.get("monitoring") or []
            if not mon:
                raise ServerError(f"ports file has no monitoring entry: {data}")
            self.http_port = int(mon[0].rsplit(":", 1)[1].rstrip("/"))

    def stop(self) -> None:
        """Kill by PID (SIGKILL) and reap.  Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _LIVE.pop(proc.pid, None)

    def restart(self) -> "Server":
        self.stop()
        return self.start(same_ports=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- info --------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-n:])

    def http_get(self, path: str, timeout: float = 5.0):
        """GET a monitoring endpoint; returns (status, parsed JSON or text)."""
        with urllib.request.urlopen(self.http_url + path, timeout=timeout) as r:
            body = r.read()
            status = r.status
        try:
            return status, json.loads(body)
        except json.JSONDecodeError:
            return status, body.decode(errors="replace")

    def varz(self) -> dict:
        return self.http_get("/varz")[1]

    def raw(self, **kw) -> "RawConn":
        return RawConn(self.host, self.port, **kw)


class RawConn:
    """Blocking TCP client for exact-bytes protocol checks."""

    def __init__(self, host: str, port: int, timeout: float = 5.0,
                 read_info: bool = True):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.closed = False
        self.info_line: bytes | None = None
        self.info: dict | None = None
        if read_info:
            self.info_line = self.readline()
            assert self.info_line.startswith(b"INFO "), self.info_line
            assert self.info_line.endswith(b"\r\n"), self.info_line
            self.info = json.loads(self.info_line[5:-2])

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into buf; False on EOF.  Raises TimeoutError."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out; buffered so far: {self.buf[:300]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"timed out; buffered so far: {self.buf[:300]!r}") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def readline(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self.buf:
            if not self._fill(deadline):
                raise EOFError(f"connection closed; partial: {self.buf!r}")
        i = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise EOFError(f"connection closed; partial: {self.buf!r}")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_until(self, marker: bytes, timeout: float | None = None) -> bytes:
        """Everything up to and including `marker`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while marker not in self.buf:
            if not self._fill(deadline):
                raise EOFError(f"connection closed before {marker!r}; got: {self.buf!r}")
        i = self.buf.index(marker) + len(marker)
        data, self.buf = self.buf[:i], self.buf[i:]
        return data

    def read_until_close(self, timeout: float | None = None) -> bytes:
        """All bytes until the server closes; TimeoutError if it does not."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while self._fill(deadline):
            pass
        data, self.buf = self.buf, b""
        return data

    def read_for(self, seconds: float) -> tuple[bytes, bool]:
        """Collect whatever arrives within `seconds`; returns (bytes, closed)."""
        deadline = time.monotonic() + seconds
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            pass
        data, self.buf = self.buf, b""
        return data, self.closed

    def ping_pong(self, timeout: float | None = None) -> bytes:
        """Send PING and return everything received up to and including the
        PONG: the server handles a connection's input in order, so whatever
        it replied to earlier commands is in the returned bytes."""
        self.send(b"PING\r\n")
        return self.read_until(b"PONG\r\n", timeout)

    def connect(self, **opts) -> None:
        o = {"verbose": False, "pedantic": False}
        o.update(opts)
        self.send(b"CONNECT " + json.dumps(o).encode() + b"\r\n")


# -- nats-py -------------------------------------------------------------------

async def sync_point(nc, timeout: float = 10.0) -> None:
    """Round trip through the server on the nats-py connection `nc`:
    subscribe to a fresh inbox, publish to it, wait for the message.  The
    server handles one connection's commands in order, so everything `nc`
    sent before has taken effect when this returns.  (`nc.flush()` is not
    such a barrier: nats-py writes its PING straight to the socket, ahead of
    commands still queued in the client.)  Not for no_echo connections."""
    sub = await nc.subscribe(nc.new_inbox())
    await nc.publish(sub.subject, b"sync")
    await sub.next_msg(timeout=timeout)
    await sub.unsubscribe()


# -- clusters ----------------------------------------------------------------

_HANDED_OUT_PORTS: set[int] = set()


def free_cluster_port(host: str = "127.0.0.1") -> int:
    """A port that is free for both UDP (Tern's QUIC cluster endpoint) and TCP
    (nats-server's routes) right now.  Not reserved: a node that then fails
    to bind it is restarted on another one by `Cluster.add`."""
    for _ in range(100):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind((host, 0))
            port = u.getsockname()[1]
            if port in _HANDED_OUT_PORTS:
                continue
            t.bind((host, port))
        except OSError:
            continue
        finally:
            u.close()
            t.close()
        _HANDED_OUT_PORTS.add(port)
        return port
    raise ServerError("no free cluster port found")


class ClusterNode(Server):
    """A server started with clustering on: `cluster_port` (UDP for Tern,
    TCP for nats-server) is fixed, so `start(same_ports=True)` brings the node
    back exactly where it was.  With `log_file`, the server logs there (`-l`)."""

    READY_LINE = "Listening for route connections on"

    def __init__(self, *a, cluster_port: int, log_file: Path | None = None,
                 key_file: Path | None = None, **kw):
        super().__init__(*a, **kw)
        self.cluster_port = cluster_port
        self.log_file = log_file
        self.key_file = key_file
        self._server_id: str | None = None

    @property
    def cluster_url(self) -> str:
        return f"nats://{self.host}:{self.cluster_port}"

    def _log_source(self) -> Path:
        return self.log_file or self.log_path

    def log_text(self) -> str:
        """Everything the server logged so far (all starts)."""
        try:
            return self._log_source().read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        tail = super().log_tail(n)
        if self.log_file is not None:
            lines = self.log_text().splitlines()[-n:]
            tail += f"\n--- -l {self.log_file} ---\n" + "\n".join(lines)
        return tail

    def start(self, same_ports: bool = False, timeout: float = 15.0) -> "ClusterNode":
        src = self._log_source()
        offset = src.stat().st_size if src.exists() else 0
        self._server_id = None
        super().start(same_ports=same_ports, timeout=timeout)
        # The ports file is written before the cluster endpoint is bound:
        # wait for the line both servers log once it is.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(src, "rb") as f:
                    f.seek(offset)
                    new = f.read().decode(errors="replace")
            except OSError:
                new = ""
            if self.READY_LINE in new:
                return self
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                self.stop()
                raise ServerError(f"node exited ({code}) before its cluster endpoint was up; "
                                  f"log:\n{self.log_tail()}")
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"no {self.READY_LINE!r} within {timeout}s; log:\n{self.log_tail()}")

    @property
    def server_id(self) -> str:
        if self._server_id is None:
            self._server_id = self.varz()["server_id"]
        return self._server_id

    def routez(self, subs: bool = False) -> dict:
        return self.http_get("/routez?subs=1" if subs else "/routez")[1]

    def route_peers(self, subs: bool = False) -> dict[str, list[dict]]:
        """remote_id -> the /routez entries for it.  Tern keeps one link per
        peer; nats-server pools several TCP routes per peer."""
        peers: dict[str, list[dict]] = {}
        for r in self.routez(subs).get("routes") or []:
            peers.setdefault(r["remote_id"], []).append(r)
        return peers


class Cluster:
    """Nodes of one cluster, started with `--cluster`/`--routes` flags (or a
    config), all killed by PID in `stop_all`."""

    def __init__(self, kind: str, workdir: Path, name: str = "tc"):
        self.kind = kind
        self.workdir = Path(workdir)
        self.name = name
        self.nodes: list[ClusterNode] = []
        self._count = 0

    def add(self, routes: list[int] | None = None, *, cluster_name: str | None = None,
            cluster_port: int | None = None, config: str | None = None,
            extra_args: list[str] | None = None, log_to_file: bool = False,
            flags: bool = True, key_seed: str | None = None) -> ClusterNode:
        """Start one node.  `routes` are cluster ports of seed nodes.  With
        `flags=False` the cluster is configured by `config` alone (which may
        use `{cluster_port}`, formatted in here).  Tern nodes get a key file
        in their directory (`--server_key_file`), holding `key_seed` if given
        (else Tern generates one)."""
        fixed = cluster_port is not None
        last: Exception | None = None
        for _ in range(1 if fixed else 4):
            port = cluster_port if fixed else free_cluster_port()
            self._count += 1
            i = self._count
            wd = self.workdir / f"node{i}"
            wd.mkdir(parents=True, exist_ok=True)
            log_file = wd / "node.log" if log_to_file else None
            key_file = wd / "node.seed" if self.kind == "tern" else None
            if key_file is not None and key_seed is not None:
                key_file.write_text(key_seed + "\n")
            args = ["-n", f"node{i}"]
            if flags:
                args += ["--cluster", f"nats://127.0.0.1:{port}",
                         "--cluster_name", cluster_name or self.name]
                if routes:
                    args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes)]
                if key_file is not None:
                    args += ["--server_key_file", str(key_file)]
            if log_file is not None:
                args += ["-l", str(log_file)]
            args += list(extra_args or [])
            node = ClusterNode(binary_for(self.kind), wd,
                               config=config.replace("{cluster_port}", str(port)) if config else None,
                               extra_args=args, name=self.kind, cluster_port=port,
                               log_file=log_file, key_file=key_file)
            try:
                node.start()
            except ServerError as e:
                last = e  # most likely the picked port was taken meanwhile
                continue
            self.nodes.append(node)
            return node
        raise ServerError(f"could not start a cluster node: {last}")

    def start(self, n: int) -> list[ClusterNode]:
        """n nodes, every one with a route to the first (the seed) only."""
        seed = self.add()
        rest = [self.add(routes=[seed.cluster_port]) for _ in range(n - 1)]
        return [seed] + rest

    def mesh_problems(self, nodes: list[ClusterNode]) -> list[str]:
        """Why `nodes` are not (yet) a full mesh among themselves; [] when
        each one's /routez lists exactly the others."""
        problems = []
        ids = {n: n.server_id for n in nodes}
        for n in nodes:
            want = {ids[o] for o in nodes if o is not n}
            try:
                have = set(n.route_peers())
            except OSError as e:
                problems.append(f"node{nodes.index(n) + 1}: /routez failed: {e}")
                continue
            if have != want:
                problems.append(f"node{nodes.index(n) + 1} ({n.url}) routes to "
                                f"{sorted(have)}, want {sorted(want)}")
        return problems

    def stop_all(self) -> None:
        for n in self.nodes:
            n.stop()
