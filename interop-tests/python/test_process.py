"""Process-level behaviour: signals, lame duck, pid/ports/log files, the
command line, config files and config-file authorization.

Every expectation was read off nats-server v2.15.1 (the specification), and
the tests run against it with SERVER_UNDER_TEST=nats-server.  Where Tern
differs on purpose the nats-server run is skipped with the reason; where Tern
differs by mistake the test is marked `tern_bug(...)` (a strict xfail on Tern
only: the mark must be removed once the server is fixed).

Servers are started either through `server_factory` (harness: `-a 127.0.0.1
-p -1 -m -1 --ports_file_dir DIR` + args) or, when the test needs full control
of the command line (no `-p -1`, other addresses), through `spawn` below.
Every wait is bounded; a process we signalled is reaped by the test and then
forgotten, so teardown never kills a pid that was reused.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import nats
import pytest

import harness

KIND = harness.server_kind()
IS_TERN = KIND == "tern"
IS_NATS = KIND == "nats-server"


def tern_bug(reason: str):
    """A divergence from nats-server that Tern must fix: fails on Tern (strict
    xfail, so the test turns red once Tern is fixed and the mark must go)."""
    return pytest.mark.xfail(IS_TERN, reason="TERN BUG: " + reason, strict=True)


# --------------------------------------------------------------------------
# helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forget(srv: harness.Server) -> None:
    """The test reaped srv's process itself: drop it so teardown does not
    SIGKILL a pid that may have been reused."""
    if srv.proc is not None:
        harness._LIVE.pop(srv.proc.pid, None)
    srv.proc = None


def wait_exit(srv: harness.Server, timeout: float = 10.0) -> int:
    proc = srv.proc
    assert proc is not None
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server (pid {proc.pid}) did not exit within {timeout}s; "
                    f"log:\n{srv.log_tail()}")
    forget(srv)
    return rc


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def file_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def run(args: list[str], timeout: float = 10.0, env: dict | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the server binary to completion (for -t, --help, ...)."""
    return subprocess.run([harness.binary_for(KIND)] + args, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env=env, cwd=cwd, preexec_fn=harness._die_with_parent)


def connect_refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


class Spawned:
    """A server started with exactly the given arguments (plus
    --ports_file_dir), for tests that must not get the harness's `-p -1`."""

    def __init__(self, args: list[str], workdir: Path, env: dict | None = None):
        self.workdir = workdir
        self.ports_dir = workdir / "ports"
        self.ports_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "out.log"
        self.args = [harness.binary_for(KIND)] + args + ["--ports_file_dir", str(self.ports_dir)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=workdir,
                                         preexec_fn=harness._die_with_parent)
        harness._LIVE[self.proc.pid] = self.proc
        self.ports = self._wait_ports()

    def _wait_ports(self, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args} exited with {self.proc.returncode}; "
                                     f"output:\n{file_text(self.log_path)}")
            files = glob.glob(str(self.ports_dir / f"*_{self.proc.pid}.ports"))
            if files:
                try:
                    data = json.loads(Path(files[0]).read_text())
                except (OSError, json.JSONDecodeError):
                    data = None
                if data and data.get("nats"):
                    return data
            time.sleep(0.02)
        raise AssertionError(f"no ports file from {self.args}; output:\n{file_text(self.log_path)}")

    def nats_hostport(self) -> tuple[str, int]:
        hostport = self.ports["nats"][0].split("://", 1)[1]
        host, port = hostport.rsplit(":", 1)
        return host, int(port)

    def raw(self) -> harness.RawConn:
        host, port = self.nats_hostport()
        return harness.RawConn(host, port)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        harness._LIVE.pop(proc.pid, None)


@pytest.fixture
def spawn(tmp_path: Path):
    started: list[Spawned] = []

    def make(args: list[str], env: dict | None = None) -> Spawned:
        sp = Spawned(args, tmp_path / f"p{len(started)}", env=env)
        started.append(sp)
        return sp

    yield make
    for sp in started:
        sp.stop()
        print(f"--- output of {sp.args} ---\n{file_text(sp.log_path)[-4000:]}")


