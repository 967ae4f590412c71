"""Parse and validate ``pizauth.conf``, in pizauth 1.1's grammar and with its messages.

Two passes: a pyparsing grammar turns the text into statements that remember where they
start, then a validation pass walks them in file order, applies the validation rules (the first
error wins) and builds frozen dataclasses.  Every problem is raised as ``ConfigError`` whose
text is what the user sees.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import pyparsing as pp

DEFAULT_AUTH_NOTIFY_INTERVAL = 15 * 60
DEFAULT_REFRESH_AT_LEAST = 90 * 60
DEFAULT_REFRESH_BEFORE_EXPIRY = 90
DEFAULT_REFRESH_RETRY = 40
DEFAULT_LISTEN = "127.0.0.1:0"
DEFAULT_REDIRECT_URI = "http://localhost/"
AUTH_FLOWS = ("code", "device")
DEFAULT_AUTH_FLOW = "code"
TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_post", "client_secret_basic")
DEFAULT_TOKEN_ENDPOINT_AUTH_METHOD = "client_secret_post"
# Options a device-flow account must not set: they only make sense with a browser redirect.
CODE_FLOW_ONLY_OPTIONS = ("auth_uri", "auth_uri_fields", "login_hint", "redirect_uri")

# Keys pizauth itself puts in the authorisation URL, so auth_uri_fields may not set them.
RESERVED_AUTH_URI_FIELDS = frozenset(
    {
        "access_type",
        "client_id",
        "code_challenge",
        "code_challenge_method",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
    }
)

_U64_MAX = 2**64 - 1
_TIME_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


class ConfigError(Exception):
    """str(err) is the complete user-facing text (may contain newlines)."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    # None only when it is left to the issuer's metadata, or for a device-flow account.
    auth_uri: str | None
    auth_uri_fields: tuple[tuple[str, str], ...]
    client_id: str
    client_secret: str | None
    login_hint: str | None
    redirect_uri: str
    scopes: tuple[str, ...]
    token_uri: str | None  # None only when it is left to the issuer's metadata
    refresh_at_least: int
    refresh_before_expiry: int
    refresh_retry: int
    # Options newer than pizauth 1.1: their defaults give a 1.1 configuration its old meaning.
    auth_flow: str = DEFAULT_AUTH_FLOW
    device_auth_uri: str | None = None
    issuer: str | None = None
    client_secret_cmd: str | None = None
    token_endpoint_auth_method: str = DEFAULT_TOKEN_ENDPOINT_AUTH_METHOD
    revoke_uri: str | None = None

    def security_key(self) -> tuple:
        """What must stay equal across a reload for the account to keep its tokens: every
        setting that decides where its tokens are sent and as which client."""
        return (self.name, *(value for _, value in self.destination()))

    def destination(self) -> tuple[tuple[str, object], ...]:
        """Every setting that decides where the account's tokens are sent, and as which
        client, by name: pizauth 1.1's (V11_DESTINATION), then the newer ones
        (NEWER_DESTINATION). A reload (security_key), the token store and `restore`
        (pizauth/priv/storage/dump.py) give a token back only while all of them are unchanged."""
        return tuple((name, getattr(self, name)) for name in V11_DESTINATION + NEWER_DESTINATION)

    def newer_destination(self) -> tuple[tuple[str, object], ...]:
        """The settings of destination() that pizauth 1.1 did not have; empty when each is
        at its default, as in every 1.1 configuration."""
        newer = tuple((name, getattr(self, name)) for name in NEWER_DESTINATION)
        if all(value == _NEWER_DEFAULTS[name] for name, value in newer):
            return ()
        return newer


# pizauth 1.1's: its dumps hold them (pizauth/priv/storage/dump.py AccountDump).
V11_DESTINATION = (
    "auth_uri",
    "auth_uri_fields",
    "client_id",
    "client_secret",
    "redirect_uri",
    "scopes",
    "token_uri",
)
# Newer: each changes where tokens are sent or who the client is.
NEWER_DESTINATION = (
    "auth_flow",
    "device_auth_uri",
    "issuer",
    "client_secret_cmd",
    "token_endpoint_auth_method",
    "revoke_uri",
)
# Their defaults, which give a 1.1 configuration its old meaning.
_NEWER_DEFAULTS = {
    f.name: f.default for f in dataclass_fields(Account) if f.name in NEWER_DESTINATION
}


