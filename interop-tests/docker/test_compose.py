"""The docker-compose cluster (docker-compose.yml) under failures.

Run by scripts/test-docker, which builds a temporary image tag and writes
fresh identities and configs; the fixture below brings the compose project up
under a unique project name with free host ports, and always takes it down.

Environment (all optional):
  TERN_IMAGE            image to run (default tern:local; must exist)
  TERN_CONFIG_DIR       keys/ and n*.conf (default: generated into a tmp dir
                        by scripts/compose-setup with TERN_SKIP_IMAGE=1)
  TERN_COMPOSE_PROJECT  compose project name (default terntest<pid>)
  TERN_DOCKER_ARTIFACTS directory for compose.log (default: pytest tmp dir)

A second project (`scripts/compose-setup --tls`) checks TLS on the client
ports: plaintext refused, TLS clients on n1 and n3 reach each other.

What is checked, with a publisher on n1 sending sequence-numbered messages
the whole time (about 200/s):
  * all three /routez show two routes with the right peers;
  * a subscriber on n3 gets every message exactly once for the whole run
    (the n1-n3 link is never disturbed, so nothing may be missing);
  * subscribers on n2 get every message published while n2 was linked and
    their interest was known to n1, exactly once;
  * (a) `compose kill n2`: n1 and n3 drop the route within 10 s, n1->n3
    delivery goes on; `compose start n2`: all back to two routes, n2 is
    re-synced both ways (its subscribers receive from n1, n3's interest is
    listed on n2's route to n3 and a publish on n2 reaches n3);
  * (b) `docker network disconnect` of n2: n1 and n3 drop it within 10 s
    (QUIC idle timeout 5 s), n1->n3 goes on; reconnect (with its service
    alias): routes heal, delivery to and from n2 resumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
NODES = ("n1", "n2", "n3")
SUBJECT = "seq.data"

ROUTE_DROP_LIMIT = 10.0   # s: QUIC idle timeout is 5 s
ROUTE_HEAL_LIMIT = 20.0   # s: redial backoff is at most 5 s (+ jitter)
CATCH_UP_LIMIT = 5.0      # s: for in-flight messages to arrive


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- docker / compose --------------------------------------------------------

def compose_cmd() -> list[str]:
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if r.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is available")


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class Cluster:
    project: str
    env: dict
    compose: list[str]
    client_ports: dict[str, int]
    http_ports: dict[str, int]
    containers: dict[str, str] = field(default_factory=dict)
    network: str = ""
    node_ids: dict[str, str] = field(default_factory=dict)
    config_dir: Path | None = None

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [*self.compose, "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def docker(self, *args: str, timeout: float = 60) -> str:
        r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
        return r.stdout

    def url(self, node: str) -> str:
        return f"nats://127.0.0.1:{self.client_ports[node]}"

    def routez(self, node: str, subs: bool = False) -> dict | None:
        """The node's /routez, or None when it cannot be reached."""
        q = "?subs=1" if subs else ""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_ports[node]}/routez{q}", timeout=2
            ) as r:
                return json.load(r)
        except (OSError, ValueError):
            return None


def summary(rz: dict | None) -> str:
    if rz is None:
        return "unreachable"
    routes = ", ".join(
        f"{r['remote_name']}@{r['ip']} rtt={r['rtt']} in={r['in_msgs']} out={r['out_msgs']} "
        f"subs={r['subscriptions']} dropped={r['dropped_msgs']}"
        for r in sorted(rz["routes"], key=lambda r: r["remote_name"])
    )
    return f"num_routes={rz['num_routes']} [{routes}]"


async def routez(c: Cluster, node: str, subs: bool = False) -> dict | None:
    return await asyncio.to_thread(c.routez, node, subs)


async def show_routez(c: Cluster, step: str, nodes=NODES) -> None:
    log(f"/routez {step}:")
    for n in nodes:
        log(f"  {n}: {summary(await routez(c, n))}")


async def wait_for(what: str, pred, limit: float, interval: float = 0.25) -> float:
    """Polls async `pred` until true; returns seconds taken, fails after `limit`."""
    t0 = time.monotonic()
    while True:
        if await pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


def peers_of(rz: dict | None) -> set[str] | None:
    return None if rz is None else {r["remote_name"] for r in rz["routes"]}


