"""HTTP monitoring endpoints (-m PORT): /varz, /connz, /subsz, /healthz, /routez.

Counts are checked as differences from a baseline taken in the same test,
because nats-server has internal ($SYS) subscriptions a simpler server may not.
"""

from __future__ import annotations

import re
import time
import urllib.error

import pytest

QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'


def client(server, name: str, subjects: list[str]):
    c = server.raw()
    c.connect(name=name)
    for i, s in enumerate(subjects):
        c.send(b"SUB %s %d\r\n" % (s.encode(), i + 1))
    assert c.ping_pong() == b"PONG\r\n"
    return c


def test_varz_fields(server):
    v = server.varz()
    for key in ("server_id", "server_name", "version", "port", "max_payload",
                "connections", "in_msgs", "out_msgs", "in_bytes", "out_bytes",
                "subscriptions", "slow_consumers", "uptime", "now", "mem", "cores"):
        assert key in v, key
    info = server.raw().info
    assert v["server_id"] == info["server_id"]
    assert v["server_name"] == info["server_name"]
    assert v["version"] == info["version"]
    assert v["port"] == server.port
    assert v["max_payload"] == 1048576
    assert isinstance(v["uptime"], str) and re.fullmatch(r"(\d+[ywdhms])+", v["uptime"]), v["uptime"]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", v["now"])
    assert v["mem"] > 0 and v["cores"] >= 1
    for key in ("connections", "in_msgs", "out_msgs", "in_bytes", "out_bytes",
                "subscriptions", "slow_consumers"):
        assert isinstance(v[key], int) and v[key] >= 0, key


def test_harness_leaves_no_connection_behind(server):
    """Counts in these tests are deltas from a baseline: a connection the
    harness made while starting the server (and closed) would be counted in
    the baseline or not depending on when the server noticed the close.
    One client with a finished round trip must be the only one ever seen."""
    c = client(server, "only", [])
    v = server.varz()
    assert v["total_connections"] == 1, v["total_connections"]
    assert v["connections"] == 1
    del c


def test_varz_counters_move(server):
    before = server.varz()
    a = client(server, "a", ["cnt"])
    b = client(server, "b", ["cnt", "other"])
    b.send(b"PUB cnt 5\r\nhello\r\n")
    b.ping_pong()
    a.ping_pong()  # a has received its copy
    after = server.varz()
    assert after["connections"] - before["connections"] == 2
    assert after["subscriptions"] - before["subscriptions"] == 3
    assert after["in_msgs"] - before["in_msgs"] == 1
    assert after["in_bytes"] - before["in_bytes"] == 5
    assert after["out_msgs"] - before["out_msgs"] == 2
    assert after["out_bytes"] - before["out_bytes"] == 10
    b.close()
    a.send(b"UNSUB 1\r\n")
    a.ping_pong()
    # The server notices b's close asynchronously: poll (bounded) until both
    # its connection and its two subscriptions are gone.
    deadline = time.monotonic() + 10
    while True:
        v = server.varz()
        delta = (v["connections"] - before["connections"],
                 v["subscriptions"] - before["subscriptions"])
        if delta == (1, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert delta == (1, 0), "(connections, subscriptions) after b closed and a unsubscribed"


def test_connz_lists_connections(server):
    conns = [client(server, f"c{i}", [f"s{i}.{j}" for j in range(i + 1)]) for i in range(3)]
    status, cz = server.http_get("/connz?subs=1")
    assert status == 200
    assert cz["num_connections"] == 3 and cz["total"] == 3
    assert cz["offset"] == 0 and cz["limit"] > 0
    by_name = {c["name"]: c for c in cz["connections"]}
    assert set(by_name) == {"c0", "c1", "c2"}
    for i in range(3):
        c = by_name[f"c{i}"]
        assert isinstance(c["cid"], int)
        assert c["ip"] == "127.0.0.1"
        assert c["port"] == conns[i].sock.getsockname()[1]
        assert c["subscriptions"] == i + 1
        assert sorted(c["subscriptions_list"]) == sorted(f"s{i}.{j}" for j in range(i + 1))
    assert by_name["c0"]["cid"] == conns[0].info["client_id"]
    # Without subs=1 there is no subscriptions_list.
    _, plain = server.http_get("/connz")
    assert all("subscriptions_list" not in c for c in plain["connections"])


def test_connz_sort_limit_offset(server):
    keep = [client(server, f"c{i}", [f"t{i}.{j}" for j in range(i + 1)]) for i in range(3)]
    _, cz = server.http_get("/connz?sort=subs")
    assert [c["name"] for c in cz["connections"]] == ["c2", "c1", "c0"]
    _, cz = server.http_get("/connz?sort=subs&limit=2&offset=1")
    assert [c["name"] for c in cz["connections"]] == ["c1", "c0"]
    assert cz["limit"] == 2 and cz["offset"] == 1 and cz["total"] == 3
    assert cz["num_connections"] == 2
    _, cz = server.http_get("/connz?sort=cid")
    cids = [c["cid"] for c in cz["connections"]]
    assert cids == sorted(cids)
    _, cz = server.http_get("/connz?limit=1")
    assert len(cz["connections"]) == 1 and cz["total"] == 3
    with pytest.raises(urllib.error.HTTPError) as e:
        server.http_get("/connz?sort=bogus")
    assert e.value.code == 400
    del keep


def test_subsz(server):
    _, before = server.http_get("/subsz")
    assert "num_subscriptions" in before
    c = client(server, "s", ["x.1", "x.2", "x.>"])
    _, after = server.http_get("/subsz")
    assert after["num_subscriptions"] - before["num_subscriptions"] == 3
    del c


def test_healthz(server):
    status, body = server.http_get("/healthz")
    assert status == 200
    assert body == {"status": "ok"}


def test_routez_standalone(server):
    status, rz = server.http_get("/routez")
    assert status == 200
    assert rz["num_routes"] == 0
    assert rz.get("routes") in ([], None)


def test_unknown_path_is_404(server):
    with pytest.raises(urllib.error.HTTPError) as e:
        server.http_get("/no-such-endpoint")
    assert e.value.code == 404
