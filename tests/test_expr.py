"""Configuration expressions (stalwart/config/expr.py): grammar, semantics, load errors, fuzzing."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.config.expr import (
    HTTP_VARIABLES,
    MAX_DEPTH,
    MAX_LENGTH,
    EvalError,
    Lookup,
    compile_conditional,
    compile_expression,
)
from stalwart.errors import ConfigError

PATH = "$.Http.allowedEndpoints.match[0].if"
ENV = {"listener": "http", "remote_ip": "192.168.1.20", "remote_port": 40000, "local_ip": "10.0.0.1",
       "local_port": 8080, "protocol": "http", "is_tls": False, "url": "/api/status?x=1", "path": "/api/status",
       "url_path": "/api/status", "method": "GET", "headers": Lookup({"User-Agent": "curl/8", "Host": "x"})}


def ev(text, env=ENV):
    return compile_expression(text, HTTP_VARIABLES, PATH).evaluate(env)


def load_error(text):
    with pytest.raises(ConfigError) as info:
        compile_expression(text, HTTP_VARIABLES, PATH)
    assert info.value.path == PATH
    return info.value.message


def test_reference_examples():
    first = "starts_with(url_path, '/api') && remote_ip != '127.0.0.1'"
    assert ev(first) is True
    assert ev(first, {**ENV, "remote_ip": "127.0.0.1"}) is False
    assert ev(first, {**ENV, "url_path": "/jmap"}) is False
    second = "starts_with(remote_ip, '192.168.1.') || contains(['robots.txt', '.well-known'], split(url_path, '/')[1])"
    assert ev(second) is True
    outside = {**ENV, "remote_ip": "203.0.113.1"}
    assert ev(second, outside) is False
    assert ev(second, {**outside, "url_path": "/robots.txt"}) is True
    assert ev(second, {**outside, "url_path": "/.well-known/jmap"}) is True
    assert ev(second, {**outside, "url_path": "/"}) is False  # split gives ['', '']


@pytest.mark.parametrize("text, value", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("10 - 4 - 3", 3), ("24 / 4 / 2", 3), ("7 / 2", 3), ("-7 / 2", -3),
    ("7.0 / 2", 3.5), ("-2 * 3", -6), ("- (2 + 3)", -5), ("!true || true", True), ("!(true || true)", False),
    ("true || false && false", True), ("(true || false) && false", False), ("1 + 1 == 2", True),
    ("1 < 2 == 2 < 3", True), ("1 == 1.0", True), ("'1' == 1", False), ("2 >= 2 && 'a' < 'b'", True),
    ("'ab' + 'cd'", "abcd"), ("[1, 'a'][1]", "a"), ("[1, 2][5]", ""), ("'abc'[1]", "b"),
    ("split('a/b/c', '/')[2]", "c"), ("!''", True), ("![]", True), ("!0", True), ("!'x'", False),
    ("[1, [2, 3]] == [1, [2, 3]]", True), ('"it\'s" == \'it\\\'s\'', True), ("0.5 + 0.25", 0.75),
])
def test_precedence_and_values(text, value):
    assert ev(text) == value
    assert type(ev(text)) is type(value)


def test_short_circuit_skips_the_failing_side():
    assert ev("false && 1 / 0 == 1") is False
    assert ev("true || 1 / 0 == 1") is True
    with pytest.raises(EvalError, match="division by zero"):
        ev("true && 1 / 0 == 1")
    with pytest.raises(EvalError):
        ev("false || 'a' < 1")


@pytest.mark.parametrize("text, value", [
    ("starts_with(url, '/api?')", False), ("starts_with(url, '/api/')", True),
    ("ends_with(url_path, 'status')", True), ("ends_with('abc', 'b')", False),
    ("contains(url, 'x=1')", True), ("contains(['a', 1], 1)", True), ("contains(['a', 1], '1')", False),
    ("contains(headers, 'user-agent')", True), ("contains(headers, 'cookie')", False),
    ("split('a,b', ',')", ["a", "b"]), ("len('abc')", 3), ("count(['a', 'b'])", 2), ("len(headers)", 2),
    ("lower('AbC')", "abc"), ("to_lowercase('AbC')", "abc"), ("upper('AbC')", "ABC"),
    ("to_uppercase('aBc')", "ABC"), ("trim('  a b \t')", "a b"), ("is_empty('')", True),
    ("is_empty([])", True), ("is_empty([''])", False), ("is_empty(headers['cookie'])", True),
    ("headers['USER-AGENT']", "curl/8"), ("is_ip_in_cidr(remote_ip, '192.168.0.0/16')", True),
    ("is_ip_in_cidr(remote_ip, '10.0.0.0/8')", False), ("is_ip_in_cidr('::ffff:10.1.2.3', '10.0.0.0/8')", True),
    ("is_ip_in_cidr('2001:db8::1', '2001:db8::/32')", True), ("is_ip_in_cidr('2001:db8::1', '0.0.0.0/0')", False),
    ("is_ip_in_cidr('not an ip', '10.0.0.0/8')", False), ("is_ip_in_cidr(local_ip, '10.0.0.' + '0/24')", True),
    ("is_ipv4(remote_ip)", True), ("is_ipv6(remote_ip)", False), ("is_ipv6('[::1]')", True),
    ("matches('^/api/(status|metrics)$', url_path)", True), ("matches('^/API', url_path)", False),
    ("matches('(?i)^/API', url_path)", True), ("remote_port > 1024 && local_port == 8080", True),
    ("is_tls || method == 'GET'", True), ("listener + ':' + protocol", "http:http"),
])
def test_functions_and_variables(text, value):
    assert ev(text) == value


@pytest.mark.parametrize("text", [
    "starts_with(remote_port, '4')", "len(5)", "split('a', '')", "lower(1)", "'a' - 'b'", "-'a'", "1 < 'a'",
    "headers[0]", "[1][true]", "remote_port[0]", "is_ip_in_cidr(remote_ip, 'nonsense' + '')", "contains(1, 1)",
    "is_empty(1)", "matches('a', 1)",
])
def test_type_mismatches_are_eval_errors(text):
    with pytest.raises(EvalError):
        ev(text)


@pytest.mark.parametrize("text, col, needle", [
    ("remote_ip == ", 14, "expected a value"), ("nope == 1", 1, "unknown variable 'nope'"),
    ("url_path && frob(1)", 13, "unknown function 'frob'"), ("'abc", 1, "unterminated string"),
    ("(1 + 2", 7, "expected ')'"), ("starts_with(url)", 1, "takes 2 arguments, got 1"), ("1 2", 3, "unexpected '2'"),
    ("url # x", 5, "unexpected character '#'"), ("matches(url, 'x')", 1, "literal pattern"),
    ("matches('(', url)", 1, "invalid regular expression"), ("is_ip_in_cidr(url, '10.0.0.0/33')", 1, "not a network"),
    ("'a\\q'", 3, "unknown escape"), ("[1, 2", 6, "expected ',' or ']'"), ("headers[", 9, "expected a value"),
])
def test_load_errors_name_the_column(text, col, needle):
    msg = load_error(text)
    assert msg.startswith(f"column {col}: ") and needle in msg, msg


def test_length_and_depth_bounds():
    assert "longer than" in load_error("1" * (MAX_LENGTH + 1))
    assert "nested deeper" in load_error("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1))
    assert "nested deeper" in load_error("!" * (MAX_DEPTH + 1) + "true")
    assert "nested deeper" in load_error(" + ".join(["1"] * (MAX_DEPTH + 2)))  # depth of the tree, not the parser
    assert ev(" + ".join(["1"] * (MAX_DEPTH - 1))) == MAX_DEPTH - 1
    assert load_error("  ") == "empty expression"


def test_conditional_first_true_branch_wins_and_errors_do_not_match():
    cond = compile_conditional({"match": [{"if": "lower(remote_port) == 'x'", "then": "500"},
                                          {"if": "starts_with(url_path, '/api')", "then": "404"},
                                          {"if": "true", "then": "403"}], "else": "200"},
                               HTTP_VARIABLES, "$.Http.allowedEndpoints")
    seen = []
    assert cond.evaluate(ENV, lambda path, exc: seen.append((path, str(exc)))) == 404
    assert seen == [("$.Http.allowedEndpoints.match[0]", "lower() expects a string, not integer")]
    assert cond.evaluate({**ENV, "url_path": "/x"}) == 403
    assert cond.constant is None
    bad_else = compile_conditional({"else": "1 / 0"}, HTTP_VARIABLES, "$.X")
    seen.clear()
    assert bad_else.evaluate(ENV, lambda path, exc: seen.append(path)) is None and seen == ["$.X.else"]
    assert compile_conditional({"else": "403"}, HTTP_VARIABLES, "$.X").constant == 403
    assert compile_conditional({"else": 403}, HTTP_VARIABLES, "$.X").constant == 403


@pytest.mark.parametrize("raw, path", [
    ({"match": {}, "else": "1"}, "$.X.match"), ({"match": [{"if": "true"}]}, "$.X.match[0]"),
    ({"match": [{"if": "true", "then": "1", "x": 1}]}, "$.X.match[0]"), ({"otherwise": "1"}, "$.X.otherwise"),
    ({"match": [{"if": "true", "then": "nope"}]}, "$.X.match[0].then"), ({"else": None}, "$.X.else"),
])
def test_conditional_shape_errors(raw, path):
    with pytest.raises(ConfigError) as info:
        compile_conditional(raw, HTTP_VARIABLES, "$.X")
    assert info.value.path == path


_ALPHABET = st.sampled_from(list("abcdefghijklmnopqrstuvwxyz_0123456789 .,'\"\\()[]!&|=<>+-*/#@") +
                            ["url_path", "remote_ip", "headers", "split(", "contains(", "matches(", "is_ip_in_cidr(",
                             "&&", "||", "==", "true", "'/'", "1.5", "[", "]"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(_ALPHABET, max_size=60).map("".join)))
def test_random_text_only_ever_raises_config_error(text):
    try:
        compile_expression(text, HTTP_VARIABLES, PATH)
    except ConfigError as exc:
        assert exc.path == PATH


_VALUES = st.recursive(st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.booleans()),
                       lambda inner: st.lists(inner, max_size=4), max_leaves=10)
_PROGRAMS = [
    "starts_with(url_path, '/api') && remote_ip != '127.0.0.1'",
    "starts_with(remote_ip, '192.168.1.') || contains(['robots.txt', '.well-known'], split(url_path, '/')[1])",
    "remote_port * 2 + local_port / 3 - -remote_port < 5", "len(url) > 3 || is_empty(path)",
    "matches('^/a.*z$', lower(trim(url))) && is_ip_in_cidr(remote_ip, '10.0.0.0/8')",
    "headers['x'] + url == method", "url[remote_port] == path[0]", "contains(url_path, method) == is_tls",
    "is_ipv4(local_ip) || is_ip_in_cidr(local_ip, url)", "upper(listener) >= to_lowercase(protocol)",
]


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({name: _VALUES for name in sorted(HTTP_VARIABLES - {"headers"})}),
       st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3))
def test_random_variable_values_never_raise_beyond_eval_error(env, headers):
    env["headers"] = Lookup(headers)
    compiled = [compile_expression(text, HTTP_VARIABLES, PATH) for text in _PROGRAMS]
    for expr in compiled:
        try:
            expr.evaluate(env)
        except EvalError:
            pass
    cond = compile_conditional({"match": [{"if": t, "then": "403"} for t in _PROGRAMS], "else": "200"},
                               HTTP_VARIABLES, "$.X")
    assert cond.evaluate(env, lambda _p, _e: None) in (403, 200)


@pytest.mark.parametrize("value, status", [
    ("200", 200), (" 404 ", 404), (451, 451), ("599", 599),
    ("²²²", None), ("'²²²'", None), ("٤٠٤", None),  # non-ASCII digits: isdigit() says yes, int() may not
    ("101", None), ("204", None), ("304", None), ("307", None), (True, None), ("20", None), (600, None),
])
def test_http_status_of_an_access_rule(value, status):
    from stalwart.config.loader import http_status

    assert http_status(value) == status


@pytest.mark.parametrize("result", ["'²²²'", "'204'", "101"])
def test_a_literal_that_is_no_access_status_is_a_load_error(result):
    """Found by review: '²²²' escaped as ValueError (a SIGHUP then took the master down); 1xx/204/304
    cannot carry the problem body, so the client got an empty reply."""
    from stalwart.config import parse_bytes
    from stalwart.errors import ConfigError

    doc = {"Http": {"allowedEndpoints": {"match": [{"if": "method == 'POST'", "then": result}], "else": "200"}}}
    with pytest.raises(ConfigError, match=r"allowedEndpoints\.match\[0\]\.then"):
        parse_bytes(json.dumps(doc).encode())