@dataclass(frozen=True, slots=True)
class Config:
    accounts: tuple[Account, ...]
    auth_notify_cmd: str | None
    auth_notify_interval: int
    error_notify_cmd: str | None
    http_listen: str | None
    https_listen: str | None
    refresh_at_least: int | None
    refresh_before_expiry: int | None
    refresh_retry: int | None
    startup_cmd: str | None
    token_event_cmd: str | None
    transient_error_if_cmd: str | None
    # As written: an absolute path or one starting with "~/" (see paths.expand_home).
    token_store: str | None = None
    token_store_key_cmd: str | None = None

    def account(self, name: str) -> Account | None:
        for act in self.accounts:
            if act.name == name:
                return act
        return None


def load(path: str) -> Config:
    """Read and parse the config file at ``path``."""
    try:
        with open(path, "rb") as f:
            # Bytes, not text mode: universal newlines would hide '\r' from strings.
            data = f.read()
    except OSError as e:
        reason = f"{e.strerror} (os error {e.errno})" if e.strerror else str(e)
        raise ConfigError(f'Can\'t read "{path}": {reason}') from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Same wording as Rust's read_to_string.
        raise ConfigError(f'Can\'t read "{path}": stream did not contain valid UTF-8') from None
    try:
        return parse(text)
    except ConfigError as e:
        # Name the file: the server may be started from a unit or a script, and a reload
        # error reaches a terminal far from where the file was chosen.
        from pizauth.text import shown

        raise ConfigError(f"{shown(path, 512)}: {e}") from None


def parse(text: str) -> Config:
    """Parse and validate config text; raises ConfigError."""
    return _validate(text, _parse_syntax(text))


# ---------------------------------------------------------------------------------------------
# Syntax


@dataclass(frozen=True, slots=True)
class _Value:
    """A STRING (unescaped), TIME (as written) or `none` (None) token and where it starts."""

    value: str | None
    loc: int


@dataclass(frozen=True, slots=True)
class _Pair:
    key: _Value
    value: _Value


@dataclass(frozen=True, slots=True)
class _Stmt:
    """`key = value;` where value is a _Value, or a tuple of _Value (scopes) / _Pair."""

    key: str
    value: _Value | tuple[_Value, ...] | tuple[_Pair, ...]
    loc: int


@dataclass(frozen=True, slots=True)
class _AccountBlock:
    name: str
    fields: tuple[_Stmt, ...]
    loc: int


_STRING_RE = r'"(?:[^"\\]|\\["\\])*"'
_UNESCAPE_RE = re.compile(r"\\([\"\\])")


def _unescape(quoted: str) -> str:
    return _UNESCAPE_RE.sub(r"\1", quoted[1:-1])


# The options, as the grammar takes them (space-separated keywords).
_ACCOUNT_STRING_OPTIONS = (
    "auth_flow auth_uri client_id client_secret client_secret_cmd device_auth_uri"
    " issuer login_hint redirect_uri revoke_uri token_endpoint_auth_method token_uri"
)
_ACCOUNT_TIME_OPTIONS = "refresh_at_least refresh_before_expiry refresh_retry"
_GLOBAL_STRING_OPTIONS = (
    "auth_error_cmd auth_notify_cmd error_notify_cmd startup_cmd token_event_cmd"
    " token_store token_store_key_cmd transient_error_if_cmd"
)
_GLOBAL_TIME_OPTIONS = "auth_notify_interval refresh_at_least refresh_before_expiry refresh_retry"
_GLOBAL_LISTEN_OPTIONS = "https_listen http_listen"
# For hints after an unknown option (not auth_error_cmd: it has its own error).
ACCOUNT_OPTIONS = frozenset(
    f"{_ACCOUNT_STRING_OPTIONS} {_ACCOUNT_TIME_OPTIONS} auth_uri_fields scopes".split()
)
GLOBAL_OPTIONS = frozenset(
    f"{_GLOBAL_STRING_OPTIONS} {_GLOBAL_TIME_OPTIONS} {_GLOBAL_LISTEN_OPTIONS}".split()
) - {"auth_error_cmd"}


