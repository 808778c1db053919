"""Operating a running server: SIGHUP config reload, SIGUSR1 log reopen and
`--signal`, as nats-server does them (the expectations were read off
nats-server v2.15.1, and every test here runs against it as well).

Every wait is bounded and waits on a log line or a protocol answer; a
process the test signalled to exit is reaped by the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import harness

KIND = harness.server_kind()
IS_TERN = KIND == "tern"

RELOADED = "Reloaded server configuration"
FAILED = "Failed to reload server configuration"


def text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def reload(srv: harness.Server, new_config: str | None = None, log: Path | None = None,
           expect: str = RELOADED) -> str:
    """Rewrites srv's config (if given), sends SIGHUP and waits for one more
    `expect` line (reloaded or failed) in the log. Returns the log text."""
    log = log or srv.log_path
    before = text(log).count(expect)
    if new_config is not None:
        srv.config_path.write_text(new_config)
    os.kill(srv.pid, signal.SIGHUP)
    out = wait_for(lambda: (t := text(log)).count(expect) > before and t, 10,
                   f"a new {expect!r} line in {log}")
    assert srv.alive(), f"server died on SIGHUP; log:\n{srv.log_tail()}"
    return out


def connect_raw(srv: harness.Server, **opts) -> harness.RawConn:
    c = srv.raw()
    c.connect(**opts)
    return c


def auth_ok(srv: harness.Server, user: str, password: str) -> bool:
    c = connect_raw(srv, user=user, **{"pass": password})
    c.send(b"PING\r\n")
    data = c.readline(timeout=5)
    c.close()
    if data == b"PONG\r\n":
        return True
    assert data == b"-ERR 'Authorization Violation'\r\n", data
    return False


def run(args: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run([harness.binary_for(KIND)] + args, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL,
                          preexec_fn=harness._die_with_parent)


def wait_exit(srv: harness.Server, timeout: float = 10.0) -> int:
    proc = srv.proc
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server did not exit within {timeout}s; log:\n{srv.log_tail()}")
    harness._LIVE.pop(proc.pid, None)
    srv.proc = None
    return rc


AUTH = "authorization {{ users: [ {{user: a, password: {pw}}} ] }}\n"


# --------------------------------------------------------------------------
# SIGHUP

def test_sighup_reloads_and_keeps_running(server_factory):
    srv = server_factory(config=AUTH.format(pw="b"))
    out = reload(srv)
    assert 'Trapped "hangup" signal' in out, out
    assert auth_ok(srv, "a", "b")


def test_reload_password_closes_clients_that_no_longer_pass(server_factory):
    srv = server_factory(config=AUTH.format(pw="b"))
    old = connect_raw(srv, user="a", **{"pass": "b"})
    assert old.ping_pong() == b"PONG\r\n"
    reload(srv, AUTH.format(pw="c"))
    assert old.read_until_close(timeout=5) == b"-ERR 'Authorization Violation'\r\n"
    assert auth_ok(srv, "a", "c")
    assert not auth_ok(srv, "a", "b")


def test_reload_adding_auth_closes_unauthenticated_clients(server_factory):
    srv = server_factory(config="debug: false\n")
    old = connect_raw(srv)
    assert old.ping_pong() == b"PONG\r\n"
    reload(srv, AUTH.format(pw="b"))
    assert old.read_until_close(timeout=5) == b"-ERR 'Authorization Violation'\r\n"
    assert srv.raw().info.get("auth_required") is True


def test_reload_keeps_clients_whose_credentials_still_pass(server_factory):
    srv = server_factory(config=AUTH.format(pw="b"))
    old = connect_raw(srv, user="a", **{"pass": "b"})
    old.send(b"SUB x 1\r\n")
    assert old.ping_pong() == b"PONG\r\n"
    reload(srv, AUTH.format(pw="b") + "max_payload: 2048\n")
    old.send(b"PUB x 2\r\nhi\r\n")
    assert old.ping_pong() == b"MSG x 1 2\r\nhi\r\nPONG\r\n"


def test_reload_max_payload(server_factory):
    srv = server_factory(config="max_payload: 1024\n")
    old = connect_raw(srv)
    old.send(b"SUB x 1\r\n")
    assert old.ping_pong() == b"PONG\r\n"
    assert srv.raw().info["max_payload"] == 1024
    assert srv.varz()["max_payload"] == 1024
    reload(srv, "max_payload: 2048\n")
    assert srv.raw().info["max_payload"] == 2048
    assert srv.varz()["max_payload"] == 2048
    # Existing connections get the new limit as well.
    payload = b"p" * 1500
    old.send(b"PUB x 1500\r\n" + payload + b"\r\n")
    assert old.ping_pong() == b"MSG x 1 1500\r\n" + payload + b"\r\nPONG\r\n"


def test_reload_max_connections_closes_extra_clients(server_factory):
    srv = server_factory(config="max_connections: 10\n")
    clients = [connect_raw(srv) for _ in range(3)]
    for c in clients:
        assert c.ping_pong() == b"PONG\r\n"
    reload(srv, "max_connections: 1\n")
    closed = 0
    for c in clients:
        c.send(b"PING\r\n")
        try:
            line = c.readline(timeout=5)
        except EOFError:
            pytest.fail("closed without an -ERR")
        if line == b"-ERR 'maximum connections exceeded'\r\n":
            c.read_until_close(timeout=5)
            closed += 1
        else:
            assert line == b"PONG\r\n", line
    assert closed == 2


def test_reload_debug_turns_on_debug_lines(server_factory):
    srv = server_factory(config="debug: false\n")
    quiet = connect_raw(srv)
    assert quiet.ping_pong() == b"PONG\r\n"
    assert not re.search(r"(?i)connection created", text(srv.log_path))
    reload(srv, "debug: true\n")
    c = connect_raw(srv)
    assert c.ping_pong() == b"PONG\r\n"
    wait_for(lambda: re.search(r"(?i)connection created", text(srv.log_path)), 5,
             "a debug line for the connection made after the reload")


def test_reload_bad_syntax_changes_nothing(server_factory):
    srv = server_factory(config=AUTH.format(pw="b"))
    out = reload(srv, "authorization { users: [ {user: a, password: c} ]\n", expect=FAILED)
    line = [ln for ln in out.splitlines() if FAILED in ln][-1]
    # nats-server names the line where the file ended, Tern the unclosed brace.
    assert re.search(r"line \d+|\.conf:\d+:\d+:", line), line
    assert auth_ok(srv, "a", "b")
    assert not auth_ok(srv, "a", "c")


def test_reload_of_fixed_setting_is_refused_and_changes_nothing(server_factory):
    srv = server_factory(config=AUTH.format(pw="b") + "server_name: one\n")
    out = reload(srv, AUTH.format(pw="c") + "server_name: two\n", expect=FAILED)
    line = [ln for ln in out.splitlines() if FAILED in ln][-1]
    assert re.search(r"(?i)config reload not supported for server_?name", line), line
    assert "one" in line and "two" in line, line
    assert srv.raw().info["server_name"] == "one"
    assert auth_ok(srv, "a", "b")


def test_reload_flags_still_override_the_file(server_factory):
    """The harness's `-p -1` overrides any port in the file, on reload too."""
    srv = server_factory(config="port: 4222\n")
    reload(srv, "port: 4223\n")
    assert srv.raw().info["port"] == srv.port


