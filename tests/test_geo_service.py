"""GeoService (what sessions call), the MaxMind source, and the master's refresh schedule
(spec/services.md §3 "Storage and refresh", "We do better: Independent refresh, Last good data").

Refreshes run the real helper process; CSV files come from a local HTTP server on loopback."""
from __future__ import annotations

import ipaddress
import os
import random
import time

import maxminddb
import msgspec
import pytest
from test_geo_fetch import ASN_V4, CsvServer, Events, write_fixtures

from stalwart._fast import load
from stalwart.config import parse_bytes
from stalwart.services.geo import service as service_mod
from stalwart.services.geo.info import GeoInfo
from stalwart.services.geo.manager import GeoRefresher
from stalwart.services.geo.mmdb import asn_record, country_record, write_database
from stalwart.services.geo.refresh import build, table_path
from stalwart.services.geo.service import GeoService


def p(text):
    return ipaddress.ip_address(text).packed


def cfg_of(doc):
    if doc.get("@type") == "Resource":
        doc = {"httpAuth": {"@type": "Unauthenticated"}, **doc}
    return parse_bytes(msgspec.json.encode({"Asn": doc})).Asn


@pytest.fixture(params=["py", "c"])
def twin(request, monkeypatch):
    monkeypatch.setattr(service_mod, "rangetable", load("rangetable", compiled=request.param == "c"))
    return request.param


@pytest.fixture
def server():
    with CsvServer() as s:
        write_fixtures(s)
        yield s


def resource(server, **extra):
    return cfg_of({"@type": "Resource", "asnUrls": [server.url("/asn-ipv4.csv"), server.url("/asn-ipv6.csv")],
                   "geoUrls": [server.url("/geo-ipv4.csv"), server.url("/geo-ipv6.csv.gz")], **extra})


def test_lookup_combines_both_tables(server, tmp_path, twin):
    cfg = resource(server)
    for kind in ("asn", "country"):
        assert build(cfg, str(tmp_path), kind, Events())[0]
    geo = GeoService(cfg, str(tmp_path))
    assert geo.lookup(p("1.0.0.1")) == GeoInfo(13335, "Cloudflare, Inc.", "AU")
    assert geo.lookup(p("8.8.4.4")) == GeoInfo(3356, "LEVEL3", None)
    assert geo.lookup(p("2001:200::1")) == GeoInfo(2500, "WIDE Project", "JP")
    assert geo.lookup(p("::ffff:1.0.0.1")) == GeoInfo(13335, "Cloudflare, Inc.", "AU")
    assert geo.lookup(p("10.0.0.1")) is None
    # Loopback is never looked up, even when a table covers it.
    assert geo.lookup(p("127.0.0.1")) is None and geo.lookup(p("::1")) is None
    assert geo.lookup(b"bad") is None
    assert geo.lookup(p("1.0.0.1")).received_comment() == "AS13335 Cloudflare, Inc., AU"
    geo.close()


def test_new_table_file_is_picked_up(server, tmp_path, twin):
    cfg = resource(server)
    now = [100.0]
    geo = GeoService(cfg, str(tmp_path), clock=lambda: now[0])
    assert geo.lookup(p("1.0.0.1")) is None  # no table yet
    build(cfg, str(tmp_path), "asn", Events())
    assert geo.lookup(p("1.0.0.1")) is None  # not re-checked within CHECK_INTERVAL
    now[0] += 1.5
    assert geo.lookup(p("1.0.0.1")).asn == 13335
    server.files["/asn-ipv4.csv"] = b"1.0.0.0,1.0.0.255,64500,NEW\n"
    build(cfg, str(tmp_path), "asn", Events())
    now[0] += 1.5
    assert geo.lookup(p("1.0.0.1")) == GeoInfo(64500, "NEW", None)
    os.unlink(table_path(str(tmp_path), "asn"))
    now[0] += 1.5
    assert geo.lookup(p("1.0.0.1")) is None


def test_damaged_table_file_is_ignored(tmp_path, twin):
    cfg = cfg_of({"@type": "Resource", "asnUrls": ["file:///x.csv"]})
    os.makedirs(tmp_path / "geo")
    (tmp_path / "geo" / "asn.table").write_bytes(b"STWRANGE" + b"\xff" * 100)
    geo = GeoService(cfg, str(tmp_path))
    assert geo.lookup(p("1.0.0.1")) is None
    (tmp_path / "geo" / "asn.table").write_bytes(b"")
    geo._next_check = 0
    assert geo.lookup(p("1.0.0.1")) is None


def test_disabled_answers_nothing(tmp_path):
    geo = GeoService(cfg_of({"@type": "Disabled"}), str(tmp_path))
    assert not geo.enabled and geo.lookup(p("1.0.0.1")) is None


