"""CSV parsing of ip-location-db tables (spec/services.md §3 "Resource: CSV format" and "We do
better: CSV, Numeric files, Overlaps"): the reference examples, every quirk the spec fixes, and
hypothesis properties for the row reader and the overlap resolution."""
import csv
import io
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.services.geo.tables import (
    ASN,
    COUNTRY,
    ParsedTable,
    flatten,
    parse_csv,
    split_row,
)


def ip(text):
    return int(ipaddress.ip_address(text))


def parse(kind, text, url="http://x/table.csv"):
    t = ParsedTable(kind)
    return t, parse_csv(text, t, url)


def test_reference_examples():
    t, s = parse(ASN, '1.0.0.0,1.0.0.255,13335,"Cloudflare, Inc."\n')
    assert (s.rows, s.invalid) == (1, 0)
    assert t.v4 == [(ip("1.0.0.0"), ip("1.0.0.255"), 0)] and t.values == [(13335, "Cloudflare, Inc.")]
    t, s = parse(COUNTRY, "2001:200::,2001:200:ffff:ffff:ffff:ffff:ffff:ffff,JP\n")
    assert t.v6 == [(ip("2001:200::"), ip("2001:200:ffff:ffff:ffff:ffff:ffff:ffff"), 0)]
    assert t.values == [(0, "JP")]


def test_quirks_the_reference_gets_wrong_are_fixed():
    text = (
        "start,end,asn,name\n"  # a header: skipped, not counted
        "1.0.0.0,1.0.0.255,1,One,extra,columns\n"  # 5th+ column ignored, never aborts
        '2.0.0.0,2.0.0.255,2,"unbalanced\n'  # only this row is invalid
        "3.0.0.0,3.0.0.255,3,Three\r\n"  # CRLF trimmed
        "4.0.0.0,3.0.0.0,4,Backwards\n"  # start > end
        "5.0.0.0,::1,5,Mixed families\n"
        "6.0.0.0,6.0.0.255,AS6,Not a number\n"
        "7.0.0.0,7.0.0.255,99999999999,Too big\n"
        '8.0.0.0,8.0.0.255,8,"Quoted ""name"", with comma"\n'
        "9.0.0.0,9.0.0.255,9"  # last line without newline, no name
    )
    t, s = parse(ASN, text)
    assert s.header_skipped
    assert [v for v in t.values] == [(1, "One"), (3, "Three"), (8, 'Quoted "name", with comma'), (9, "")]
    assert (s.rows, s.invalid) == (4, 5)
    assert s.first_invalid.startswith("2.0.0.0")


def test_as_names_interned_first_wins():
    t, _ = parse(ASN, "1.0.0.0,1.0.0.255,5,First\n2.0.0.0,2.0.0.255,5,Second\n")
    assert t.values == [(5, "First")] and [r[2] for r in t.v4] == [0, 0]


def test_country_rules():
    text = ("1.0.0.0,1.0.0.255,au\n"  # upper-cased
            "2.0.0.0,2.0.0.255,XX,de\n"  # a non-empty col 3 overrides col 2
            "3.0.0.0,3.0.0.255,GBR\n"  # 3-letter codes allowed
            "4.0.0.0,4.0.0.255,X\n"  # too short
            "5.0.0.0,5.0.0.255,ABCD\n"  # too long
            "6.0.0.0,6.0.0.255,FR,\n")  # empty override keeps col 2
    t, s = parse(COUNTRY, text)
    assert [v[1] for v in t.values] == ["AU", "DE", "GBR", "FR"]
    assert (s.rows, s.invalid) == (4, 2)


def test_numeric_files():
    t, s = parse(ASN, "16777216,16777471,13335,Cloudflare\n99999999999,99999999999,1,Too big\n",
                 "https://x/asn-ipv4-num.csv")
    assert t.v4 == [(16777216, 16777471, 0)] and s.invalid == 1
    t, s = parse(COUNTRY, f"{ip('2001:200::')},{ip('2001:200::ffff')},JP\n", "https://x/geo-ipv6-num.csv.gz")
    assert t.v6 == [(ip("2001:200::"), ip("2001:200::ffff"), 0)] and s.invalid == 0
    # A numeric file without the -num suffix is a file of invalid rows, counted, never silent.
    t, s = parse(ASN, "16777216,16777471,13335\n16777472,16777727,13335\n", "https://x/asn-ipv4.csv")
    assert s.header_skipped and s.invalid == 1 and not len(t)


def test_blank_lines_and_empty_file():
    t, s = parse(ASN, "\n\n1.0.0.0,1.0.0.255,1\n\n")
    assert s.rows == 1 and s.invalid == 0
    t, s = parse(ASN, "")
    assert (s.rows, s.invalid, len(t)) == (0, 0, 0)


def test_flatten_narrowest_wins_and_joins():
    ranges = [(0, 100, 0), (10, 20, 1), (15, 15, 2), (50, 200, 3)]
    assert flatten(ranges) == [(0, 9, 0), (10, 14, 1), (15, 15, 2), (16, 20, 1), (21, 100, 0), (101, 200, 3)]
    assert flatten([(0, 5, 7), (6, 9, 7), (11, 12, 7)]) == [(0, 9, 7), (11, 12, 7)]
    assert flatten([]) == []


field = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(field, min_size=1, max_size=6))
def test_split_row_reads_what_an_rfc4180_writer_wrote(cols):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(cols)
    assert split_row(buf.getvalue()) == [c.strip() for c in cols]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.sampled_from([ASN, COUNTRY]), st.booleans())
def test_parser_never_raises_and_counts_every_line(text, kind, numeric):
    t, s = parse(kind, text, "http://x/f-num.csv" if numeric else "http://x/f.csv")
    lines = [ln for ln in text.split("\n") if ln.strip()]
    assert s.rows + s.invalid + int(s.header_skipped) == len(lines)
    assert s.rows == len(t)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 60)), max_size=25))
def test_flatten_matches_brute_force(pairs):
    ranges = [(s, s + w, i) for i, (s, w) in enumerate(pairs)]
    flat = flatten(ranges)
    for a, b in zip(flat, flat[1:]):
        assert a[1] < b[0]
    covered = {}
    for s, e, v in flat:
        for x in range(s, e + 1):
            covered[x] = v
    for x in range(362):
        best = None
        for s, e, v in ranges:
            if s <= x <= e and (best is None or e - s < best[0]):
                best = (e - s, v)
        assert covered.get(x) == (best[1] if best else None), x