@functools.cache
def _grammar() -> pp.ParserElement:
    # pyparsing is imported here, not at module level, so that importing this module for its
    # dataclasses and constants stays cheap (the client path must not pay ~40 ms for it).
    import pyparsing as pp

    # Pure parse actions only, so the grammar stays correct if anyone enables packrat.
    string = pp.Regex(_STRING_RE).set_name("a string")
    string.set_parse_action(lambda s, loc, t: _Value(_unescape(t[0]), loc))
    time = pp.Regex(r"[0-9]+[dhms]").set_name("a time such as 30s, 5m, 2h or 1d")
    time.set_parse_action(lambda s, loc, t: _Value(t[0], loc))
    none = pp.Literal("none")
    none.set_parse_action(lambda s, loc, t: _Value(None, loc))
    string_or_none = (none | string).set_name("'none' or a string")

    eq, semi, colon, comma = (pp.Suppress(c) for c in "=;:,")
    lbrace, lbracket = pp.Suppress("{"), pp.Suppress("[")

    # `-` (ErrorStop) after each keyword: once the keyword is seen, a failure is reported
    # where it happens rather than backtracking to the start of the statement.  Keywords
    # that take the same kind of value share one statement rule (one regex instead of a
    # dozen alternatives: much faster).
    def stmt(keywords: str, value: pp.ParserElement) -> pp.ParserElement:
        # Longest first: the regex takes the first alternative that matches, and
        # "client_secret" must not win over "client_secret_cmd".
        words = sorted(keywords.split(), key=len, reverse=True)
        keyword = pp.Regex("|".join(map(re.escape, words)))
        expr = keyword - eq - value - semi
        return expr.set_parse_action(lambda s, loc, t: _Stmt(t[0], t[1], loc))

    def listing(keyword: str, opening: pp.ParserElement, item: pp.ParserElement, closing: str):
        # A leading comma is accepted for compatibility, a trailing one is not
        # (docs/compatibility.md "Leading comma").
        expr = (
            pp.Literal(keyword)
            - eq
            - opening
            - pp.Opt(item)
            - pp.ZeroOrMore(comma - item)
            - pp.Suppress(closing).set_name(f"',' or '{closing}'")
            - semi
        )
        return expr.set_parse_action(lambda s, loc, t: _Stmt(t[0], tuple(t[1:]), loc))

    scopes = listing("scopes", lbracket, string, "]")
    pair = (string - colon - string).set_parse_action(lambda s, loc, t: _Pair(t[0], t[1]))
    auth_uri_fields = listing("auth_uri_fields", lbrace, pair, "}")

    field = pp.MatchFirst(
        [
            auth_uri_fields,  # before auth_uri, which is a prefix of it
            stmt(_ACCOUNT_STRING_OPTIONS, string),
            stmt(_ACCOUNT_TIME_OPTIONS, time),
            scopes,
        ]
    )
    account = (
        pp.Literal("account")
        - string
        - lbrace
        - pp.ZeroOrMore(field)
        - pp.Suppress("}").set_name("an account option or '}'")
    ).set_parse_action(lambda s, loc, t: _AccountBlock(t[1].value, tuple(t[2:]), loc))

    toplevel = pp.MatchFirst(
        [
            account,
            stmt(_GLOBAL_STRING_OPTIONS, string),
            stmt(_GLOBAL_TIME_OPTIONS, time),
            stmt(_GLOBAL_LISTEN_OPTIONS, string_or_none),
        ]
    )
    grammar = pp.ZeroOrMore(toplevel) + pp.StringEnd().set_name("'account' or a global option")
    # Only '//' comments exist ('#' is an error); whitespace is pyparsing's default " \t\r\n".
    grammar.ignore(pp.Regex(r"//[^\n]*"))
    # Without this pyparsing expands tabs, which shifts columns and alters string values.
    grammar.parse_with_tabs()
    return grammar


# One lexeme (plus whole words and numbers), only to say what was found at an error.
_LEXEME_RE = re.compile(_STRING_RE + r"|[0-9]+[dhms]|[A-Za-z_][A-Za-z0-9_]*|[0-9]+|.", re.S)


