"""Configuration expressions: a small, safe language compiled once at load into a closure tree.

The reference (Stalwart) writes per-request decisions such as ``Http.allowedEndpoints`` as::

    {"match": [{"if": "starts_with(url_path, '/api') && remote_ip != '127.0.0.1'", "then": "404"}],
     "else": "200"}

The first ``if`` that is true gives its ``then``; when none is, ``else``. Each of those strings is
an expression in the grammar below. User text is never handed to Python's ``eval`` or ``ast``: a
tokenizer and a precedence-climbing (Pratt) parser build closures, each a few lines of Python.

Grammar (lowest precedence first; binary operators are left-associative)::

    expr     := or
    or       := and ( "||" and )*               short-circuit; the result is a boolean
    and      := eq ( "&&" eq )*                 short-circuit; the result is a boolean
    eq       := cmp ( ("==" | "!=") cmp )*
    cmp      := sum ( ("<" | "<=" | ">" | ">=") sum )*
    sum      := product ( ("+" | "-") product )*
    product  := unary ( ("*" | "/") unary )*
    unary    := ("!" | "-") unary | postfix
    postfix  := primary ( "[" expr "]" )*
    primary  := INT | FLOAT | STRING | "true" | "false" | "[" [expr ("," expr)*] "]"
              | NAME "(" [expr ("," expr)*] ")"        a function
              | NAME                                   a variable of the context
              | "(" expr ")"

``STRING`` is single- or double-quoted with ``\\`` escapes (``\\n``, ``\\t``, ``\\\\``, ``\\'``, ``\\"``).
Values are strings, integers, floats, booleans, arrays and, for ``headers``, a case-insensitive
lookup. Semantics:

- Truth: ``false``, ``0``, ``""``, ``[]`` and an empty lookup are false; everything else is true.
- ``==``/``!=`` compare numbers numerically and other values only with values of the same type
  (``'1' == 1`` is false, never an error). IP-valued variables are strings, so ``remote_ip ==
  '192.0.2.1'`` compares the text form.
- ``< <= > >=`` compare two numbers or two strings; ``+`` adds numbers or joins two strings;
  ``- * /`` are numeric, ``/`` of two integers truncates toward zero. Anything else is a
  run-time error.
- ``x[n]`` is the n-th element of an array or character of a string (0-based; out of range gives
  ``""``); ``headers['name']`` is the last value of that header (``""`` when absent).

Functions (``count`` = ``len``, ``to_lowercase`` = ``lower``, ``to_uppercase`` = ``upper``):

===============================  ==================================================================
``starts_with(s, prefix)``       ``ends_with(s, suffix)``
``contains(s, part)``            substring; ``contains(array, value)`` membership;
                                 ``contains(headers, 'name')`` header presence
``split(s, separator)``          array of strings (the separator must not be empty)
``len(x)``                       length of a string or array
``lower(s)`` ``upper(s)``        case mapping
``trim(s)``                      without surrounding white space
``is_empty(x)``                  string, array or lookup without content
``is_ip_in_cidr(ip, 'net')``     the address lies in the network (``10.0.0.0/8``, ``2001:db8::/32``);
                                 IPv4-mapped IPv6 addresses count as IPv4; not an address gives false
``is_ipv4(s)`` ``is_ipv6(s)``    the string is an address of that family
``matches('regex', s)``          Python ``re`` search; the pattern must be a literal, compiled at load
===============================  ==================================================================

Errors. Anything wrong with the text (syntax, an unknown variable or function, a wrong argument
count, a bad regular expression or network literal, more than :data:`MAX_LENGTH` characters or
:data:`MAX_DEPTH` levels of nesting) is a :class:`ConfigError` at load, with the JSON path of the
field and the column. At run time a type mismatch raises :class:`EvalError`; :class:`Conditional`
turns it into "this branch does not match" and reports it through a callback, so a request is
never failed by an expression.

The module knows nothing about HTTP: a context is a set of variable names
(:data:`HTTP_VARIABLES` for ``Http.*`` expressions) and, at run time, a mapping of those names to
values.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ..errors import ConfigError, StalwartError

MAX_LENGTH = 4096  # characters of one expression
MAX_DEPTH = 48  # nesting of the parse tree; also bounds the evaluator's recursion

#: ``Http.*`` expressions (the reference's ``HttpVariable``)
HTTP_VARIABLES = frozenset({"listener", "remote_ip", "remote_port", "local_ip", "local_port", "protocol",
                            "is_tls", "url", "path", "url_path", "headers", "method"})


class EvalError(StalwartError):
    """An expression met values it cannot combine (a run-time type mismatch)."""


class Lookup:
    """A read-only, case-insensitive string map as an expression value (``headers``)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str]):
        self._items = {k.lower(): v for k, v in items.items()}

    def get(self, key: str) -> str:
        return self._items.get(key.lower(), "")

    def __contains__(self, key: str) -> bool:
        return key.lower() in self._items

    def __len__(self) -> int:
        return len(self._items)