# --------------------------------------------------------------------------
# SIGUSR1

def test_sigusr1_reopens_log_file(server_factory, tmp_path):
    log = tmp_path / "server.log"
    srv = server_factory(config="debug: false\n", args=["-l", str(log)])
    wait_for(lambda: "ready" in text(log), 5, f"'ready' in {log}")
    rotated = tmp_path / "server.log.1"
    log.rename(rotated)
    os.kill(srv.pid, signal.SIGUSR1)
    wait_for(lambda: "re-opened" in text(log), 5, "'File log re-opened' in a new file")
    reload(srv, log=log)
    assert 'Trapped "hangup" signal' in text(log)
    assert "hangup" not in text(rotated)
    assert "ready" in text(rotated) and "ready" not in text(log)


# --------------------------------------------------------------------------
# --signal

@pytest.mark.parametrize("flag", ["--signal", "-sl", "-signal"])
def test_signal_flag_reload_by_pid(server_factory, flag):
    srv = server_factory(config="debug: false\n")
    before = text(srv.log_path).count(RELOADED)
    r = run([flag, f"reload={srv.pid}"])
    assert r.returncode == 0, r
    wait_for(lambda: text(srv.log_path).count(RELOADED) > before, 10, "a reload")


def test_signal_flag_reload_by_pid_file(server_factory, tmp_path):
    pid_file = tmp_path / "srv.pid"
    srv = server_factory(config="debug: false\n", args=["-P", str(pid_file)])
    wait_for(lambda: text(pid_file).strip() == str(srv.pid), 5, "the pid file")
    before = text(srv.log_path).count(RELOADED)
    r = run(["--signal", f"reload={pid_file}"])
    assert r.returncode == 0, r
    wait_for(lambda: text(srv.log_path).count(RELOADED) > before, 10, "a reload")