def _parse_syntax(text: str) -> list[_Stmt | _AccountBlock]:
    import pyparsing as pp  # lazily, see _grammar()

    try:
        return list(_grammar().parse_string(text))
    except pp.ParseBaseException as e:
        # Only the first error (docs/compatibility.md "Syntax errors").
        loc = min(e.loc, len(text))
        line, col = _line_col(text, loc)
        problem = f"{e.msg or 'Syntax error'}, found {_found(text, loc)}"
        start = _open_string_before(text, loc)
        if start is not None:
            # A string may span lines, so a missing closing quote only shows where the
            # string swallowed the next one's opening quote: point at where it starts.
            problem = (
                f"A string starts here and runs on to line {line}: if it should end on "
                f"this line, its closing '\"' is missing (at line {line} column {col}: "
                f"{problem})"
            )
            line, col = _line_col(text, start)
        elif text.startswith('"', loc):
            problem += ' (a string not closed, or with an escape other than \\" or \\\\)'
        line_start = text.rfind("\n", 0, loc) + 1
        if text.startswith("#", loc) or text[line_start:].lstrip(" \t").startswith("#"):
            problem += " (comments start with //)"
        problem += _option_hint(text, loc, e.msg or "")
        raise ConfigError(f"Parsing error at line {line} column {col}. {problem}") from None


_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _option_hint(text: str, loc: int, expected: str) -> str:
    """After an unknown option, the known one it most resembles, or where it belongs if
    it is an option of the other level (docs/compatibility.md "Unknown options")."""
    import difflib

    word = _WORD_RE.match(text, loc)
    if word is None:
        return ""
    name = word.group()
    if "an account option" in expected:
        if name in GLOBAL_OPTIONS:
            return f" ('{name}' is a global option: put it outside every account block)"
        close = difflib.get_close_matches(name, sorted(ACCOUNT_OPTIONS), n=1)
        return f' (did you mean "{close[0]}"?)' if close else ""
    if "a global option" in expected:
        if name in ACCOUNT_OPTIONS:
            return f" ('{name}' is an account option: put it inside an account block)"
        close = difflib.get_close_matches(name, sorted(GLOBAL_OPTIONS | {"account"}), n=1)
        if close:
            return f' (did you mean "{close[0]}"?)'
        close = difflib.get_close_matches(name, sorted(ACCOUNT_OPTIONS), n=1)
        if close:
            return f' (did you mean "{close[0]}"? It goes inside an account block)'
    return ""


# What the grammar sees as single lexemes that may hold a '"' or "//", in the order it tries
# them; anything else is one character at a time.
_STRING_OR_COMMENT_RE = re.compile(_STRING_RE + r"|//[^\n]*")


def _open_string_before(text: str, loc: int) -> int | None:
    """Where the string that ends just before `loc` (only blanks between) starts, if it
    spans lines: then its closing quote was probably meant to open the next string."""
    pos, last = 0, None
    while (m := _STRING_OR_COMMENT_RE.search(text, pos)) is not None and m.end() <= loc:
        if m.group().startswith('"'):
            last = m
        pos = m.end()
    if last is None or "\n" not in last.group() or text[last.end() : loc].strip(" \t\r\n"):
        return None
    return last.start()


def _found(text: str, loc: int) -> str:
    m = _LEXEME_RE.match(text, loc)
    if m is None:
        return "end of input"
    lexeme = m.group()
    short = lexeme.split("\n", 1)[0][:40]
    return repr(short if short == lexeme else short + "...")


# ---------------------------------------------------------------------------------------------
# Validation, in the order pizauth 1.1 checks, so a bad file gets the same first error

# What Rust's str::trim() removes (Unicode White_Space); Python's strip() also removes \x1c-\x1f.
_RUST_WS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)

_TIME_OPTIONS = (
    "auth_notify_interval",
    "refresh_at_least",
    "refresh_before_expiry",
    "refresh_retry",
)
_LOGIN_HINT_CONFLICT = (
    "Both the 'login_hint' attribute and a 'auth_uri_fields' field with the name 'login_hint'"
    " are specified. The 'login_hint' attribute is deprecated so remove it."
)


def _line_col(text: str, loc: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, loc) + 1
    return text.count("\n", 0, loc) + 1, loc - line_start + 1


# A quoted source line is cut here: a line holding a huge account name would bury the message.
_MAX_QUOTED_LINE = 200


def _shown(name: str) -> str:
    from pizauth.text import shown  # lazily: only on error paths

    return shown(name)


def _error_at(text: str, loc: int, msg: str) -> ConfigError:
    """A positioned error for the span starting at `loc`, quoting its first line."""
    line, col = _line_col(text, loc)
    line_end = text.find("\n", loc)
    src = text[loc - col + 1 : line_end if line_end != -1 else len(text)].strip(_RUST_WS)
    if len(src) > _MAX_QUOTED_LINE:
        src = src[:_MAX_QUOTED_LINE] + "…"
    return ConfigError(f"Line {line}, column {col}:\n  {src}\n{msg}")