# -- MaxMind databases -------------------------------------------------------------------------
def random_ranges(rng, n, bits):
    starts = sorted(rng.sample(range(1 << min(bits, 60)), n))
    shift = bits - min(bits, 60)
    out = []
    for i, s in enumerate(starts):
        s <<= shift
        e = s + rng.randint(0, (1 << (8 + shift)) - 1)
        if out and s <= out[-1][1]:
            continue
        out.append((s, e, i))
    return out


def test_mmdb_source_agrees_with_maxminddb(tmp_path, twin):
    rng = random.Random(3)
    v4 = random_ranges(rng, 400, 32)
    v6 = random_ranges(rng, 300, 128)
    asn_db, cc_db = str(tmp_path / "asn.mmdb"), str(tmp_path / "country.mmdb")
    write_database(asn_db, [(s, e, asn_record(64500 + i, f"AS-{i}")) for s, e, i in v4],
                   [(s, e, asn_record(65000 + i, f"AS6-{i}")) for s, e, i in v6])
    codes = ["US", "DE", "JP", "FR", "BR"]
    write_database(cc_db, [(s, e, country_record(codes[i % 5])) for s, e, i in v4],
                   [(s, e, country_record(codes[i % 5])) for s, e, i in v6], database_type="GeoLite2-Country")
    cfg = cfg_of({"@type": "Mmdb", "asnDatabase": asn_db, "countryDatabase": cc_db})
    assert build(cfg, str(tmp_path), "asn", Events())[0]
    assert build(cfg, str(tmp_path), "country", Events())[0]
    geo = GeoService(cfg, str(tmp_path))
    ra, rc = maxminddb.open_database(asn_db), maxminddb.open_database(cc_db)
    probes = [ipaddress.IPv4Address(rng.choice(v4)[0] + rng.randint(0, 300)) for _ in range(500)]
    probes += [ipaddress.IPv6Address(rng.choice(v6)[0] + rng.randint(0, 1 << 76)) for _ in range(500)]
    probes += [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(200)]
    for ip in probes:
        if ip.is_loopback:
            continue
        a, c = ra.get(str(ip)), rc.get(str(ip))
        want = None
        if a or c:
            want = GeoInfo(a["autonomous_system_number"] if a else None,
                           a["autonomous_system_organization"] if a else None, c["country"]["iso_code"] if c else None)
        assert geo.lookup(ip.packed) == want, ip


def test_broken_mmdb_is_an_error_event(tmp_path):
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a database")
    ev = Events()
    cfg = cfg_of({"@type": "Mmdb", "asnDatabase": str(bad)})
    assert build(cfg, str(tmp_path), "asn", ev) == (False, 0)
    assert "Invalid MaxMind database" in ev.named("resource.error")[0]["Reason"]


# -- the master's schedule ---------------------------------------------------------------------
def run_helper(ref: GeoRefresher, timeout: float = 30.0) -> None:
    ref.tick()
    assert ref.proc is not None, "nothing was due"
    deadline = time.monotonic() + timeout
    while ref.proc is not None and time.monotonic() < deadline:
        time.sleep(0.02)
        ref.tick()
    assert ref.proc is None, "helper did not finish"


def test_refresh_success_failure_backoff_and_last_good(server, tmp_path):
    now = [1_000_000.0]
    ref = GeoRefresher(str(tmp_path), clock=lambda: now[0])
    ref.configure(resource(server, expires=3_600_000))
    assert ref.state["asn"].due <= now[0] and ref.state["country"].due <= now[0]
    run_helper(ref)
    assert ref.state["asn"].due == now[0] + 3600 and ref.state["country"].failures == 0
    assert ref.command("lookup", {"address": "1.0.0.1"}) == {
        "ok": True, "address": "1.0.0.1", "source": "Resource", "found": True,
        "asn": 13335, "asnName": "Cloudflare, Inc.", "country": "AU"}
    # The server breaks: each kind keeps its last good table and backs off 60, 120, 240 … ≤ expires.
    server.fail = True
    for i, wait in enumerate([60, 120, 240, 480, 960, 1920, 3600, 3600]):
        now[0] = max(ref.state["asn"].due, ref.state["country"].due)
        run_helper(ref)
        assert ref.state["asn"].failures == i + 1
        assert ref.state["asn"].due == now[0] + wait
        assert ref.command("lookup", {"address": "1.0.0.1"})["asn"] == 13335
    server.fail = False
    now[0] = ref.state["asn"].due
    run_helper(ref)
    assert ref.state["asn"].failures == 0 and ref.state["asn"].due == now[0] + 3600
    ref.close()