def quiet_sub(c: harness.RawConn, subject: str = "x", sid: int = 1, **opts) -> None:
    c.connect(**opts)
    c.send(f"SUB {subject} {sid}\r\n".encode())
    assert c.ping_pong() == b"PONG\r\n"


# --------------------------------------------------------------------------
# SIGTERM / SIGINT

N_MSGS = 500


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_delivers_pending_then_closes_and_exits_0(server_factory, sig):
    srv = server_factory()
    sub = srv.raw()
    quiet_sub(sub)
    pub = srv.raw()
    pub.connect()
    pub.send(b"".join(b"PUB x %d\r\n%d\r\n" % (len(str(i)), i) for i in range(N_MSGS)))
    # PONG: the server has handled every PUB, so each MSG is on its way to sub.
    assert pub.ping_pong(timeout=10) == b"PONG\r\n"

    os.kill(srv.pid, sig)
    data = sub.read_until_close(timeout=10)
    assert sub.closed
    got = re.findall(rb"MSG x 1 \d+\r\n(\d+)\r\n", data)
    assert [int(g) for g in got] == list(range(N_MSGS)), data[-300:]
    assert wait_exit(srv, timeout=10) == 0


async def test_sigterm_nats_py_subscriber_gets_all_then_disconnected(server_factory, nats_connect):
    srv = server_factory()
    disconnected = asyncio.Event()

    async def on_disconnect():
        disconnected.set()

    got: list[bytes] = []
    nc = await nats_connect(srv, disconnected_cb=on_disconnect, closed_cb=on_disconnect)

    async def on_msg(msg):
        got.append(msg.data)

    await nc.subscribe("x", cb=on_msg)
    await harness.sync_point(nc)  # the SUB is in place before anyone publishes
    pub = srv.raw()
    pub.connect()
    pub.send(b"".join(b"PUB x %d\r\n%d\r\n" % (len(str(i)), i) for i in range(N_MSGS)))
    assert pub.ping_pong(timeout=10) == b"PONG\r\n"
    # Everything is routed; wait until nats-py has read it all (the server
    # must not drop what it accepted), then shut down.
    deadline = time.monotonic() + 10
    while len(got) < N_MSGS and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert got == [str(i).encode() for i in range(N_MSGS)]

    os.kill(srv.pid, signal.SIGTERM)
    await asyncio.wait_for(disconnected.wait(), timeout=10)
    assert not nc.is_connected
    rc = await asyncio.get_running_loop().run_in_executor(None, wait_exit, srv, 10.0)
    assert rc == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_pid_file_written_while_running(server_factory, tmp_path, sig):
    pid_file = tmp_path / "srv.pid"
    srv = server_factory(args=["-P", str(pid_file)])
    assert pid_file.read_text().strip() == str(srv.pid)
    os.kill(srv.pid, sig)
    assert wait_exit(srv) == 0


def test_pid_file_left_in_place_after_exit(server_factory, tmp_path):
    pid_file = tmp_path / "srv.pid"
    srv = server_factory(args=["-P", str(pid_file)])
    pid = srv.pid
    os.kill(pid, signal.SIGTERM)
    assert wait_exit(srv) == 0
    assert pid_file.exists(), "pid file was removed on exit"
    assert pid_file.read_text().strip() == str(pid)