async def wait_routes(c: Cluster, expect: dict[str, set[str]], limit: float, what: str) -> float:
    async def ok():
        for n, want in expect.items():
            rz = await routez(c, n)
            if peers_of(rz) != want or rz["num_routes"] != len(want):
                return False
        return True
    return await wait_for(what, ok, limit)


async def wait_interest(c: Cluster, at: str, of: str, subject: str, limit: float = 10.0) -> float:
    """Waits until node `at` lists `subject` among the interest of its route to `of`."""
    async def ok():
        rz = await routez(c, at, subs=True)
        return rz is not None and any(
            r["remote_name"] == of and subject in r.get("subscriptions_list", [])
            for r in rz["routes"]
        )
    return await wait_for(f"{at} to learn {of}'s interest in {subject}", ok, limit)


# --- traffic -----------------------------------------------------------------

class Publisher:
    """Publishes `seq` (1, 2, ...) on SUBJECT from one node, about every 5 ms."""

    def __init__(self, nc):
        self.nc = nc
        self.seq = 0
        self.task = None
        self.errors: list[str] = []

    async def _run(self):
        while True:
            self.seq += 1
            try:
                await self.nc.publish(SUBJECT, str(self.seq).encode())
            except Exception as e:  # noqa: BLE001 - recorded and asserted on
                self.errors.append(repr(e))
            await asyncio.sleep(0.005)

    def start(self):
        self.task = asyncio.create_task(self._run())

    async def checkpoint(self) -> int:
        """The last sequence number the server has certainly been sent."""
        s = self.seq
        await self.nc.flush(timeout=5)
        return s

    async def stop(self):
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


class Receiver:
    """Records sequence numbers a subscription gets and any duplicates."""

    def __init__(self, name: str):
        self.name = name
        self.seen: set[int] = set()
        self.dups: list[int] = []
        self.count = 0

    async def cb(self, msg):
        s = int(msg.data)
        self.count += 1
        if s in self.seen:
            self.dups.append(s)
        self.seen.add(s)

    def missing(self, first: int, last: int) -> list[int]:
        return [s for s in range(first, last + 1) if s not in self.seen]

    async def expect_complete(self, first: int, last: int, limit: float = CATCH_UP_LIMIT) -> None:
        """Every seq in [first, last] arrives (bounded wait), none twice."""
        async def ok():
            return not self.missing(first, last)
        try:
            await wait_for(f"{self.name} to receive {first}..{last}", ok, limit, interval=0.1)
        except AssertionError:
            m = self.missing(first, last)
            raise AssertionError(
                f"{self.name}: {len(m)} of {last - first + 1} messages {first}..{last} missing, "
                f"e.g. {m[:20]}"
            ) from None
        assert not self.dups, f"{self.name}: duplicates {self.dups[:20]}"
        log(f"  {self.name}: all of {first}..{last} received once")

    async def expect_progress(self, limit: float = CATCH_UP_LIMIT, n: int = 50) -> None:
        start = self.count
        async def ok():
            return self.count >= start + n
        await wait_for(f"{self.name} to keep receiving", ok, limit, interval=0.1)


async def connect(c: Cluster, node: str, reconnect: bool = False, limit: float = 10.0):
    """A client on `node`'s published port; retried (bounded) while it comes up.
    No reconnect by default: a reconnecting client could follow connect_urls
    to another node and blur which node a subscriber is on."""
    t0 = time.monotonic()
    while True:
        try:
            return await nats.connect(
                c.url(node), allow_reconnect=reconnect, connect_timeout=2,
                max_reconnect_attempts=0 if not reconnect else 60,
                name=f"compose-test-{node}",
            )
        except Exception:  # noqa: BLE001
            if time.monotonic() - t0 > limit:
                raise
            await asyncio.sleep(0.3)


async def subscribe(c: Cluster, node: str, name: str):
    nc = await connect(c, node)
    rcv = Receiver(name)
    await nc.subscribe(SUBJECT, cb=rcv.cb)
    await nc.flush(timeout=5)
    return nc, rcv


async def close_quietly(nc) -> None:
    try:
        await asyncio.wait_for(nc.close(), 3)
    except Exception:  # noqa: BLE001
        pass


