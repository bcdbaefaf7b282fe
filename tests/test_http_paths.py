"""Banned-path globs and path normalisation (security.md §6)."""
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.config.model import DEFAULT_SCAN_BAN_PATHS
from stalwart.protocols.http.paths import BannedPaths, _Glob, decode_path, request_path


def oracle(pattern: str, s: str) -> bool:
    """The reference's semantics through a regex (fine for the short inputs hypothesis makes)."""
    out, i, p = [], 0, pattern.lower()
    while i < len(p):
        c = p[i]
        if c == "*":
            out.append(".*")
            while i + 1 < len(p) and p[i + 1] == "*":
                i += 1
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < len(p):
            i += 1
            out.append(re.escape(p[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.fullmatch("".join(out), s.lower(), re.DOTALL) is not None


def normalised(target: str) -> str:
    return decode_path(request_path(target)).lower()


def test_spec_examples_with_the_defaults():
    banned = BannedPaths(DEFAULT_SCAN_BAN_PATHS)
    cases = {"/xmlrpc.php": "/xmlrpc.php", "/index.php?x=1": "/index.php",
             "/%2e%2e/etc/passwd": "/../etc/passwd", "//WP-Admin//setup.php": "/wp-admin/setup.php",
             "/jmap/session": "/jmap/session"}
    for target, expect in cases.items():
        assert normalised(target) == expect
    for target in list(cases)[:4]:
        raw = request_path(target)
        assert banned.match(decode_path(raw), raw) is not None, target
    assert banned.match("/jmap/session", "/jmap/session") is None


def test_normalisation_steps():
    assert request_path("http://example.org/a/b?q#f") == "/a/b"
    assert request_path("https://example.org") == "/"
    assert decode_path("/a%2Fb") == "/a/b"
    assert decode_path("/bad%zz%4") == "/bad%zz%4"  # malformed escapes stay as written
    assert decode_path("/%ff") == "/\ufffd"
    assert decode_path("/a\\..\\b") == "/a/../b"
    assert decode_path("///a////b/./c") == "/a/b/./c"


def test_raw_path_is_tested_too():
    banned = BannedPaths(["*%2e%2e*"])
    raw = "/%2E%2E/x"
    assert banned.match(decode_path(raw), raw) == "*%2e%2e*"


def test_glob_items():
    assert _Glob("a?c").matches("abc") and not _Glob("a?c").matches("ac")
    assert _Glob("\\*x").matches("*x") and not _Glob("\\*x").matches("ax")
    assert _Glob("***").matches("") and _Glob("*").matches("a/b")
    assert _Glob("abc").matches("abc") and not _Glob("abc").matches("abcd")
    assert _Glob("*a*a*a*a*a*b").matches("a" * 5 + "b")


def test_many_stars_stay_linear():
    glob = _Glob("*a*a*a*a*a*a*a*a*a*a*a*a*b")
    assert not glob.matches("a" * 5000)  # a backtracking matcher would not finish


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab*?\\/", max_size=8), st.text(alphabet="abAB/?*\\", max_size=12))
def test_glob_matches_the_reference_semantics(pattern, s):
    assert _Glob(pattern).matches(s.lower()) == oracle(pattern, s)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="ab*?/.", max_size=6), min_size=1, max_size=5), st.text(alphabet="abAB/.?*", max_size=12))
def test_glob_set_matches_any_of_its_globs(patterns, s):
    banned = BannedPaths(patterns)
    expect = next((p for p in patterns if p and oracle(p, s)), None)
    got = banned.match(s, s)
    assert (got is None) == (expect is None)
    if got is not None:
        assert oracle(got, s)