def _hold_at_ports_file(tmp_path: Path) -> tuple[subprocess.Popen, list[Path]]:
    """Start the server with its ports file replaced by a FIFO, so that it
    blocks opening it: held exactly where it tells the world it is ready
    (its listeners are bound).  Returns once one of its threads waits there.
    The process stops itself before exec so its pid (part of the ports file
    name) is known before it runs.  nats-server writes `<exe>_<pid>.ports`
    in place, Tern writes `<exe>_<pid>.ports.tmp` and renames it: a FIFO
    under each name (the unused one is harmless)."""
    binary = harness.binary_for(KIND)
    ports_dir = tmp_path / "ports"
    ports_dir.mkdir()
    proc = subprocess.Popen(["sh", "-c", 'kill -STOP $$; exec "$@"', "sh", binary,
                             "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", str(ports_dir)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=harness._die_with_parent)
    harness._LIVE[proc.pid] = proc
    wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] == "T",
             5, "the launcher to stop itself")
    name = f"{os.path.basename(binary)}_{proc.pid}.ports"
    fifos = [ports_dir / name, ports_dir / (name + ".tmp")]
    for f in fifos:
        os.mkfifo(f)
    os.kill(proc.pid, signal.SIGCONT)

    def held() -> bool:
        assert proc.poll() is None, f"exited with {proc.returncode} before the ports file"
        for w in glob.glob(f"/proc/{proc.pid}/task/*/wchan"):
            # The kernel function a FIFO opener waits in (name varies by version).
            if file_text(Path(w)) in ("wait_for_partner", "fifo_open"):
                return True
        return False

    wait_for(held, 10, "the server to block writing its ports file")
    return proc, fifos


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2],
                         ids=["SIGTERM", "SIGINT", "SIGUSR2"])
def test_signal_once_ports_file_is_written_is_handled(tmp_path, sig):
    """The ports file says the server is ready: a signal from then on gets
    the graceful treatment (no clients: shut down, exit 0)."""
    proc, fifos = _hold_at_ports_file(tmp_path)
    try:
        os.kill(proc.pid, sig)
        # Let the ports file write finish (drain the FIFOs) and the server go
        # on; nats-server may already have removed its file on the way out.
        fds = []
        for f in fifos:
            try:
                fds.append(os.open(f, os.O_RDONLY | os.O_NONBLOCK))
            except FileNotFoundError:
                pass
        try:
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                for fd in fds:
                    try:
                        os.read(fd, 65536)
                    except BlockingIOError:
                        pass
                time.sleep(0.02)
        finally:
            for fd in fds:
                os.close(fd)
        try:
            rc = proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server did not exit within 10s of {sig.name}")
        assert rc == 0, f"exit status {rc} after {sig.name}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        harness._LIVE.pop(proc.pid, None)


# --------------------------------------------------------------------------
# ports file

def test_ports_file_format(spawn):
    sp = spawn(["-a", "127.0.0.1", "-p", "-1", "-m", "-1"])
    exe = os.path.basename(harness.binary_for(KIND))
    files = sorted(os.listdir(sp.ports_dir))
    assert files == [f"{exe}_{sp.proc.pid}.ports"]
    data = json.loads((sp.ports_dir / files[0]).read_text())
    assert set(data) >= {"nats", "monitoring"}
    assert isinstance(data["nats"], list) and len(data["nats"]) == 1
    assert isinstance(data["monitoring"], list) and len(data["monitoring"]) == 1
    m = re.fullmatch(r"nats://127\.0\.0\.1:(\d+)", data["nats"][0])
    assert m, data
    port = int(m.group(1))
    assert port > 0
    h = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", data["monitoring"][0])
    assert h, data
    http_port = int(h.group(1))
    assert http_port > 0 and http_port != port
    c = harness.RawConn("127.0.0.1", port)
    assert c.info["port"] == port
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/varz", timeout=5) as r:
        assert json.loads(r.read())["port"] == port


def test_ports_file_without_monitoring(spawn):
    sp = spawn(["-a", "127.0.0.1", "-p", "-1"])
    assert not sp.ports.get("monitoring"), sp.ports
    host, port = sp.nats_hostport()
    assert sp.raw().info["port"] == port


def test_ports_file_removed_on_clean_exit(spawn):
    sp = spawn(["-a", "127.0.0.1", "-p", "-1"])
    path = Path(glob.glob(str(sp.ports_dir / "*.ports"))[0])
    sp.proc.send_signal(signal.SIGTERM)
    assert sp.proc.wait(timeout=10) == 0
    assert not path.exists(), f"{path.name} still there after a clean exit"


# --------------------------------------------------------------------------
# lame duck (SIGUSR2)