def _time_seconds(text: str, tok: _Value) -> int:
    assert tok.value is not None
    digits, unit = tok.value[:-1].lstrip("0") or "0", tok.value[-1]
    # Values are u64 in the original; keep its two distinct overflow messages.  The length
    # test comes first because int() refuses strings of more than 4300 digits.
    if len(digits) > 20 or int(digits) > _U64_MAX:
        raise _error_at(text, tok.loc, "Invalid time: number too large to fit in target type")
    secs = int(digits) * _TIME_UNITS[unit]
    if secs > _U64_MAX:
        raise _error_at(text, tok.loc, "Invalid time: Number too big")
    return secs


_PORT_RE = re.compile(r"[0-9]{1,5}")


def _listen_problem(key: str, address: str) -> str | None:
    """What is wrong with a listener's `host:port`, if anything: caught here, with its
    line, rather than at bind time (docs/compatibility.md "Listener ports"). Port 0 is
    pizauth 1.1's "any free port", the default."""
    from pizauth.text import shown  # lazily: only on error paths

    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return f"Invalid {key} '{shown(address)}': expected HOST:PORT, such as 127.0.0.1:8765"
    if _PORT_RE.fullmatch(port) is None or int(port) > 65535:
        return (
            f"Invalid {key} port '{shown(port)}' in '{shown(address)}': a port is 1 to 65535,"
            " or 0 for any free port"
        )
    return None