async def probe(c: Cluster, src: str, dst: str, n: int = 20) -> None:
    """A publish on `src` reaches a fresh subscriber on `dst`: n of n, once each."""
    subject = f"probe.{src}.{dst}.{time.monotonic_ns()}"
    sub_nc = await connect(c, dst)
    pub_nc = await connect(c, src)
    try:
        got: list[bytes] = []
        async def cb(m):
            got.append(m.data)
        await sub_nc.subscribe(subject, cb=cb)
        await sub_nc.flush(timeout=5)
        await wait_interest(c, src, dst, subject)
        for i in range(n):
            await pub_nc.publish(subject, str(i).encode())
        await pub_nc.flush(timeout=5)
        async def ok():
            return len(got) >= n
        await wait_for(f"probe {src}->{dst}", ok, CATCH_UP_LIMIT, interval=0.05)
        await asyncio.sleep(0.2)
        assert sorted(got, key=int) == [str(i).encode() for i in range(n)], got
        log(f"  probe {src}->{dst}: {n}/{n} delivered once")
    finally:
        await close_quietly(sub_nc)
        await close_quietly(pub_nc)


# --- fixture -----------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from bring_up(tmp_path_factory, tls=False)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A second project, set up with `scripts/compose-setup --tls`."""
    yield from bring_up(tmp_path_factory, tls=True)


def bring_up(tmp_path_factory, tls: bool):
    compose = compose_cmd()
    image = os.environ.get("TERN_IMAGE", "tern:local")
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                      timeout=30).returncode != 0:
        pytest.fail(f"image {image} not found: run scripts/docker-image (scripts/test-docker does)")
    work = tmp_path_factory.mktemp("compose-tls" if tls else "compose")
    config_dir = None if tls else os.environ.get("TERN_CONFIG_DIR")
    if not config_dir:
        config_dir = str(work / "config")
        subprocess.run([str(ROOT / "scripts/compose-setup"), *(["--tls"] if tls else [])],
                       check=True, timeout=120,
                       env={**os.environ, "TERN_CONFIG_DIR": config_dir, "TERN_SKIP_IMAGE": "1"})
    artifacts = Path(os.environ.get("TERN_DOCKER_ARTIFACTS") or work)
    if tls:
        artifacts = artifacts / "tls"
        artifacts.mkdir(parents=True, exist_ok=True)
    ports = free_ports(6)
    client_ports = dict(zip(NODES, ports[:3]))
    http_ports = dict(zip(NODES, ports[3:]))
    env = {**os.environ, "TERN_IMAGE": image, "TERN_CONFIG_DIR": str(Path(config_dir).resolve()),
           "TERN_PUBLISH_IP": "127.0.0.1"}
    for n in NODES:
        env[f"TERN_{n.upper()}_CLIENT_PORT"] = str(client_ports[n])
        env[f"TERN_{n.upper()}_HTTP_PORT"] = str(http_ports[n])
    project = os.environ.get("TERN_COMPOSE_PROJECT") or f"terntest{os.getpid()}"
    if tls:
        project += "tls"
    c = Cluster(project, env, compose, client_ports, http_ports)
    c.config_dir = Path(config_dir)
    log(f"compose project {project} ({' '.join(compose)}), image {image}, "
        f"client ports {client_ports}, http ports {http_ports}")
    try:
        t0 = time.monotonic()
        c.run("up", "-d", "--no-build", timeout=120)
        log(f"compose up took {time.monotonic() - t0:.1f} s")
        for n in NODES:
            c.containers[n] = c.run("ps", "-q", n).stdout.strip()
            assert c.containers[n], f"no container for {n}"
        nets = json.loads(c.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}",
                                   c.containers["n2"]))
        assert len(nets) == 1, nets
        c.network = next(iter(nets))
        yield c
    finally:
        try:
            (artifacts / "compose.log").write_text(
                c.run("logs", "--no-color", "-t", check=False, timeout=60).stdout)
        except Exception as e:  # noqa: BLE001
            log(f"could not save compose logs: {e!r}")
        r = c.run("down", "-v", "-t", "5", check=False, timeout=120)
        log(f"compose down: exit {r.returncode}")