def _lame_duck(srv: harness.Server, grace: float, duration: float, n_clients: int = 1):
    clients = [srv.raw() for _ in range(n_clients)]
    for c in clients:
        # Async INFO goes only to clients that announced "protocol":1.
        quiet_sub(c, protocol=1)
    t0 = time.monotonic()
    os.kill(srv.pid, signal.SIGUSR2)
    for c in clients:
        # A protocol-1 client first gets the post-CONNECT INFO
        # ("connect_info":true, sent after the first PONG), then the ldm one.
        while True:
            line = c.readline(timeout=10)
            assert line.startswith(b"INFO ") and line.endswith(b"\r\n"), line
            info = json.loads(line[5:-2])
            if info.get("ldm"):
                break
            assert info.get("connect_info") is True, info
        assert info["ldm"] is True, info
    # The listener is closed before the ldm INFO goes out.
    assert connect_refused(srv.host, srv.port), "new connection accepted in lame duck mode"
    # Clients are closed after the grace period, spread over the duration.
    for c in clients:
        rest = c.read_until_close(timeout=duration + 5)
        assert b"MSG" not in rest, rest
    elapsed = time.monotonic() - t0
    assert wait_exit(srv, timeout=10) == 0
    return elapsed


def test_lame_duck_30s(server_factory):
    """nats-server's minimum lame_duck_duration is 30s; with a single client it
    closes it right after the grace period and then exits, so this is quick."""
    srv = server_factory(config='lame_duck_duration: "30s"\nlame_duck_grace_period: "1s"\n')
    elapsed = _lame_duck(srv, grace=1, duration=30)
    assert elapsed >= 0.9, f"clients closed before the 1s grace period ({elapsed:.2f}s)"
    assert elapsed < 10, f"one client took {elapsed:.2f}s to be closed"


@pytest.mark.skipif(IS_NATS, reason="nats-server refuses lame_duck_duration below 30s "
                    "(\"invalid lame_duck_duration of 3s, minimum is 30 seconds\")")
def test_lame_duck_short_duration_several_clients(server_factory):
    srv = server_factory(config='lame_duck_duration: "3s"\nlame_duck_grace_period: "1s"\n')
    elapsed = _lame_duck(srv, grace=1, duration=3, n_clients=4)
    # Closed after the grace period, over about the 3s duration (not the
    # default 2 minutes); the upper bound leaves room for a loaded machine.
    assert 0.9 <= elapsed < 3 + 5, f"clients closed after {elapsed:.2f}s"


def test_lame_duck_protocol_0_client_gets_no_info(server_factory):
    srv = server_factory(config='lame_duck_duration: "30s"\nlame_duck_grace_period: "1s"\n')
    c = srv.raw()
    quiet_sub(c)  # CONNECT without "protocol": protocol 0
    os.kill(srv.pid, signal.SIGUSR2)
    # Closed after the grace period without any INFO first.
    assert c.read_until_close(timeout=10) == b""
    assert wait_exit(srv, timeout=10) == 0


def test_lame_duck_no_clients_exits(server_factory):
    srv = server_factory(config='lame_duck_duration: "30s"\nlame_duck_grace_period: "1s"\n')
    os.kill(srv.pid, signal.SIGUSR2)
    assert wait_exit(srv, timeout=10) == 0
    assert connect_refused(srv.host, srv.port)


def test_lame_duck_no_clients_skips_grace_period(server_factory):
    srv = server_factory(config='lame_duck_duration: "30s"\nlame_duck_grace_period: "20s"\n')
    os.kill(srv.pid, signal.SIGUSR2)
    # nats-server exits within milliseconds; 10s (room for a loaded machine)
    # is still far below the 20s grace.
    assert wait_exit(srv, timeout=10) == 0


# --------------------------------------------------------------------------
# logging flags

def test_log_file(server_factory, tmp_path):
    log = tmp_path / "server.log"
    srv = server_factory(args=["-l", str(log)])
    text = wait_for(lambda: (t := file_text(log)) and "ready" in t and t,
                    5, f"'ready' in {log}")
    assert str(srv.port) in text
    # Nothing but the harness's header goes to stdout/stderr.
    assert "ready" not in file_text(srv.log_path)