Env = Mapping[str, Any]
Fn = Callable[[Env], Any]
_NOT_CONSTANT = object()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def truthy(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if _is_number(v):
        return v != 0
    if isinstance(v, (str, list, Lookup)):
        return len(v) > 0
    return v is not None


def _type(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}.get(type(v), "lookup")


def _equal(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return a == b
    if type(a) is not type(b) or isinstance(a, Lookup):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _order(op: str, a: Any, b: Any) -> bool:
    if not ((_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))):
        raise EvalError(f"cannot compare {_type(a)} {op} {_type(b)}")
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


def _arith(op: str, a: Any, b: Any) -> Any:
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        return a + b
    if not (_is_number(a) and _is_number(b)):
        raise EvalError(f"cannot compute {_type(a)} {op} {_type(b)}")
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise EvalError("division by zero")
    if isinstance(a, int) and isinstance(b, int):
        q = abs(a) // abs(b)
        return q if (a < 0) == (b < 0) else -q
    return a / b


def _index(v: Any, i: Any) -> Any:
    if isinstance(v, Lookup):
        if not isinstance(i, str):
            raise EvalError(f"a lookup is indexed by a string, not {_type(i)}")
        return v.get(i)
    if isinstance(v, (list, str)):
        if not isinstance(i, int) or isinstance(i, bool):
            raise EvalError(f"{_type(v)} index must be an integer, not {_type(i)}")
        return v[i] if 0 <= i < len(v) else ""
    raise EvalError(f"cannot index {_type(v)}")


def _str(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise EvalError(f"{name}() expects a string, not {_type(v)}")
    return v


def _contains(h: Any, n: Any) -> bool:
    if isinstance(h, str):
        return _str("contains", n) in h
    if isinstance(h, list):
        return any(_equal(x, n) for x in h)
    if isinstance(h, Lookup):
        return _str("contains", n) in h
    raise EvalError(f"contains() expects a string, array or lookup, not {_type(h)}")


def _split(s: Any, sep: Any) -> list[str]:
    sep = _str("split", sep)
    if not sep:
        raise EvalError("split() separator is empty")
    return _str("split", s).split(sep)


def _len(v: Any) -> int:
    if isinstance(v, (str, list, Lookup)):
        return len(v)
    raise EvalError(f"len() expects a string or array, not {_type(v)}")


def _is_empty(v: Any) -> bool:
    if isinstance(v, (str, list, Lookup)):
        return len(v) == 0
    raise EvalError(f"is_empty() expects a string or array, not {_type(v)}")


def _ip(v: Any, fn: str = "is_ip_in_cidr") -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(_str(fn, v).strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _network(v: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(_str("is_ip_in_cidr", v).strip(), strict=False)
    except ValueError:
        raise EvalError(f"{v!r} is not a network") from None


def _in_network(ip: Any, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    addr = _ip(ip)
    return addr is not None and addr.version == net.version and addr in net


def _family(version: int) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        addr = _ip(v, f"is_ipv{version}")
        return addr is not None and addr.version == version
    return check


#: name -> (argument count, implementation taking evaluated arguments)
_FUNCTIONS: dict[str, tuple[int, Callable[..., Any]]] = {
    "starts_with": (2, lambda s, p: _str("starts_with", s).startswith(_str("starts_with", p))),
    "ends_with": (2, lambda s, p: _str("ends_with", s).endswith(_str("ends_with", p))),
    "contains": (2, _contains),
    "split": (2, _split),
    "len": (1, _len),
    "count": (1, _len),
    "lower": (1, lambda s: _str("lower", s).lower()),
    "to_lowercase": (1, lambda s: _str("lower", s).lower()),
    "upper": (1, lambda s: _str("upper", s).upper()),
    "to_uppercase": (1, lambda s: _str("upper", s).upper()),
    "trim": (1, lambda s: _str("trim", s).strip()),
    "is_empty": (1, _is_empty),
    "is_ip_in_cidr": (2, lambda ip, net: _in_network(ip, _network(net))),
    "is_ipv4": (1, _family(4)),
    "is_ipv6": (1, _family(6)),
    "matches": (2, None),  # compiled specially: the pattern is a literal
}


class _Node:
    """A compiled sub-expression: its closure, tree depth and value when it is a literal."""

    __slots__ = ("depth", "fn", "literal")

    def __init__(self, fn: Fn, depth: int, literal: Any = _NOT_CONSTANT):
        self.fn, self.depth, self.literal = fn, depth, literal


def _const(value: Any) -> _Node:
    return _Node(lambda _env: value, 1, value)


# -- tokenizer -------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>[0-9]+(?:\.[0-9]+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[-+*/<>!()\[\],])
  | (?P<quote>['"])
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}


class _Token:
    __slots__ = ("col", "kind", "value")

    def __init__(self, kind: str, value: Any, col: int):
        self.kind, self.value, self.col = kind, value, col


#: binding powers of the infix operators; the unary ones bind tighter, indexing tighter still
_INFIX = {"||": 1, "&&": 2, "==": 3, "!=": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "+": 5, "-": 5, "*": 6, "/": 6}
_UNARY = 7


class _Parser:

    def __init__(self, text: str, variables: Collection[str], path: str):
        self.text, self.variables, self.path = text, variables, path
        self.depth = 0
        self.tokens = self._tokenize()
        self.pos = 0

    def error(self, col: int, message: str) -> ConfigError:
        return ConfigError(self.path, f"column {col}: {message}")

    def _tokenize(self) -> list[_Token]:
        text, out, i = self.text, [], 0
        while i < len(text):
            m = _TOKEN.match(text, i)
            if m is None:
                raise self.error(i + 1, f"unexpected character {text[i]!r}")
            kind = m.lastgroup
            if kind == "quote":
                value, i = self._string(i)
                out.append(_Token("str", value, m.start() + 1))
                continue
            if kind == "num":
                raw = m.group()
                try:
                    value = float(raw) if "." in raw else int(raw)
                except ValueError:
                    raise self.error(i + 1, "number out of range") from None
                out.append(_Token("num", value, i + 1))
            elif kind == "name":
                out.append(_Token("name", m.group(), i + 1))
            elif kind == "op":
                out.append(_Token("op", m.group(), i + 1))
            i = m.end()
        out.append(_Token("end", None, len(text) + 1))
        return out

    def _string(self, start: int) -> tuple[str, int]:
        text, quote = self.text, self.text[start]
        chars, i = [], start + 1
        while i < len(text):
            c = text[i]
            if c == quote:
                return "".join(chars), i + 1
            if c == "\\":
                if i + 1 >= len(text):
                    break
                esc = text[i + 1]
                if esc not in _ESCAPES:
                    raise self.error(i + 1, f"unknown escape \\{esc}")
                chars.append(_ESCAPES[esc])
                i += 2
                continue
            chars.append(c)
            i += 1
        raise self.error(start + 1, "unterminated string")

    # -- parser ----------------------------------------------------------------------------
    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expect(self, op: str) -> _Token:
        tok = self.take()
        if tok.kind != "op" or tok.value != op:
            raise self.error(tok.col, f"expected {op!r}, found {self._describe(tok)}")
        return tok

    @staticmethod
    def _describe(tok: _Token) -> str:
        return "the end" if tok.kind == "end" else repr(str(tok.value))

    def _node(self, fn: Fn, children: list[_Node], col: int) -> _Node:
        depth = 1 + max((c.depth for c in children), default=0)
        if depth > MAX_DEPTH:
            raise self.error(col, f"expression nested deeper than {MAX_DEPTH} levels")
        return _Node(fn, depth)

    def parse(self) -> _Node:
        node = self.expr(0)
        tok = self.peek()
        if tok.kind != "end":
            raise self.error(tok.col, f"unexpected {self._describe(tok)}")
        return node

    def expr(self, min_bp: int) -> _Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(self.peek().col, f"expression nested deeper than {MAX_DEPTH} levels")
        left = self.prefix()
        while True:
            tok = self.peek()
            if tok.kind != "op":
                break
            if tok.value == "[":
                self.take()
                index = self.expr(0)
                self.expect("]")
                left = self._node(_binary_index(left.fn, index.fn), [left, index], tok.col)
                continue
            bp = _INFIX.get(tok.value)
            if bp is None or bp <= min_bp:
                break
            self.take()
            right = self.expr(bp)
            left = self._node(_infix(tok.value, left.fn, right.fn), [left, right], tok.col)
        self.depth -= 1
        return left

    def prefix(self) -> _Node:
        tok = self.take()
        if tok.kind in ("num", "str"):
            return _const(tok.value)
        if tok.kind == "name":
            if self.peek().kind == "op" and self.peek().value == "(":
                return self.call(tok)
            if tok.value in ("true", "false"):
                return _const(tok.value == "true")
            if tok.value not in self.variables:
                known = ", ".join(sorted(self.variables)) or "none"
                raise self.error(tok.col, f"unknown variable {tok.value!r} (known: {known})")
            name = tok.value
            return _Node(lambda env: env[name], 1)
        if tok.kind == "op":
            if tok.value == "(":
                node = self.expr(0)
                self.expect(")")
                return node
            if tok.value == "[":
                items = self.arguments("]")
                fns = [n.fn for n in items]
                if all(n.literal is not _NOT_CONSTANT for n in items):
                    value = [n.literal for n in items]
                    return _Node(lambda _env: list(value), 1 + max((n.depth for n in items), default=0), value)
                return self._node(lambda env: [f(env) for f in fns], items, tok.col)
            if tok.value in ("!", "-"):
                operand = self.expr(_UNARY)
                f = operand.fn
                if tok.value == "!":
                    return self._node(lambda env: not truthy(f(env)), [operand], tok.col)
                return self._node(lambda env: _negate(f(env)), [operand], tok.col)
        raise self.error(tok.col, f"expected a value, found {self._describe(tok)}")

    def arguments(self, close: str) -> list[_Node]:
        items: list[_Node] = []
        if self.peek().kind == "op" and self.peek().value == close:
            self.take()
            return items
        while True:
            items.append(self.expr(0))
            tok = self.take()
            if tok.kind == "op" and tok.value == close:
                return items
            if tok.kind != "op" or tok.value != ",":
                raise self.error(tok.col, f"expected ',' or {close!r}, found {self._describe(tok)}")

    def call(self, name: _Token) -> _Node:
        spec = _FUNCTIONS.get(name.value)
        if spec is None:
            raise self.error(name.col, f"unknown function {name.value!r} (known: {', '.join(sorted(_FUNCTIONS))})")
        self.expect("(")
        args = self.arguments(")")
        arity, impl = spec
        if len(args) != arity:
            raise self.error(name.col, f"{name.value}() takes {arity} argument{'s' if arity > 1 else ''}, "
                             f"got {len(args)}")
        if name.value == "matches":
            pattern = args[0].literal
            if not isinstance(pattern, str):
                raise self.error(name.col, "matches() needs a literal pattern string as its first argument")
            try:
                regex = re.compile(pattern)
            except (re.error, RecursionError, OverflowError, ValueError) as exc:
                raise self.error(name.col, f"invalid regular expression: {exc}") from None
            subject = args[1].fn
            return self._node(lambda env: regex.search(_str("matches", subject(env))) is not None, args, name.col)
        if name.value == "is_ip_in_cidr" and isinstance(args[1].literal, str):
            try:
                net = _network(args[1].literal)
            except EvalError as exc:
                raise self.error(name.col, str(exc)) from None
            ip = args[0].fn
            return self._node(lambda env: _in_network(ip(env), net), args, name.col)
        fns = [a.fn for a in args]
        if arity == 1:
            (a,) = fns
            return self._node(lambda env: impl(a(env)), args, name.col)
        a, b = fns
        return self._node(lambda env: impl(a(env), b(env)), args, name.col)


def _negate(v: Any) -> Any:
    if not _is_number(v):
        raise EvalError(f"cannot negate {_type(v)}")
    return -v


def _binary_index(obj: Fn, index: Fn) -> Fn:
    return lambda env: _index(obj(env), index(env))


def _infix(op: str, a: Fn, b: Fn) -> Fn:
    if op == "&&":
        return lambda env: truthy(a(env)) and truthy(b(env))
    if op == "||":
        return lambda env: truthy(a(env)) or truthy(b(env))
    if op == "==":
        return lambda env: _equal(a(env), b(env))
    if op == "!=":
        return lambda env: not _equal(a(env), b(env))
    if op in ("<", "<=", ">", ">="):
        return lambda env: _order(op, a(env), b(env))
    return lambda env: _arith(op, a(env), b(env))


class Expression:
    """One compiled expression. ``literal`` is its value when it is a plain literal, else None."""

    __slots__ = ("_fn", "is_literal", "literal", "text")

    def __init__(self, text: str, node: _Node):
        self.text = text
        self._fn = node.fn
        self.is_literal = node.literal is not _NOT_CONSTANT
        self.literal = node.literal if self.is_literal else None

    def evaluate(self, env: Env) -> Any:
        """The value under ``env`` (variable name -> value); raises only :class:`EvalError`."""
        try:
            return self._fn(env)
        except EvalError:
            raise
        except (ArithmeticError, ValueError, TypeError, KeyError, RecursionError, MemoryError) as exc:
            # e.g. float(huge int) overflows, or an env without a variable the text names
            raise EvalError(f"{type(exc).__name__}: {exc}") from None


def compile_expression(text: Any, variables: Collection[str], path: str) -> Expression:
    """Compile ``text`` against the variable names of its context. JSON numbers and booleans are
    taken as literals. Raises :class:`ConfigError` carrying ``path`` and the column."""
    if isinstance(text, bool) or _is_number(text):
        return Expression(str(text), _const(text))
    if not isinstance(text, str):
        raise ConfigError(path, "an expression must be a string")
    if len(text) > MAX_LENGTH:
        raise ConfigError(path, f"expression longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise ConfigError(path, "empty expression")
    return Expression(text, _Parser(text, variables, path).parse())


class Conditional:
    """``{"match": [{"if", "then"}, ...], "else"}``: the first true ``if`` gives its ``then``."""

    __slots__ = ("branches", "otherwise", "path")

    def __init__(self, branches: list[tuple[Expression, Expression, str]], otherwise: Expression | None, path: str):
        self.branches, self.otherwise, self.path = branches, otherwise, path

    @property
    def constant(self) -> Any:
        """The value when there are no branches and ``else`` is a literal, else None."""
        if not self.branches and self.otherwise is not None and self.otherwise.is_literal:
            return self.otherwise.literal
        return None

    def evaluate(self, env: Env, on_error: Callable[[str, EvalError], None] | None = None) -> Any:
        """The chosen value, or None when nothing matched and there is no ``else``. A run-time
        error makes its branch not match; ``on_error(json_path, error)`` hears about it."""
        for i, (cond, then, path) in enumerate(self.branches):
            try:
                if truthy(cond.evaluate(env)):
                    return then.evaluate(env)
            except EvalError as exc:
                if on_error is not None:
                    on_error(f"{path}[{i}]", exc)
        if self.otherwise is None:
            return None
        try:
            return self.otherwise.evaluate(env)
        except EvalError as exc:
            if on_error is not None:
                on_error(f"{self.path}.else", exc)
            return None


def compile_conditional(raw: Any, variables: Collection[str], path: str) -> Conditional:
    """Compile the reference's ``{"match": [...], "else": ...}`` form (a bare string or number is
    taken as ``{"else": raw}``)."""
    if not isinstance(raw, dict):
        raw = {"else": raw}
    for key in raw:
        if key not in ("match", "else"):
            raise ConfigError(f"{path}.{key}", 'unknown key (expected "match" and "else")')
    match = raw.get("match")
    if match is None:
        match = []
    if not isinstance(match, list):
        raise ConfigError(f"{path}.match", 'expected a list of {"if": ..., "then": ...}')
    if len(match) > 256:
        raise ConfigError(f"{path}.match", "more than 256 branches")
    branches = []
    for i, branch in enumerate(match):
        p = f"{path}.match[{i}]"
        if not isinstance(branch, dict) or set(branch) != {"if", "then"}:
            raise ConfigError(p, 'expected {"if": "<expression>", "then": "<expression>"}')
        branches.append((compile_expression(branch["if"], variables, f"{p}.if"),
                         compile_expression(branch["then"], variables, f"{p}.then"), f"{path}.match"))
    otherwise = compile_expression(raw["else"], variables, f"{path}.else") if "else" in raw else None
    return Conditional(branches, otherwise, path)