def test_kinds_refresh_independently(server, tmp_path):
    now = [2_000_000.0]
    ref = GeoRefresher(str(tmp_path), clock=lambda: now[0])
    server.files.pop("/geo-ipv4.csv")
    server.files.pop("/geo-ipv6.csv.gz")
    ref.configure(resource(server))
    run_helper(ref)
    assert ref.state["asn"].failures == 0 and ref.state["asn"].due == now[0] + 86400
    assert ref.state["country"].failures == 1 and ref.state["country"].due == now[0] + 60
    ref.close()


def test_last_good_data_survives_a_restart(server, tmp_path):
    now = [3_000_000.0]
    first = GeoRefresher(str(tmp_path), clock=lambda: time.time())
    first.configure(resource(server))
    run_helper(first)
    first.close()
    built = time.time()
    # A new master: the tables on disk serve at once and are not due before built_at + expires.
    server.fail = True
    now[0] = built + 10
    ref = GeoRefresher(str(tmp_path), clock=lambda: now[0])
    ref.configure(resource(server))
    assert ref.state["asn"].due > now[0] + 86000
    ref.tick()
    assert ref.proc is None
    assert ref.command("lookup", {"address": "2001:200::1"})["asn"] == 2500
    # A changed URL list is fetched at once.
    ref.configure(resource(server, asnUrls=[server.url("/asn-ipv4.csv")]))
    assert ref.state["asn"].due <= now[0] and ref.state["country"].due > now[0]
    ref.close()


def test_removed_sources_remove_their_table(server, tmp_path):
    ref = GeoRefresher(str(tmp_path))
    ref.configure(resource(server))
    run_helper(ref)
    assert os.path.exists(table_path(str(tmp_path), "country"))
    ref.configure(resource(server, geoUrls=[]))
    assert not os.path.exists(table_path(str(tmp_path), "country"))
    assert ref.command("lookup", {"address": "1.0.0.1"})["country"] is None
    assert ref.command("lookup", {"address": "1.0.0.1"})["asn"] == 13335
    ref.close()


def test_mmdb_change_triggers_rebuild(tmp_path):
    db = str(tmp_path / "asn.mmdb")
    write_database(db, [(int(ipaddress.IPv4Address("1.0.0.0")), int(ipaddress.IPv4Address("1.0.0.255")),
                         asn_record(1, "ONE"))], [])
    now = [4_000_000.0]
    ref = GeoRefresher(str(tmp_path), clock=lambda: now[0])
    ref.configure(cfg_of({"@type": "Mmdb", "asnDatabase": db}))
    assert ref.state["country"].due == float("inf")
    run_helper(ref)
    assert ref.command("lookup", {"address": "1.0.0.1"})["asnName"] == "ONE"
    now[0] += 61
    ref.tick()
    assert ref.proc is None  # checked after `expires`: unchanged file, nothing to read
    assert ref.state["asn"].due == now[0] + 60
    write_database(db, [(int(ipaddress.IPv4Address("1.0.0.0")), int(ipaddress.IPv4Address("1.0.0.255")),
                         asn_record(2, "TWO"))], [])
    os.utime(db, (time.time() + 5, time.time() + 5))
    ref.tick()
    assert ref.proc is None  # not before the next check
    now[0] += 61
    run_helper(ref)
    ref.service._next_check = 0
    assert ref.command("lookup", {"address": "1.0.0.1"})["asnName"] == "TWO"
    ref.close()


def test_killed_helper_leftovers_are_removed(tmp_path):
    os.makedirs(tmp_path / "geo")
    (tmp_path / "geo" / "asn.table.tmp12345").write_bytes(b"half")
    ref = GeoRefresher(str(tmp_path))
    ref.configure(cfg_of({"@type": "Resource", "asnUrls": ["file:///nonexistent.csv"]}))
    assert not (tmp_path / "geo" / "asn.table.tmp12345").exists()
    ref.close()


def test_control_commands(server, tmp_path):
    ref = GeoRefresher(str(tmp_path))
    assert ref.command("lookup", {"address": "1.0.0.1"})["ok"] is False  # disabled
    ref.configure(resource(server))
    assert ref.command("lookup", {"address": "not-an-ip"}) == {"ok": False, "error": "'not-an-ip' is not an IP address"}
    assert ref.command("lookup", {"address": "1.0.0.1"})["found"] is False  # not downloaded yet
    run_helper(ref)
    status = ref.command("status", {})
    assert status["tables"]["asn"]["ranges"] == 7 and status["tables"]["country"]["ranges"] == 4
    assert ref.command("refresh", {}) == {"ok": True, "message": "refreshing asn, country"}
    run_helper(ref)
    assert ref.command("nope", {})["ok"] is False
    ref.close()