@pytest.mark.parametrize("flag", ["-D", "--debug", "-V", "--trace", "-DV"])
def test_debug_trace_flags(server_factory, tmp_path, flag):
    log = tmp_path / "server.log"
    srv = server_factory(args=["-l", str(log), flag])
    c = srv.raw()
    quiet_sub(c)
    c.close()
    if "V" in flag or flag == "--trace":
        # A trace line for the client's CONNECT ("<<- [CONNECT ..." / "<<- ... CONNECT").
        wait_for(lambda: re.search(r"<<-.*CONNECT", file_text(log)), 5, "a CONNECT trace line")
    if "D" in flag or flag == "--debug":
        wait_for(lambda: re.search(r"(?i)connection created", file_text(log)), 5,
                 "a debug line for the new connection")


def test_no_debug_lines_by_default(server_factory, tmp_path):
    log = tmp_path / "server.log"
    srv = server_factory(args=["-l", str(log)])
    c = srv.raw()
    quiet_sub(c)
    c.close()
    # A second client's round trip proves the first one was handled.
    quiet_sub(srv.raw())
    text = wait_for(lambda: (t := file_text(log)) and "ready" in t and t, 5, f"'ready' in {log}")
    assert not re.search(r"<<-|(?i:connection created)", text), text


# --------------------------------------------------------------------------
# command line

def test_help_exits_0_with_usage():
    for flag in ["--help", "-h"]:
        r = run([flag])
        assert r.returncode == 0, (flag, r)
        out = r.stdout + r.stderr
        assert "usage" in out.lower(), out
        assert "--port" in out and "--config" in out, out


@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_version_exits_0(flag):
    r = run([flag])
    assert r.returncode == 0, r
    assert re.search(r"v\d+\.\d+\.\d+", r.stdout + r.stderr), r


def test_unknown_flag_is_named():
    r = run(["--no-such-flag"], timeout=5)
    out = r.stdout + r.stderr
    assert "no-such-flag" in out, out
    assert "usage" in out.lower(), out


@pytest.mark.skipif(IS_NATS, reason="nats-server prints 'flag provided but not defined' "
                    "and the usage but exits 0 (its usage func calls os.Exit(0)); Tern "
                    "refuses an unknown flag with a non-zero status")
def test_unknown_flag_exits_nonzero():
    r = run(["--no-such-flag"], timeout=5)
    assert r.returncode != 0, r


@pytest.mark.parametrize("style", ["-port", "--port=", "-p", "--port"])
def test_port_flag_styles(spawn, style):
    port = free_port()
    args = [style + str(port)] if style.endswith("=") else [style, str(port)]
    sp = spawn(["-a", "127.0.0.1"] + args)
    assert sp.nats_hostport() == ("127.0.0.1", port)
    assert sp.raw().info["port"] == port


@pytest.mark.parametrize("style", ["-a", "--addr", "--net", "-addr", "-net", "--addr="])
def test_addr_flag_styles(spawn, style):
    # 127.0.0.2 is a loopback address too: a listener bound there is not
    # reachable on 127.0.0.1, so the flag provably took effect.
    args = [style + "127.0.0.2"] if style.endswith("=") else [style, "127.0.0.2"]
    sp = spawn(args + ["-p", "-1"])
    host, port = sp.nats_hostport()
    assert host == "127.0.0.2"
    assert harness.RawConn(host, port).info["host"] == "127.0.0.2"
    assert connect_refused("127.0.0.1", port)


@pytest.mark.parametrize("style", ["-n", "--name", "--server_name", "-server_name", "--server_name="])
def test_server_name_flag_styles(spawn, style):
    name = "proc-test-name"
    args = [style + name] if style.endswith("=") else [style, name]
    sp = spawn(["-a", "127.0.0.1", "-p", "-1", "-m", "-1"] + args)
    assert sp.raw().info["server_name"] == name
    with urllib.request.urlopen(sp.ports["monitoring"][0].rstrip("/") + "/varz", timeout=5) as r:
        assert json.loads(r.read())["server_name"] == name