# --- tests -------------------------------------------------------------------

ALL = {"n1": {"n2", "n3"}, "n2": {"n1", "n3"}, "n3": {"n1", "n2"}}


def test_mesh_forms(cluster: Cluster):
    async def main():
        took = await wait_routes(cluster, ALL, 20, "a full mesh")
        log(f"full mesh after {took:.1f} s")
        await show_routez(cluster, "after start")
        for n in NODES:
            rz = await routez(cluster, n)
            cluster.node_ids[n] = rz["server_id"]
            assert rz["server_name"] == n
        for n in NODES:
            rz = await routez(cluster, n)
            for r in rz["routes"]:
                assert r["remote_id"] == cluster.node_ids[r["remote_name"]], r
        for src, dst in (("n1", "n3"), ("n3", "n2")):
            await probe(cluster, src, dst)
    asyncio.run(main())


def test_kill_and_partition(cluster: Cluster):
    asyncio.run(kill_and_partition(cluster))


async def kill_and_partition(c: Cluster):
    await wait_routes(c, ALL, 20, "a full mesh")
    pub_nc = await connect(c, "n1")
    n3_nc, on_n3 = await subscribe(c, "n3", "sub@n3")
    n3_probe_nc = await connect(c, "n3")
    # Interest n3 has from the start: n2 must get it again in each full sync.
    async def ignore(_msg):
        pass
    await n3_probe_nc.subscribe("probe.keep.>", cb=ignore)
    await n3_probe_nc.flush(timeout=5)
    n2_nc, on_n2 = await subscribe(c, "n2", "sub@n2 (first)")
    await wait_interest(c, "n1", "n3", SUBJECT)
    await wait_interest(c, "n1", "n2", SUBJECT)
    pub = Publisher(pub_nc)
    pub.start()
    others = []
    try:
        await on_n3.expect_progress()
        s = await pub.checkpoint()
        await on_n3.expect_complete(1, s)
        await on_n2.expect_complete(1, s)
        await show_routez(c, "all linked, traffic flowing")

        # --- (a) kill n2 ------------------------------------------------------
        log("(a) docker compose kill n2")
        before_kill = await pub.checkpoint()
        await on_n2.expect_complete(1, before_kill)
        t0 = time.monotonic()
        await asyncio.to_thread(c.run, "kill", "n2")
        await wait_routes(c, {"n1": {"n3"}, "n3": {"n1"}}, ROUTE_DROP_LIMIT,
                          "n1 and n3 to drop n2")
        log(f"  n1 and n3 dropped n2 {time.monotonic() - t0:.1f} s after the kill")
        await show_routez(c, "with n2 killed")
        await on_n3.expect_progress()
        await on_n3.expect_complete(1, await pub.checkpoint())
        await close_quietly(n2_nc)

        log("(a) docker compose start n2")
        t0 = time.monotonic()
        await asyncio.to_thread(c.run, "start", "n2")
        await wait_routes(c, ALL, ROUTE_HEAL_LIMIT, "the mesh to heal after restart")
        log(f"  mesh healed {time.monotonic() - t0:.1f} s after `start` was issued")
        await show_routez(c, "after restarting n2")
        # n2 re-synced n3's interest (full sync when the link came up).
        await wait_interest(c, "n2", "n3", SUBJECT)
        await wait_interest(c, "n2", "n3", "probe.keep.>")
        # A new subscriber on n2 receives from n1 once n1 knows of it.
        n2_nc, on_n2b = await subscribe(c, "n2", "sub@n2 (after restart)")
        others.append(on_n2b)
        await wait_interest(c, "n1", "n2", SUBJECT)
        first = pub.seq + 1
        await on_n2b.expect_progress()
        await on_n2b.expect_complete(first, await pub.checkpoint())
        await on_n3.expect_complete(1, await pub.checkpoint())
        await probe(c, "n2", "n3")
        rz = await routez(c, "n2", subs=True)
        log("  n2 /routez?subs=1: " + "; ".join(
            f"{r['remote_name']}: {r['subscriptions_list']}" for r in rz["routes"]))

        # --- (b) cut n2 off the network ---------------------------------------
        log(f"(b) docker network disconnect {c.network} n2")
        before_cut = await pub.checkpoint()
        await on_n2b.expect_complete(first, before_cut)
        t0 = time.monotonic()
        await asyncio.to_thread(c.docker, "network", "disconnect", c.network, c.containers["n2"])
        await wait_routes(c, {"n1": {"n3"}, "n3": {"n1"}}, ROUTE_DROP_LIMIT,
                          "n1 and n3 to drop the disconnected n2")
        log(f"  n1 and n3 dropped n2 {time.monotonic() - t0:.1f} s after the disconnect")
        await show_routez(c, "with n2 disconnected")
        await on_n3.expect_progress()
        await on_n3.expect_complete(1, await pub.checkpoint())
        await close_quietly(n2_nc)

        log(f"(b) docker network connect --alias n2 {c.network} n2")
        # Compose gave the container the alias n2 on this network; a plain
        # `network connect` would not, and n2 would not resolve until then.
        t0 = time.monotonic()
        await asyncio.to_thread(c.docker, "network", "connect", "--alias", "n2", c.network,
                                c.containers["n2"])
        await wait_routes(c, ALL, ROUTE_HEAL_LIMIT, "the mesh to heal after reconnect")
        log(f"  mesh healed {time.monotonic() - t0:.1f} s after the reconnect")
        await show_routez(c, "after reconnecting n2")
        n2_nc, on_n2c = await subscribe(c, "n2", "sub@n2 (after reconnect)")
        others.append(on_n2c)
        await wait_interest(c, "n1", "n2", SUBJECT)
        first = pub.seq + 1
        await on_n2c.expect_progress()
        last = await pub.checkpoint()
        await on_n2c.expect_complete(first, last)
        await probe(c, "n2", "n1")
        await probe(c, "n1", "n2")

        # --- (c) the whole run: nothing lost on n1->n3, nothing twice anywhere --
        last = await pub.checkpoint()
        await on_n3.expect_complete(1, last)
        await pub.stop()
        await asyncio.sleep(0.5)
        for r in (on_n3, on_n2, *others):
            assert not r.dups, f"{r.name}: duplicates {r.dups[:20]}"
        assert not pub.errors, pub.errors[:5]
        log(f"published {pub.seq} messages; sub@n3 got {on_n3.count} "
            f"({len(on_n3.seen)} distinct); n2 subscribers got "
            f"{[r.count for r in (on_n2, *others)]}")
        await show_routez(c, "at the end")
        for n in NODES:
            rz = await routez(c, n)
            assert all(r["dropped_msgs"] == 0 for r in rz["routes"]), summary(rz)
    finally:
        if pub.task and not pub.task.done():
            await pub.stop()
        for nc in (pub_nc, n3_nc, n3_probe_nc, n2_nc):
            await close_quietly(nc)