def _validate(text: str, items: list[_Stmt | _AccountBlock]) -> Config:
    # Values so far, keyed by option name: str | None for strings and `none`, int for times.
    opts: dict[str, Any] = {}
    opt_locs: dict[str, int] = {}
    listen_locs: dict[str, int] = {}  # where each listener's value is
    accounts: dict[str, dict[str, Any]] = {}
    for item in items:
        if isinstance(item, _AccountBlock):
            # A later block with the same name replaces the earlier one but keeps the
            # earlier one's place in the order (docs/compatibility.md "Duplicate account blocks").
            accounts[item.name] = _validate_account(text, item)
            continue
        value = item.value
        assert isinstance(value, _Value)
        if item.key == "auth_error_cmd":
            raise _error_at(
                text, item.loc, "'auth_error_cmd' has been renamed to 'error_notify_cmd'"
            )
        if item.key in opts:
            raise _error_at(text, value.loc, f"Mustn't specify '{item.key}' more than once")
        if item.key == "token_store":
            problem = _token_store_problem(value.value or "")
            if problem is not None:
                raise _error_at(text, value.loc, problem)
        if item.key == "token_store_key_cmd" and not value.value:
            raise _error_at(text, value.loc, "token_store_key_cmd must not be empty")
        if item.key in ("http_listen", "https_listen"):
            listen_locs[item.key] = value.loc
        is_time = item.key in _TIME_OPTIONS
        opts[item.key] = _time_seconds(text, value) if is_time else value.value
        opt_locs[item.key] = item.loc

    # The store is useless without its key and the key without a store.
    for present, missing in (
        ("token_store", "token_store_key_cmd"),
        ("token_store_key_cmd", "token_store"),
    ):
        if present in opts and missing not in opts:
            raise _error_at(
                text, opt_locs[present], f"{missing} not specified (needed with {present})"
            )

    http_listen = opts.get("http_listen", DEFAULT_LISTEN)
    https_listen = opts.get("https_listen", DEFAULT_LISTEN)
    # Device-flow accounts never receive a redirect, so they need no listener; an empty
    # configuration still gets this error first, as in pizauth 1.1.
    device_only = bool(accounts) and all(
        f.get("auth_flow", DEFAULT_AUTH_FLOW) == "device" for f in accounts.values()
    )
    if http_listen is None and https_listen is None and not device_only:
        raise ConfigError("Cannot set both http_listen and https_listen to 'none'")
    if not accounts:
        raise ConfigError("Must specify at least one account")

    built = []
    for name, fields in accounts.items():
        auth_flow = fields.get("auth_flow", DEFAULT_AUTH_FLOW)
        redirect_uri = fields.get("redirect_uri", DEFAULT_REDIRECT_URI)
        # Compared case-insensitively, as the redirect URL is built
        # (docs/compatibility.md "Redirect scheme case").
        scheme = _uri_scheme(redirect_uri) if auth_flow == "code" else None
        if scheme == "https" and https_listen is None:
            raise ConfigError(
                f"Account {_shown(name)} has an 'https' redirect but the HTTPS server is set "
                "to 'none'"
            )
        if scheme == "http" and http_listen is None:
            raise ConfigError(
                f"Account {_shown(name)} has an 'http' redirect but the HTTP server is set "
                "to 'none'"
            )

        def effective(key: str, default: int, fields: dict[str, Any] = fields) -> int:
            # Precedence: account > global > built-in default.
            return fields.get(key, opts.get(key, default))

        built.append(
            Account(
                name=name,
                auth_uri=fields.get("auth_uri"),
                auth_uri_fields=fields.get("auth_uri_fields", ()),
                client_id=fields["client_id"],
                client_secret=fields.get("client_secret"),
                login_hint=fields.get("login_hint"),
                redirect_uri=redirect_uri,
                scopes=fields.get("scopes", ()),
                token_uri=fields.get("token_uri"),
                refresh_at_least=effective("refresh_at_least", DEFAULT_REFRESH_AT_LEAST),
                refresh_before_expiry=effective(
                    "refresh_before_expiry", DEFAULT_REFRESH_BEFORE_EXPIRY
                ),
                refresh_retry=effective("refresh_retry", DEFAULT_REFRESH_RETRY),
                auth_flow=auth_flow,
                device_auth_uri=fields.get("device_auth_uri"),
                issuer=fields.get("issuer"),
                client_secret_cmd=fields.get("client_secret_cmd"),
                token_endpoint_auth_method=fields.get(
                    "token_endpoint_auth_method", DEFAULT_TOKEN_ENDPOINT_AUTH_METHOD
                ),
                revoke_uri=fields.get("revoke_uri"),
            )
        )

    # Last, so that a file pizauth 1.1 refused gets 1.1's first error; 1.1 refused these
    # only when it bound the listener.
    for key, address in (("http_listen", http_listen), ("https_listen", https_listen)):
        problem = None if address is None else _listen_problem(key, address)
        if problem is not None:
            raise _error_at(text, listen_locs[key], problem)

    return Config(
        accounts=tuple(built),
        auth_notify_cmd=opts.get("auth_notify_cmd"),
        auth_notify_interval=opts.get("auth_notify_interval", DEFAULT_AUTH_NOTIFY_INTERVAL),
        error_notify_cmd=opts.get("error_notify_cmd"),
        http_listen=http_listen,
        https_listen=https_listen,
        refresh_at_least=opts.get("refresh_at_least"),
        refresh_before_expiry=opts.get("refresh_before_expiry"),
        refresh_retry=opts.get("refresh_retry"),
        startup_cmd=opts.get("startup_cmd"),
        token_event_cmd=opts.get("token_event_cmd"),
        transient_error_if_cmd=opts.get("transient_error_if_cmd"),
        token_store=opts.get("token_store"),
        token_store_key_cmd=opts.get("token_store_key_cmd"),
    )