# --------------------------------------------------------------------------
# config files

def test_config_test_flag_valid(tmp_path):
    conf = tmp_path / "ok.conf"
    conf.write_text('port: 4999\nserver_name: "x"\nauthorization { user: a, password: b }\n')
    r = run(["-c", str(conf), "-t"])
    assert r.returncode == 0, r
    assert "ok.conf" in r.stdout + r.stderr


def test_config_test_flag_does_not_start(tmp_path):
    port = free_port()
    conf = tmp_path / "ok.conf"
    conf.write_text(f"listen: 127.0.0.1:{port}\n")
    r = run(["-c", str(conf), "-t"], timeout=10)
    assert r.returncode == 0, r
    assert connect_refused("127.0.0.1", port)


# Syntax errors on line 3 that both servers place on line 3.  nats-server's
# parser says `Parse error on line 3: '...'`, Tern says `file:3:col: ...`.
@pytest.mark.parametrize("line3", ['a: "\\q"', "= 5", 'server_name: "x" "y"', "a b c d"],
                         ids=["bad-escape", "no-key", "two-values", "extra-tokens"])
def test_config_syntax_error_names_line_3(tmp_path, line3):
    conf = tmp_path / "bad.conf"
    conf.write_text(f"server_name: x\ndebug: false\n{line3}\nport: 4222\n")
    r = run(["-c", str(conf), "-t"])
    out = r.stdout + r.stderr
    assert r.returncode != 0, r
    assert re.search(r":3:|line 3\b", out), out