@pytest.mark.parametrize("cmd", ["quit", "term"])
def test_signal_flag_graceful_stop(server_factory, cmd):
    srv = server_factory()
    r = run(["--signal", f"{cmd}={srv.pid}"])
    assert r.returncode == 0, r
    assert wait_exit(srv) == 0


def test_signal_flag_stop_kills(server_factory):
    srv = server_factory()
    r = run(["--signal", f"stop={srv.pid}"])
    assert r.returncode == 0, r
    assert wait_exit(srv) == -signal.SIGKILL


def test_signal_flag_ldm(server_factory):
    srv = server_factory()
    r = run(["--signal", f"ldm={srv.pid}"])
    assert r.returncode == 0, r
    # No clients: lame duck mode ends at once.
    assert wait_exit(srv) == 0
    assert "lame duck" in text(srv.log_path).lower()


def test_signal_flag_reopen(server_factory, tmp_path):
    log = tmp_path / "server.log"
    srv = server_factory(args=["-l", str(log)])
    wait_for(lambda: "ready" in text(log), 5, f"'ready' in {log}")
    r = run(["--signal", f"reopen={srv.pid}"])
    assert r.returncode == 0, r
    wait_for(lambda: "re-opened" in text(log), 5, "'File log re-opened'")


@pytest.mark.parametrize("arg,message", [
    ("bogus=1", 'unknown signal "bogus"'),
    ("reload=abc", "invalid pid: abc"),
    ("reload=/no/such/file.pid", "invalid pid: /no/such/file.pid"),
])
def test_signal_flag_errors(arg, message):
    r = run(["--signal", arg])
    assert r.returncode == 1, r
    assert message in r.stderr, r


def test_signal_flag_no_such_process():
    # A pid above the kernel's pid_max cannot exist.
    r = run(["--signal", "reload=99999999"])
    assert r.returncode == 1, r
    assert re.search(r'signal "reload" 99999999: no such process', r.stderr), r


@pytest.mark.skipif(not IS_TERN, reason="looks processes up by the binary's own name: with "
                    "a renamed copy nothing else can match; nats-server's lookup is pgrep "
                    "'nats-server', which other servers on this machine may match")
def test_signal_flag_without_pid_and_no_process(tmp_path):
    exe = tmp_path / "tq7x"
    exe.write_bytes(Path(harness.binary_for(KIND)).read_bytes())
    exe.chmod(0o755)
    r = subprocess.run([str(exe), "--signal", "reload"], capture_output=True, text=True,
                       timeout=10, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r
    assert "no tq7x processes running" in r.stderr, r


@pytest.mark.skipif(not IS_TERN, reason="Tern sizes its QUIC cluster frames for the start-up "
                    "max_payload; nats-server routes have no such limit")
def test_reload_cannot_raise_max_payload_on_cluster_node(server_factory):
    port = harness.free_cluster_port()
    srv = server_factory(config="max_payload: 1024\n",
                         args=["--cluster", f"nats://127.0.0.1:{port}"])
    out = reload(srv, "max_payload: 2048\n", expect=FAILED)
    line = [ln for ln in out.splitlines() if FAILED in ln][-1]
    assert "max_payload" in line, line
    assert srv.raw().info["max_payload"] == 1024
    reload(srv, "max_payload: 512\n")
    assert srv.raw().info["max_payload"] == 512


def test_sigusr1_without_log_file_and_sighup_without_config(server_factory):
    srv = server_factory()
    os.kill(srv.pid, signal.SIGUSR1)
    wait_for(lambda: "File log re-open ignored, not a file logger" in text(srv.log_path), 5,
             "the log to say there is no log file to reopen")
    out = reload(srv, expect=FAILED)
    assert "can only reload config when a file is provided using -c or --config" in out, out