def test_tls_cluster(tls_cluster: Cluster):
    """`scripts/compose-setup --tls`: clients need TLS (trusting the
    generated CA) on every node, and messages still cross the QUIC mesh."""
    import ssl

    c = tls_cluster
    ctx = ssl.create_default_context(cafile=str(c.config_dir / "tls" / "ca.pem"))

    async def main():
        await wait_routes(c, ALL, 30, "a full mesh (TLS project)")
        # A plaintext client is told TLS is required and gets nowhere.
        with socket.create_connection(("127.0.0.1", c.client_ports["n1"]), timeout=5) as s:
            info = s.recv(4096)
            assert info.startswith(b"INFO ") and b'"tls_required":true' in info, info
        sub_nc = await nats.connect(f"tls://localhost:{c.client_ports['n3']}", tls=ctx,
                                    allow_reconnect=False, connect_timeout=5)
        pub_nc = await nats.connect(f"tls://localhost:{c.client_ports['n1']}", tls=ctx,
                                    allow_reconnect=False, connect_timeout=5)
        try:
            sub = await sub_nc.subscribe("tls.cross")
            await wait_interest(c, "n1", "n3", "tls.cross")
            await pub_nc.publish("tls.cross", b"over tls and quic")
            msg = await sub.next_msg(timeout=10)
            assert msg.data == b"over tls and quic"
        finally:
            await close_quietly(sub_nc)
            await close_quietly(pub_nc)

    asyncio.run(asyncio.wait_for(main(), 90))