def test_config_unterminated_string(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text('server_name: x\ndebug: false\nhost: "127.0.0.1\nport: 4222\n')
    r = run(["-c", str(conf), "-t"])
    out = r.stdout + r.stderr
    assert r.returncode != 0, r
    if IS_TERN:
        # Tern points at the string that is not closed ...
        assert "bad.conf:3:" in out, out
    else:
        # ... nats-server reports where it hit the end of the file.
        assert "Parse error on line 5" in out and "EOF" in out, out


def test_config_unterminated_string_refuses_start(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text('server_name: x\ndebug: false\nhost: "127.0.0.1\n')
    r = run(["-c", str(conf), "-p", "-1"])
    assert r.returncode != 0, r


# (Not `port: [1, 2]`: nats-server's lexer fails on that with a parse error
# on line 2, see docs/DIFFERENCES.md.)
@pytest.mark.parametrize("body", ['port: "abc"', "port: {a: 1}", "port: true", "port: 1.5",
                                  "max_payload: {a: 1}", "debug: 5", "server_name: 5"],
                         ids=["port-string", "port-map", "port-bool", "port-float",
                              "payload-map", "debug-int", "name-int"])
def test_config_bad_value_type(tmp_path, body):
    conf = tmp_path / "bad.conf"
    conf.write_text(body + "\n")
    r = run(["-c", str(conf), "-t"])
    assert r.returncode != 0, r
    # Both point at the offending line: `bad.conf:1:col: ...`.
    assert "bad.conf:1:" in r.stdout + r.stderr, r


def test_config_include(spawn, tmp_path):
    port = free_port()
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "ports.conf").write_text(f"port: {port}\n")
    conf = tmp_path / "main.conf"
    conf.write_text('host: 127.0.0.1\ninclude "inc/ports.conf"\nserver_name: included\n')
    sp = spawn(["-c", str(conf)])
    assert sp.nats_hostport() == ("127.0.0.1", port)
    info = sp.raw().info
    assert info["port"] == port and info["server_name"] == "included"


def test_config_env_variable(spawn, tmp_path):
    port = free_port()
    conf = tmp_path / "env.conf"
    conf.write_text("host: 127.0.0.1\nport: $TERN_TEST_PORT\n")
    env = dict(os.environ, TERN_TEST_PORT=str(port))
    sp = spawn(["-c", str(conf)], env=env)
    assert sp.nats_hostport() == ("127.0.0.1", port)
    assert sp.raw().info["port"] == port


def test_config_undefined_variable_fails(tmp_path):
    conf = tmp_path / "env.conf"
    conf.write_text("port: $TERN_TEST_NO_SUCH_VARIABLE\n")
    env = {k: v for k, v in os.environ.items() if k != "TERN_TEST_NO_SUCH_VARIABLE"}
    r = run(["-c", str(conf), "-t"], env=env)
    assert r.returncode != 0, r
    assert "TERN_TEST_NO_SUCH_VARIABLE" in r.stdout + r.stderr, r


def test_flags_override_config(spawn, tmp_path):
    conf_port, flag_port = free_port(), free_port()
    while flag_port == conf_port:
        flag_port = free_port()
    conf = tmp_path / "main.conf"
    conf.write_text(f"host: 127.0.0.1\nport: {conf_port}\nserver_name: from_conf\n")
    sp = spawn(["-c", str(conf), "-p", str(flag_port), "-n", "from_flag"])
    assert sp.nats_hostport() == ("127.0.0.1", flag_port)
    info = sp.raw().info
    assert info["port"] == flag_port and info["server_name"] == "from_flag"
    assert connect_refused("127.0.0.1", conf_port)


def test_flag_order_does_not_matter_for_override(spawn, tmp_path):
    """`-p` before `-c` still wins over the file's `port:`."""
    conf_port, flag_port = free_port(), free_port()
    while flag_port == conf_port:
        flag_port = free_port()
    conf = tmp_path / "main.conf"
    conf.write_text(f"host: 127.0.0.1\nport: {conf_port}\n")
    sp = spawn(["-p", str(flag_port), "-c", str(conf)])
    assert sp.nats_hostport() == ("127.0.0.1", flag_port)


# --------------------------------------------------------------------------
# authorization from config / flags

USERS_CONF = "authorization { users: [ {user: a, password: b}, {user: c, password: d} ] }\n"


async def _connect_error(srv, **kw) -> str:
    errors: list[Exception] = []

    async def err_cb(e):
        errors.append(e)

    with pytest.raises(Exception) as ei:
        nc = await nats.connect(srv.url, connect_timeout=5, allow_reconnect=False,
                                max_reconnect_attempts=0, error_cb=err_cb, **kw)
        await nc.close()
    return " | ".join([repr(ei.value), str(ei.value)] + [f"{e!r} {e}" for e in errors])


@pytest.mark.parametrize("user,password", [("a", "b"), ("c", "d")])
async def test_config_users_can_connect(server_factory, nats_connect, user, password):
    srv = server_factory(config=USERS_CONF)
    nc = await nats_connect(srv, user=user, password=password)
    sub = await nc.subscribe("x")
    await nc.publish("x", b"hi")
    assert (await sub.next_msg(timeout=5)).data == b"hi"


@pytest.mark.parametrize("user,password", [("a", "d"), ("c", "b"), ("a", ""), ("x", "b")],
                         ids=["a-wrong", "c-wrong", "a-empty", "unknown-user"])
async def test_config_users_wrong_password(server_factory, user, password):
    srv = server_factory(config=USERS_CONF)
    err = await _connect_error(srv, user=user, password=password)
    assert "Authorization Violation" in err, err


def test_config_users_wrong_password_raw(server_factory):
    srv = server_factory(config=USERS_CONF)
    c = srv.raw()
    assert c.info.get("auth_required") is True
    c.send(b'CONNECT {"verbose":false,"user":"a","pass":"d"}\r\n')
    assert c.read_until_close(timeout=5) == b"-ERR 'Authorization Violation'\r\n"


async def test_token_flag(server_factory, nats_connect):
    srv = server_factory(args=["--auth", "s3cret"])
    nc = await nats_connect(srv, token="s3cret")
    sub = await nc.subscribe("x")
    await nc.publish("x", b"tok")
    assert (await sub.next_msg(timeout=5)).data == b"tok"
    err = await _connect_error(srv, token="wrong")
    assert "Authorization Violation" in err, err


def test_token_flag_raw(server_factory):
    srv = server_factory(args=["--auth", "s3cret"])
    c = srv.raw()
    assert c.info.get("auth_required") is True
    c.send(b'CONNECT {"verbose":false,"auth_token":"wrong"}\r\n')
    assert c.read_until_close(timeout=5) == b"-ERR 'Authorization Violation'\r\n"
    ok = srv.raw()
    ok.send(b'CONNECT {"verbose":false,"auth_token":"s3cret"}\r\n')
    assert ok.ping_pong() == b"PONG\r\n"


# --------------------------------------------------------------------------
# unknown config keys

@pytest.mark.parametrize("body,pos,key", [
    ("port: 4999\nmax_paylod: 1MB\n", ":2:1:", "max_paylod"),
    ("port: 4999\nauthorization { user: a, password: b, foo: 1 }\n", ":2:39:", "foo"),
], ids=["top-level", "in-authorization"])
def test_config_test_flag_fails_on_unknown_key(tmp_path, body, pos, key):
    """nats-server: `unk.conf:2:1: unknown field "max_paylod"`, exit 1."""
    conf = tmp_path / "unk.conf"
    conf.write_text(body)
    r = run(["-c", str(conf), "-t"])
    out = r.stdout + r.stderr
    assert r.returncode != 0, r
    assert f"unk.conf{pos}" in out and key in out, out


@pytest.mark.skipif(IS_NATS, reason="nats-server refuses to start on a key it does not know; "
                    "Tern warns and starts (docs/DIFFERENCES.md)")
def test_config_unknown_key_warning_names_file_line_col(spawn, tmp_path):
    conf = tmp_path / "unk.conf"
    conf.write_text("host: 127.0.0.1\nmax_paylod: 1MB\n")
    sp = spawn(["-p", "-1", "-c", str(conf)])
    assert sp.raw().info["max_payload"] == 1024 * 1024  # the default: the key was ignored
    out = file_text(sp.log_path)
    assert re.search(r"unk\.conf:2:1: .*max_paylod", out), out


# --------------------------------------------------------------------------
# the example config shipped at the repository root

TERN_CONF = harness.REPO_ROOT / "tern.conf"


@pytest.mark.skipif(IS_NATS, reason="tern.conf is Tern's example (it sets server_key_file)")
def test_example_config_passes_test_flag():
    r = run(["-t", "-c", str(TERN_CONF)])
    assert r.returncode == 0, r
    assert "warning" not in (r.stdout + r.stderr).lower(), r


@pytest.mark.skipif(IS_NATS, reason="tern.conf is Tern's example (it sets server_key_file)")
def test_example_config_starts(spawn):
    sp = spawn(["-c", str(TERN_CONF), "-a", "127.0.0.1", "-p", "-1", "-m", "-1"])
    c = sp.raw()
    quiet_sub(c)
    c.send(b"PUB x 2\r\nhi\r\n")
    assert c.ping_pong() == b"MSG x 1 2\r\nhi\r\nPONG\r\n"
    assert "warning" not in file_text(sp.log_path).lower()


# --------------------------------------------------------------------------
# Tern's own tools and start-up warnings

@pytest.mark.skipif(IS_NATS, reason="`tern keygen` is a Tern subcommand")
def test_keygen_output_is_labelled():
    r = run(["keygen"])
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    assert re.fullmatch(r"seed: SN[A-Z2-7]{56}", lines[0]), lines
    assert re.fullmatch(r"public key: N[A-Z2-7]{55}", lines[1]), lines


@pytest.mark.skipif(IS_NATS, reason="warning about Tern's open QUIC cluster (no peers pinned)")
def test_open_cluster_warned_once(spawn, tmp_path):
    port = harness.free_cluster_port()
    sp = spawn(["-a", "127.0.0.1", "-p", "-1", "--cluster", f"nats://127.0.0.1:{port}"])
    out = wait_for(lambda: (t := file_text(sp.log_path)) and "ready" in t and t, 10, "ready")
    warnings = [ln for ln in out.splitlines() if re.search(r"(?i)any node", ln)]
    assert len(warnings) == 1, out