def _validate_account(text: str, block: _AccountBlock) -> dict[str, Any]:
    """Check one account block, in pizauth 1.1's order; return its fields keyed by option
    name, with times in seconds and lists as tuples."""
    fields: dict[str, Any] = {}
    locs: dict[str, int] = {}  # where each option's statement starts
    for stmt in block.fields:
        value = stmt.value
        if stmt.key in fields:
            # Lists are reported at their keyword, single values at the value.
            loc = value.loc if isinstance(value, _Value) else stmt.loc
            raise _error_at(text, loc, f"Mustn't specify '{stmt.key}' more than once")
        locs[stmt.key] = stmt.loc
        if isinstance(value, _Value):
            if stmt.key in _TIME_OPTIONS:
                fields[stmt.key] = _time_seconds(text, value)
                continue
            problem = _value_problem(stmt.key, value.value or "", fields)
            if problem is not None:
                raise _error_at(text, value.loc, problem)
            fields[stmt.key] = value.value
        elif stmt.key == "auth_uri_fields":
            pairs = []
            for pair in value:
                assert isinstance(pair, _Pair)
                if pair.key.value in RESERVED_AUTH_URI_FIELDS:
                    raise _error_at(text, pair.key.loc, f"'{pair.key.value}' is a reserved key")
                pairs.append((pair.key.value, pair.value.value))
            fields[stmt.key] = tuple(pairs)
        else:  # scopes
            fields[stmt.key] = tuple(v.value for v in value if isinstance(v, _Value))

    auth_flow = fields.get("auth_flow", DEFAULT_AUTH_FLOW)
    # Options the other flow would ignore are errors, not silently dropped; the first one
    # in the file is reported.
    misplaced = CODE_FLOW_ONLY_OPTIONS if auth_flow == "device" else ("device_auth_uri",)
    first = min((k for k in misplaced if k in fields), key=locs.__getitem__, default=None)
    if first is not None:
        raise _error_at(
            text, locs[first], f"'{first}' can't be used with auth_flow = \"{auth_flow}\""
        )
    if (
        fields.get("token_endpoint_auth_method") == "client_secret_basic"
        and "client_secret" not in fields
        and "client_secret_cmd" not in fields
    ):
        raise _error_at(
            text,
            locs["token_endpoint_auth_method"],
            "client_secret_basic needs client_secret or client_secret_cmd",
        )
    first_uri = "device_auth_uri" if auth_flow == "device" else "auth_uri"
    for mandatory in (first_uri, "client_id", "token_uri"):
        # With an issuer, endpoints left out come from its metadata.
        if mandatory not in fields and (mandatory == "client_id" or "issuer" not in fields):
            raise _error_at(text, block.loc, f"{mandatory} not specified")
    if "login_hint" in fields and any(
        key == "login_hint" for key, _ in fields.get("auth_uri_fields", ())
    ):
        raise _error_at(text, block.loc, _LOGIN_HINT_CONFLICT)
    return fields


_URI_OPTIONS = frozenset({"auth_uri", "device_auth_uri", "redirect_uri", "revoke_uri", "token_uri"})
_EXCLUSIVE = {"client_secret": "client_secret_cmd", "client_secret_cmd": "client_secret"}


def _value_problem(key: str, value: str, earlier: dict[str, Any]) -> str | None:
    """The error message for one account option's string value, or None if acceptable.
    `earlier` holds the options of the same block seen so far."""
    if key in _URI_OPTIONS:
        return _uri_problem(value)
    if key == "issuer":
        return _issuer_problem(value)
    if key == "auth_flow" and value not in AUTH_FLOWS:
        return 'auth_flow must be "code" or "device"'
    if key == "token_endpoint_auth_method" and value not in TOKEN_ENDPOINT_AUTH_METHODS:
        return 'token_endpoint_auth_method must be "client_secret_post" or "client_secret_basic"'
    if key in _EXCLUSIVE and _EXCLUSIVE[key] in earlier:
        return f"Mustn't specify both '{_EXCLUSIVE[key]}' and '{key}'"
    if key == "client_secret_cmd" and not value:
        return "client_secret_cmd must not be empty"
    return None


def _token_store_problem(path: str) -> str | None:
    if not (path.startswith("/") or path.startswith("~/")):
        return "token_store must be an absolute path or start with '~/'"
    if "\0" in path:
        return "token_store must not contain a NUL character"
    if len(path.encode("utf-8", "replace")) >= 4096:
        return "token_store must be shorter than 4096 bytes"  # PATH_MAX
    if path.endswith("/") or path.endswith("/.") or path.endswith("/.."):
        return "token_store must name a file, not a directory"
    return None


# Plain http is only for an issuer on this machine (tests); anywhere else the metadata,
# which says where secrets are sent, must come over TLS.
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})


def _issuer_problem(issuer: str) -> str | None:
    problem = _uri_problem(issuer)
    if problem is not None:
        return problem
    # The issuer is compared byte for byte with the metadata's, and parsers disagree on
    # backslashes, spaces and controls: refuse them rather than guess which host is meant.
    if any(c <= " " or c == "\\" or c >= "\x7f" for c in issuer):
        return "issuer must be a plain https URL without spaces, backslashes or non-ASCII"
    url = urlsplit(issuer)
    if url.query or issuer.endswith("?"):
        return "issuer must not have a query ('?...')"
    if "@" in url.netloc:
        return "issuer must not contain a user name or password"
    scheme, host = url.scheme.lower(), (url.hostname or "")
    if scheme == "https" or (scheme == "http" and host in _LOCAL_HOSTS):
        return None
    return "issuer must be an https URL (http only for 127.0.0.1 or localhost)"