def test_helper_over_budget_is_killed(tmp_path, monkeypatch):
    from stalwart.services.geo import manager

    monkeypatch.setattr(manager, "HELPER_GRACE", 0.0)
    import socket

    with socket.socket() as lsock:  # accepts, never answers
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        ref = GeoRefresher(str(tmp_path))
        ref.configure(cfg_of({"@type": "Resource", "asnUrls": [f"http://127.0.0.1:{lsock.getsockname()[1]}/x.csv"],
                              "timeout": 5000}))
        ref.tick()
        ref.proc_deadline = time.monotonic() + 0.5
        t0 = time.monotonic()
        while ref.proc is not None and time.monotonic() - t0 < 10:
            time.sleep(0.05)
            ref.tick()
        assert ref.proc is None and time.monotonic() - t0 < 5
        assert ref.state["asn"].failures == 1
        ref.close()


def test_asn_table_is_small_for_csv_text(tmp_path):
    """A sanity bound: the table file is no bigger than the CSV it came from plus the fixed index."""
    big = "".join(f"{i >> 8 & 255}.{i & 255}.0.0,{i >> 8 & 255}.{i & 255}.255.255,{64500 + i % 100},ORG-{i % 100}\n"
                  for i in range(256, 20000))
    (tmp_path / "big.csv").write_text(big)
    cfg = cfg_of({"@type": "Resource", "asnUrls": [f"file://{tmp_path}/big.csv"]})
    assert build(cfg, str(tmp_path), "asn", Events())[0]
    assert os.path.getsize(table_path(str(tmp_path), "asn")) < len(big) + 2 * 4 * 65537 + 4096
    assert ASN_V4  # the shared fixture module is importable from here


def test_event_keys_and_management_answer(server, tmp_path):
    import asyncio

    cfg = resource(server)
    for kind in ("asn", "country"):
        build(cfg, str(tmp_path), kind, Events())
    geo = GeoService(cfg, str(tmp_path))
    assert geo.lookup(p("1.0.0.1")).event_keys() == {"Asn": 13335, "Country": "AU"}
    assert GeoInfo(None, None, "US").event_keys() == {"Country": "US"}
    assert asyncio.run(geo.answer(" 2001:200::1 ")) == {
        "ok": True, "address": "2001:200::1", "found": True, "asn": 2500, "asnName": "WIDE Project", "country": "JP"}
    assert asyncio.run(geo.answer("10.0.0.1")) == {"ok": True, "address": "10.0.0.1", "found": False}
    assert asyncio.run(geo.answer("x"))["ok"] is False
    off = GeoService(cfg_of({"@type": "Disabled"}), str(tmp_path))
    assert "disabled" in asyncio.run(off.answer("1.0.0.1"))["error"]


@pytest.mark.slow
def test_readers_in_other_processes_see_whole_tables_during_rebuilds(tmp_path):
    """Two forked readers look up continuously while the table is rebuilt 30 times, alternating
    between two data sets: every answer is one whole data set's, never a torn or missing one."""
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("".join(f"{i}.0.0.0,{i}.255.255.255,{1000 + i},A\n" for i in range(1, 100)))
    b.write_text("".join(f"{i}.0.0.0,{i}.255.255.255,{2000 + i},B\n" for i in range(1, 100)))
    cfg_a = cfg_of({"@type": "Resource", "asnUrls": [f"file://{a}"]})
    cfg_b = cfg_of({"@type": "Resource", "asnUrls": [f"file://{b}"]})
    build(cfg_a, str(tmp_path), "asn", Events())
    readers = []
    for _ in range(2):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # reader: bounded in time, reports (lookups, bad answers, tables seen)
            os.close(r)
            code = 0
            try:
                geo = GeoService(cfg_a, str(tmp_path))
                rng = random.Random(os.getpid())
                seen, bad, n = set(), 0, 0
                deadline = time.monotonic() + 4.0
                while time.monotonic() < deadline:
                    i = rng.randint(1, 99)
                    info = geo.lookup(bytes([i, 1, 2, 3]))
                    n += 1
                    if info is None or info.asn not in (1000 + i, 2000 + i) or info.asn_name != (
                            "A" if info.asn < 2000 else "B"):
                        bad += 1
                    else:
                        seen.add(info.asn_name)
                os.write(w, f"{n} {bad} {''.join(sorted(seen))}".encode())
            except BaseException:  # noqa: BLE001 - the child must never return into pytest
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        readers.append((pid, r))
    deadline = time.monotonic() + 3.0
    builds = 0
    while time.monotonic() < deadline and builds < 30:
        build(cfg_b if builds % 2 == 0 else cfg_a, str(tmp_path), "asn", Events())
        builds += 1
        time.sleep(0.08)
    for pid, r in readers:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        n, bad, seen = os.read(r, 100).decode().split()
        os.close(r)
        assert int(n) > 1000 and int(bad) == 0
        assert seen == "AB"  # both data sets were served: the readers followed the rebuilds
    assert builds >= 10