# ---------------------------------------------------------------------------------------------
# URI checks: enough of the WHATWG parser (Rust's `url` crate) to reject what it rejects for
# http(s) URIs, with its error texts.

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_SCHEMES_WITH_HOST = frozenset({"http", "https", "ws", "wss", "ftp"})
_AUTHORITY_END_RE = re.compile(r"[/\\?#]")
_FORBIDDEN_DOMAIN_RE = re.compile(r"[\x00-\x20#%/:<>?@\[\\\]^|\x7f]")
_C0_OR_SPACE = "".join(map(chr, range(0x21)))
_IPV4_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _strip_uri(uri: str) -> str:
    # As the URL standard does: trim C0 controls and spaces, drop every tab/CR/LF.
    return uri.strip(_C0_OR_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")


def _uri_scheme(uri: str) -> str | None:
    m = _SCHEME_RE.match(_strip_uri(uri))
    return None if m is None else m.group()[:-1].lower()


def _uri_problem(uri: str) -> str | None:
    """The error message for an auth/token/redirect URI, or None if it is acceptable."""
    s = _strip_uri(uri)
    m = _SCHEME_RE.match(s)
    if m is None:
        return "Invalid URI: relative URL without a base"
    scheme = m.group()[:-1].lower()
    rest = s[m.end() :]
    if scheme in _SCHEMES_WITH_HOST:
        authority = _AUTHORITY_END_RE.split(rest.lstrip("/\\"), maxsplit=1)[0]
        problem = _authority_problem(authority)
        if problem is not None:
            return f"Invalid URI: {problem}"
    if "#" in rest:
        return "URI fragments ('#...') are not allowed"
    if scheme not in ("http", "https"):
        return "not a valid HTTP or HTTPS URI"
    return None


def _authority_problem(authority: str) -> str | None:
    host_port = authority.rpartition("@")[2]
    # The port separator is the first ':' outside an IPv6 literal's brackets.
    in_brackets, split_at = False, len(host_port)
    for i, c in enumerate(host_port):
        if c == "[":
            in_brackets = True
        elif c == "]":
            in_brackets = False
        elif c == ":" and not in_brackets:
            split_at = i
            break
    host, port = host_port[:split_at], host_port[split_at + 1 :]
    if host == "":
        return "empty host"
    if port and not (port.isascii() and port.isdigit() and _bounded_int(port, 10) <= 65535):
        return "invalid port number"
    if host.startswith("["):
        try:
            if not host.endswith("]") or "%" in host:
                raise ValueError
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "invalid IPv6 address"
        return None
    host = unquote(host)
    if _FORBIDDEN_DOMAIN_RE.search(host):
        return "invalid domain character"
    if not _valid_ipv4_if_numeric(host):
        return "invalid IPv4 address"
    return None


def _ipv4_number(part: str) -> int | None:
    if part == "":
        return None
    radix = 10
    if part[:2] in ("0x", "0X"):
        part, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, radix = part[1:], 8
    if part == "":
        return 0
    if not all(c in _IPV4_DIGITS[radix] for c in part):
        return None
    return _bounded_int(part, radix)


def _bounded_int(digits: str, radix: int) -> int:
    # Anything this long is out of range anyway, and int() refuses over 4300 decimal digits.
    digits = digits.lstrip("0") or "0"
    return int(digits, radix) if len(digits) <= 40 else 2**160


def _valid_ipv4_if_numeric(host: str) -> bool:
    """False if `host` ends in a number (so must be an IPv4 address) but is not a valid one."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    last = parts[-1]
    if last == "" or (not (last.isascii() and last.isdigit()) and _ipv4_number(last) is None):
        return True  # a domain name
    nums = [n for n in map(_ipv4_number, parts) if n is not None]
    if len(parts) > 4 or len(nums) != len(parts):
        return False
    return all(n <= 255 for n in nums[:-1]) and nums[-1] < 256 ** (5 - len(nums))


def permission_warning(path: str, config: Config) -> str | None:
    """A warning when group or others may read a configuration that holds a
    client_secret (a warning, not a refusal: existing setups keep working)."""
    if not any(a.client_secret is not None for a in config.accounts):
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not mode & 0o077:
        return None
    from pizauth.text import shown

    name = shown(path, 512)
    return (
        f"{name} holds a client_secret and is readable by others (mode {mode & 0o777:o}): "
        f"run 'chmod 600 {name}'"
    )
