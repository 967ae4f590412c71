"""Tests for pizauth.config: pizauth 1.1's config test cases, positioned errors, syntax error
positions."""

from __future__ import annotations

import dataclasses

import pytest

from pizauth.config import (
    DEFAULT_AUTH_NOTIFY_INTERVAL,
    DEFAULT_LISTEN,
    DEFAULT_REDIRECT_URI,
    DEFAULT_REFRESH_AT_LEAST,
    DEFAULT_REFRESH_BEFORE_EXPIRY,
    DEFAULT_REFRESH_RETRY,
    Account,
    Config,
    ConfigError,
    load,
    parse,
)

# The smallest valid account block, for tests about something else.
MINIMAL_ACCOUNT = """
account "x" {
    auth_uri = "http://a.com";
    client_id = "b";
    token_uri = "http://c.com";
}
"""


def error_text(text: str) -> str:
    with pytest.raises(ConfigError) as exc_info:
        parse(text)
    return str(exc_info.value)


def account_with(*fields: str, name: str = "x") -> str:
    """An account block with the mandatory fields plus `fields` (each a full statement)."""
    body = "\n".join(
        [
            'auth_uri = "http://a.com";',
            'client_id = "b";',
            'token_uri = "http://c.com";',
            *fields,
        ]
    )
    return f'account "{name}" {{\n{body}\n}}\n'


def only_account(text: str) -> Account:
    conf = parse(text)
    assert len(conf.accounts) == 1
    return conf.accounts[0]


# --- unescaping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ('""', ""),
        ('"a"', "a"),
        ('"a\\""', 'a"'),
        ('"a\\"b"', 'a"b'),
        ('"\\\\"', "\\"),
    ],
)
def test_string_escapes_unescape_to_their_characters(written: str, value: str) -> None:
    assert only_account(account_with(f"client_secret = {written};")).client_secret == value


def test_strings_may_contain_literal_newlines_and_comment_markers() -> None:
    act = only_account(account_with('client_secret = "a\nb // not a comment";'))
    assert act.client_secret == "a\nb // not a comment"


# --- times ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("0s", 0), ("1s", 1), ("1m", 60), ("2m", 120), ("1h", 3600), ("1d", 86400)],
)
def test_time_units_convert_to_seconds(written: str, seconds: int) -> None:
    conf = parse(f"auth_notify_interval = {written};" + MINIMAL_ACCOUNT)
    assert conf.auth_notify_interval == seconds


def test_time_whose_unit_multiplication_overflows_is_an_error() -> None:
    assert error_text("auth_notify_interval = 9223372036854775808m;" + MINIMAL_ACCOUNT) == (
        "Line 1, column 24:\n"
        "  auth_notify_interval = 9223372036854775808m;\n"
        "Invalid time: Number too big"
    )


def test_largest_time_is_accepted() -> None:
    conf = parse("auth_notify_interval = 18446744073709551615s;" + MINIMAL_ACCOUNT)
    assert conf.auth_notify_interval == 2**64 - 1


# --- lexer ------------------------------------------------------------------------------


def test_escaped_backslash_is_one_string() -> None:
    assert only_account(account_with('client_secret = "\\\\";')).client_secret == "\\"


def test_escaped_quotes_are_one_string() -> None:
    assert only_account(account_with('client_secret = "\\"\\"";')).client_secret == '""'


def test_backslash_n_is_not_a_string_escape() -> None:
    # `"\n"` lexes as four stray characters, so the error is at its first quote.
    assert error_text('auth_notify_cmd = "\\n";') == (
        "Parsing error at line 1 column 19. Expected a string, found '\"'"
        ' (a string not closed, or with an escape other than \\" or \\\\)'
    )


# --- a valid config read back exactly ----------------------------------------------------

VALID_CONFIG = """
auth_notify_cmd = "g";
auth_notify_interval = 88m;
error_notify_cmd = "j";
http_listen = "127.0.0.1:56789";
transient_error_if_cmd = "k";
token_event_cmd = "q";
account "x" {
    auth_uri = "http://a.com";
    auth_uri_fields = {"l": "m", "n": "o", "l": "p"};
    client_id = "b";
    scopes = ["c", "d"];
    token_uri = "http://f.com";
    client_secret = "h";
    login_hint = "i";
    redirect_uri = "http://e.com";
    refresh_at_least = 43m;
    refresh_before_expiry = 42s;
    refresh_retry = 33s;
}
"""


def test_valid_config_parses_to_every_field() -> None:
    conf = parse(VALID_CONFIG)
    assert conf == Config(
        accounts=(
            Account(
                name="x",
                auth_uri="http://a.com",  # not normalised to "http://a.com/"
                auth_uri_fields=(("l", "m"), ("n", "o"), ("l", "p")),  # login_hint not merged
                client_id="b",
                client_secret="h",
                login_hint="i",
                redirect_uri="http://e.com",
                scopes=("c", "d"),
                token_uri="http://f.com",
                refresh_at_least=43 * 60,
                refresh_before_expiry=42,
                refresh_retry=33,
            ),
        ),
        auth_notify_cmd="g",
        auth_notify_interval=88 * 60,
        error_notify_cmd="j",
        http_listen="127.0.0.1:56789",
        https_listen=DEFAULT_LISTEN,
        refresh_at_least=None,
        refresh_before_expiry=None,
        refresh_retry=None,
        startup_cmd=None,
        token_event_cmd="q",
        transient_error_if_cmd="k",
    )
    assert conf.account("x") is conf.accounts[0]
    assert conf.account("y") is None


def test_config_and_account_are_frozen() -> None:
    conf = parse(VALID_CONFIG)
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.auth_notify_cmd = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.accounts[0].client_id = "x"  # type: ignore[misc]


def test_defaults() -> None:
    conf = parse(MINIMAL_ACCOUNT)
    act = conf.accounts[0]
    assert (conf.http_listen, conf.https_listen) == (DEFAULT_LISTEN, DEFAULT_LISTEN)
    assert conf.auth_notify_interval == DEFAULT_AUTH_NOTIFY_INTERVAL == 900
    assert conf.auth_notify_cmd is conf.error_notify_cmd is conf.startup_cmd is None
    assert conf.token_event_cmd is conf.transient_error_if_cmd is None
    assert act.redirect_uri == DEFAULT_REDIRECT_URI == "http://localhost/"
    assert act.scopes == () and act.auth_uri_fields == ()
    assert act.client_secret is None and act.login_hint is None


def test_all_global_options() -> None:
    conf = parse(
        'startup_cmd = "s"; https_listen = "127.0.0.1:443"; http_listen = none;'
        + account_with('redirect_uri = "https://r.com/";')
    )
    assert conf.startup_cmd == "s"
    assert conf.http_listen is None
    assert conf.https_listen == "127.0.0.1:443"


def test_security_key() -> None:
    act = parse(VALID_CONFIG).accounts[0]
    assert act.security_key() == (
        "x",
        "http://a.com",
        (("l", "m"), ("n", "o"), ("l", "p")),
        "b",
        "h",
        "http://e.com",
        ("c", "d"),
        "http://f.com",
        "code",
        None,
        None,
        None,
        "client_secret_post",
        None,
    )
    # Timings and the deprecated login_hint are not part of it, as in pizauth 1.1.
    changed = parse(VALID_CONFIG.replace("43m", "1s").replace('"i"', '"z"')).accounts[0]
    assert changed.security_key() == act.security_key()


# --- mandatory sections and global options ----------------------------------------------


@pytest.mark.parametrize("text", ["", "  \n// only a comment\n", 'auth_notify_cmd = "a";'])
def test_config_without_account_is_an_error(text: str) -> None:
    assert error_text(text) == "Must specify at least one account"


def test_time_too_large_for_u64_is_an_error() -> None:
    assert error_text("auth_notify_interval = 18446744073709551616s;") == (
        "Line 1, column 24:\n"
        "  auth_notify_interval = 18446744073709551616s;\n"
        "Invalid time: number too large to fit in target type"
    )


def test_time_with_thousands_of_digits() -> None:
    msg = error_text(f"refresh_retry = {'9' * 5000}s;")
    assert msg.endswith("\nInvalid time: number too large to fit in target type")


# --- duplicates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "first", "second"),
    [
        ("auth_notify_cmd", '"a"', '"b"'),
        ("auth_notify_interval", "1s", "2s"),
        ("error_notify_cmd", '"a"', '"b"'),
        ("token_event_cmd", '"a"', '"b"'),
        ("transient_error_if_cmd", '"a"', '"b"'),
        ("startup_cmd", '"a"', '"b"'),
        ("refresh_at_least", "1s", "2s"),
        ("refresh_before_expiry", "1s", "2s"),
        ("refresh_retry", "1s", "2s"),
        ("http_listen", '"a"', '"a"'),
        ("http_listen", "none", '"a"'),
        ("http_listen", '"a"', "none"),
        ("https_listen", '"a"', '"a"'),
        ("https_listen", "none", '"a"'),
    ],
)
def test_duplicate_global_option_is_an_error(option: str, first: str, second: str) -> None:
    # No account: the duplicate is found first.
    text = f"{option} = {first};\n{option} = {second};\n"
    assert error_text(text).endswith(f"\nMustn't specify '{option}' more than once")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("auth_uri", '"http://a.com"'),
        ("auth_uri_fields", '{"a": "b"}'),
        ("client_id", '"a"'),
        ("client_secret", '"a"'),
        ("login_hint", '"a"'),
        ("redirect_uri", '"http://a.com"'),
        ("refresh_before_expiry", "1s"),
        ("refresh_at_least", "1s"),
        ("refresh_retry", "1s"),
        ("scopes", '["a"]'),
        ("token_uri", '"http://a.com"'),
    ],
)
def test_duplicate_account_field_is_an_error(option: str, value: str) -> None:
    # Reported before the missing-mandatory check.
    text = f'account "x" {{\n  {option} = {value};\n  {option} = {value};\n}}'
    assert error_text(text).endswith(f"\nMustn't specify '{option}' more than once")


def test_duplicate_value_option_points_at_second_value() -> None:
    text = 'auth_notify_cmd = "a";\n  auth_notify_cmd =  "b";  \n' + MINIMAL_ACCOUNT
    assert error_text(text) == (
        "Line 2, column 22:\n"
        '  auth_notify_cmd =  "b";\n'
        "Mustn't specify 'auth_notify_cmd' more than once"
    )


def test_duplicate_none_points_at_second_none() -> None:
    assert error_text("http_listen = none;\nhttp_listen = none;") == (
        "Line 2, column 15:\n  http_listen = none;\nMustn't specify 'http_listen' more than once"
    )


def test_duplicate_list_option_points_at_keyword() -> None:
    text = 'account "x" {\n  scopes = ["a"];\n    scopes = [];\n}'
    assert error_text(text) == (
        "Line 3, column 5:\n  scopes = [];\nMustn't specify 'scopes' more than once"
    )
    text = 'account "x" {\n  auth_uri_fields = {};\n  auth_uri_fields = {};\n}'
    assert error_text(text) == (
        "Line 3, column 3:\n"
        "  auth_uri_fields = {};\n"
        "Mustn't specify 'auth_uri_fields' more than once"
    )


# --- both listeners off -----------------------------------------------------------------


def test_both_listeners_none_is_an_error() -> None:
    text = "http_listen = none;\nhttps_listen = none;\n" + MINIMAL_ACCOUNT
    assert error_text(text) == "Cannot set both http_listen and https_listen to 'none'"


def test_both_listeners_none_is_checked_before_missing_account() -> None:
    text = "http_listen = none;\nhttps_listen = none;\n"
    assert error_text(text) == "Cannot set both http_listen and https_listen to 'none'"


# --- URIs -------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["httpx://", "ftp://blah/", "mailto:a@b.com", "a.com:80"])
def test_non_http_redirect_uri_is_an_error(uri: str) -> None:
    msg = error_text(f'account "x" {{ redirect_uri = "{uri}"; }}')
    assert msg.endswith("\nnot a valid HTTP or HTTPS URI")


@pytest.mark.parametrize("option", ["auth_uri", "redirect_uri", "token_uri"])
def test_relative_uri_is_an_error(option: str) -> None:
    assert error_text(f'account "x" {{ {option} = "blah"; }}') == (
        "Line 1, column "
        f'{len(option) + 18}:\n  account "x" {{ {option} = "blah"; }}\n'
        "Invalid URI: relative URL without a base"
    )


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://", "Invalid URI: empty host"),
        ("https://:443/", "Invalid URI: empty host"),
        ("ftp://", "Invalid URI: empty host"),
        ("http://a.com:99999/", "Invalid URI: invalid port number"),
        ("http://[::1/", "Invalid URI: invalid IPv6 address"),
        ("http://a b.com/", "Invalid URI: invalid domain character"),
        ("http://1.2.3.256/", "Invalid URI: invalid IPv4 address"),
        ("http://a.com/#", "URI fragments ('#...') are not allowed"),
    ],
)
def test_other_invalid_uris(uri: str, message: str) -> None:
    assert error_text(f'account "x" {{ token_uri = "{uri}"; }}').endswith("\n" + message)


@pytest.mark.parametrize(
    "uri",
    [
        "http://a.com",
        "HTTPS://A.COM:8443/p?q=1",
        "http://user:pw@[::1]:8080/",
        "http://127.0.0.1/",
        "https://login.microsoftonline.com/common/oauth2/v2.0/token",
    ],
)
def test_valid_uris_are_stored_as_written(uri: str) -> None:
    assert only_account(account_with(f'redirect_uri = "{uri}";')).redirect_uri == uri


def test_fragment_in_auth_uri_is_an_error() -> None:
    text = 'account "x" {\n  auth_uri = "http://a.com/#a";\n}'
    assert error_text(text) == (
        "Line 2, column 14:\n"
        '  auth_uri = "http://a.com/#a";\n'
        "URI fragments ('#...') are not allowed"
    )


def test_fragment_in_token_uri_is_reported_before_login_hint_conflict() -> None:
    text = account_with(
        'login_hint = "d";',
        'auth_uri_fields = {"login_hint": "e"};',
        'token_uri = "https://c.com/#c";',
    ).replace('token_uri = "http://c.com";\n', "")
    assert error_text(text).endswith("\nURI fragments ('#...') are not allowed")


# --- redirect vs listeners --------------------------------------------------------------


def test_http_redirect_with_http_listener_off_is_an_error() -> None:
    assert error_text("http_listen = none;" + MINIMAL_ACCOUNT) == (
        "Account x has an 'http' redirect but the HTTP server is set to 'none'"
    )


def test_https_redirect_with_https_listener_off_is_an_error() -> None:
    text = "https_listen = none;" + account_with('redirect_uri = "https://c.com";')
    assert error_text(text) == (
        "Account x has an 'https' redirect but the HTTPS server is set to 'none'"
    )


def test_https_redirect_check_is_case_insensitive() -> None:
    # Gap 27: the original compared case-sensitively, so "HTTPS://" slipped through.
    text = "https_listen = none;" + account_with('redirect_uri = "HTTPS://c.com";')
    assert error_text(text) == (
        "Account x has an 'https' redirect but the HTTPS server is set to 'none'"
    )
    text = "http_listen = none;" + account_with('redirect_uri = "HTTP://c.com";')
    assert error_text(text) == (
        "Account x has an 'http' redirect but the HTTP server is set to 'none'"
    )


def test_redirect_matching_the_remaining_listener_is_fine() -> None:
    conf = parse("http_listen = none;" + account_with('redirect_uri = "https://c.com";'))
    assert conf.http_listen is None
    conf = parse("https_listen = none;" + MINIMAL_ACCOUNT)
    assert conf.https_listen is None


def test_https_listen_with_https_redirect_is_accepted() -> None:
    conf = parse(
        'https_listen = "127.0.0.1:56789";' + account_with('redirect_uri = "https://e.com";')
    )
    assert conf.https_listen == "127.0.0.1:56789"
    assert conf.accounts[0].redirect_uri == "https://e.com"


# --- mandatory fields -------------------------------------------------------------------


def test_mandatory_fields_present_are_parsed() -> None:
    act = only_account(MINIMAL_ACCOUNT)
    assert (act.auth_uri, act.client_id, act.token_uri) == ("http://a.com", "b", "http://c.com")


@pytest.mark.parametrize("missing", ["auth_uri", "client_id", "token_uri"])
def test_missing_mandatory_field_is_an_error(missing: str) -> None:
    lines = [line for line in MINIMAL_ACCOUNT.split("\n") if missing not in line]
    assert error_text("\n".join(lines)) == (
        f'Line 2, column 1:\n  account "x" {{\n{missing} not specified'
    )


def test_mandatory_fields_checked_in_order() -> None:
    assert error_text('account "x" {}').endswith("\nauth_uri not specified")
    assert error_text('account "x" { token_uri = "http://a.com"; }').endswith(
        "\nauth_uri not specified"
    )
    assert error_text('account "x" { auth_uri = "http://a.com"; }').endswith(
        "\nclient_id not specified"
    )


def test_empty_client_id_and_name_are_allowed() -> None:
    act = only_account(
        'account "" { auth_uri = "http://a"; client_id = ""; token_uri = "http://b"; }'
    )
    assert (act.name, act.client_id) == ("", "")


# --- refresh overrides ------------------------------------------------------------------


def refresh_times(act: Account) -> tuple[int, int, int]:
    return (act.refresh_at_least, act.refresh_before_expiry, act.refresh_retry)


def global_refresh_times(conf: Config) -> tuple[int | None, int | None, int | None]:
    return (conf.refresh_at_least, conf.refresh_before_expiry, conf.refresh_retry)


def test_refresh_times_default_when_not_set() -> None:
    conf = parse(MINIMAL_ACCOUNT)
    assert refresh_times(conf.accounts[0]) == (90 * 60, 90, 40)
    defaults = (DEFAULT_REFRESH_AT_LEAST, DEFAULT_REFRESH_BEFORE_EXPIRY, DEFAULT_REFRESH_RETRY)
    assert defaults == (90 * 60, 90, 40)
    assert global_refresh_times(conf) == (None, None, None)


GLOBAL_123 = "refresh_at_least = 1s; refresh_before_expiry = 2s; refresh_retry = 3s;\n"


def test_global_refresh_times_apply_to_accounts() -> None:
    conf = parse(GLOBAL_123 + MINIMAL_ACCOUNT)
    assert refresh_times(conf.accounts[0]) == (1, 2, 3)
    assert global_refresh_times(conf) == (1, 2, 3)


def test_global_refresh_times_after_the_account_still_apply() -> None:
    assert refresh_times(parse(MINIMAL_ACCOUNT + GLOBAL_123).accounts[0]) == (1, 2, 3)


def test_account_refresh_times_are_not_global() -> None:
    conf = parse(
        account_with("refresh_at_least = 1s;", "refresh_before_expiry = 2s;", "refresh_retry = 3s;")
    )
    assert refresh_times(conf.accounts[0]) == (1, 2, 3)
    assert global_refresh_times(conf) == (None, None, None)


def test_account_refresh_times_beat_global_ones() -> None:
    conf = parse(
        GLOBAL_123
        + account_with(
            "refresh_at_least = 4s;", "refresh_before_expiry = 5s;", "refresh_retry = 6s;"
        )
    )
    assert refresh_times(conf.accounts[0]) == (4, 5, 6)


def test_refresh_times_are_resolved_per_account() -> None:
    conf = parse(
        GLOBAL_123
        + account_with(
            "refresh_at_least = 4s;",
            "refresh_before_expiry = 5s;",
            "refresh_retry = 6s;",
            name="x",
        )
        + account_with(
            "refresh_at_least = 7s;",
            "refresh_before_expiry = 8s;",
            "refresh_retry = 9s;",
            name="y",
        )
        + account_with(name="z")
    )
    assert [a.name for a in conf.accounts] == ["x", "y", "z"]
    assert [refresh_times(a) for a in conf.accounts] == [(4, 5, 6), (7, 8, 9), (1, 2, 3)]


def test_zero_intervals_are_accepted_as_written() -> None:
    # Gap 24: the server clamps them; the parser keeps what was written.
    conf = parse(
        "auth_notify_interval = 0s; refresh_retry = 0s;"
        + account_with("refresh_at_least = 0m;", "refresh_before_expiry = 0d;")
    )
    assert conf.auth_notify_interval == 0 and conf.refresh_retry == 0
    assert refresh_times(conf.accounts[0]) == (0, 0, 0)


# --- auth_uri_fields --------------------------------------------------------------------


def test_login_hint_with_auth_uri_fields_login_hint_is_an_error() -> None:
    text = "\n  " + account_with('login_hint = "d";', 'auth_uri_fields = {"login_hint": "e"};')
    assert error_text(text) == (
        "Line 2, column 3:\n"
        '  account "x" {\n'
        "Both the 'login_hint' attribute and a 'auth_uri_fields' field with the name"
        " 'login_hint' are specified. The 'login_hint' attribute is deprecated so remove it."
    )


def test_login_hint_without_conflict_is_kept_separately() -> None:
    act = only_account(account_with('login_hint = "d";', 'auth_uri_fields = {"a": "b"};'))
    assert act.login_hint == "d"
    assert act.auth_uri_fields == (("a", "b"),)


def test_reserved_auth_uri_fields_key_is_an_error() -> None:
    text = 'account "x" {\n  auth_uri_fields = {"a": "b", "state": "e"};\n}'
    assert error_text(text) == (
        "Line 2, column 32:\n"
        '  auth_uri_fields = {"a": "b", "state": "e"};\n'
        "'state' is a reserved key"
    )


@pytest.mark.parametrize(
    "key",
    [
        "access_type",
        "client_id",
        "code_challenge",
        "code_challenge_method",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
    ],
)
def test_all_reserved_keys(key: str) -> None:
    text = account_with(f'auth_uri_fields = {{"{key}": "v"}};')
    assert error_text(text).endswith(f"\n'{key}' is a reserved key")


# --- Other positioned errors -----------------------------------------------------------


def test_auth_error_cmd_renamed() -> None:
    assert error_text('  auth_error_cmd = "x";' + MINIMAL_ACCOUNT) == (
        "Line 1, column 3:\n"
        '  auth_error_cmd = "x";\n'
        "'auth_error_cmd' has been renamed to 'error_notify_cmd'"
    )


def test_bad_uri_full_text() -> None:
    text = 'account "x" {\n\tauth_uri = "ftp://blah/"; // comment\n}'
    assert error_text(text) == (
        'Line 2, column 13:\n  auth_uri = "ftp://blah/"; // comment\nnot a valid HTTP or HTTPS URI'
    )


def test_column_counts_characters_not_bytes() -> None:
    text = 'account "\u00e9\u00e9" { auth_uri = "blah"; }'
    assert error_text(text).startswith("Line 1, column 27:\n")  # 29 if counting bytes


def test_first_error_in_file_order_wins() -> None:
    text = (
        'account "x" { client_id = "a"; }\n'  # auth_uri missing: found first
        'auth_notify_cmd = "a";\nauth_notify_cmd = "b";\n'
    )
    assert error_text(text).endswith("\nauth_uri not specified")
    text = 'auth_notify_cmd = "a";\nauth_notify_cmd = "b";\naccount "x" { }\n'
    assert error_text(text).endswith("\nMustn't specify 'auth_notify_cmd' more than once")


def test_fields_checked_before_mandatory() -> None:
    assert error_text('account "x" { auth_uri_fields = {"scope": "a"}; }').endswith(
        "\n'scope' is a reserved key"
    )


def test_crlf_line_endings() -> None:
    text = MINIMAL_ACCOUNT.replace("\n", "\r\n")
    assert only_account(text).client_id == "b"
    msg = error_text('auth_notify_cmd = "a";\r\nauth_notify_cmd = "b";\r\n')
    assert msg.startswith('Line 2, column 19:\n  auth_notify_cmd = "b";\n')


# --- Grammar details --------------------------------------------------------------------


def test_empty_lists_and_maps() -> None:
    act = only_account(account_with("scopes = [];", "auth_uri_fields = {};"))
    assert act.scopes == () and act.auth_uri_fields == ()


def test_leading_comma_is_accepted() -> None:
    # Gap 28: kept for compatibility with existing config files.
    act = only_account(account_with('scopes = [ , "a", "b"];', 'auth_uri_fields = {, "k": "v"};'))
    assert act.scopes == ("a", "b")
    assert act.auth_uri_fields == (("k", "v"),)


def test_trailing_comma_is_a_syntax_error() -> None:
    assert error_text('account "x" { scopes = ["a", ]; }') == (
        "Parsing error at line 1 column 30. Expected a string, found ']'"
    )
    assert error_text('account "x" { auth_uri_fields = {"a": "b",}; }') == (
        "Parsing error at line 1 column 43. Expected a string, found '}'"
    )


def test_lone_comma_is_a_syntax_error() -> None:
    assert error_text('account "x" { scopes = [,]; }').startswith(
        "Parsing error at line 1 column 26."
    )


def test_no_semicolon_after_account_block() -> None:
    assert error_text(MINIMAL_ACCOUNT + ";").startswith("Parsing error at line 7 column 1.")


def test_comments_and_whitespace_anywhere() -> None:
    text = (
        "// leading comment\n"
        'account//c\n"x"//c\n{//c\nauth_uri//c\n=//c\n"http://a.com"//c\n;//c\n'
        '\tclient_id="b";token_uri="http://c.com";}// trailing, no newline'
    )
    assert only_account(text).auth_uri == "http://a.com"


def test_duplicate_account_block_replaces_earlier() -> None:
    # Gap 6 kept as in the original: the later block wins, at the earlier one's place.
    text = (
        account_with('client_secret = "first";', name="x")
        + account_with(name="y")
        + account_with('client_secret = "second";', name="x")
    )
    conf = parse(text)
    assert [a.name for a in conf.accounts] == ["x", "y"]
    assert conf.account("x").client_secret == "second"  # type: ignore[union-attr]


def test_errors_in_a_replaced_account_block_still_count() -> None:
    text = 'account "x" { }\n' + MINIMAL_ACCOUNT
    assert error_text(text).endswith("\nauth_uri not specified")


# --- Syntax error positions -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Missing ';': points at the next token, not the start of the statement.
        (
            'auth_notify_cmd = "a"\naccount "x" {}',
            "Parsing error at line 2 column 1. Expected ';', found 'account'",
        ),
        (
            'account "x" {\n  client_id = "a"\n  token_uri = "b";\n}',
            "Parsing error at line 3 column 3. Expected ';', found 'token_uri'",
        ),
        # Unknown keywords, at top level and in an account.
        ("\n  foo = 1;", "Parsing error at line 2 column 3. Expected 'account' or a global option"),
        (
            'account "x" {\n    frob = "a";\n}',
            "Parsing error at line 2 column 5. Expected an account option or '}'",
        ),
        # An account option at top level.
        ('auth_uri = "a";', "Parsing error at line 1 column 1. Expected 'account' or a global"),
        # Keywords are case-sensitive.
        ('Account "x" {}', "Parsing error at line 1 column 1."),
        # '#' is not a comment.
        ("# comment\n" + MINIMAL_ACCOUNT, "Parsing error at line 1 column 1."),
        # Unterminated string: the stray quote is the error.
        (
            'account "x" {\n  auth_uri = "http://a.com;\n}',
            "Parsing error at line 2 column 14. Expected a string, found '\"'",
        ),
        # Wrong kind of value.
        ('auth_notify_interval = "5s";', "Parsing error at line 1 column 24. Expected a time"),
        ("http_listen = 5s;", "Parsing error at line 1 column 15. Expected 'none' or a string"),
        ("auth_notify_interval = 5ms;", "Parsing error at line 1 column 26. Expected ';'"),
        ("auth_notify_interval = 5;", "Parsing error at line 1 column 24. Expected a time"),
        # Old option name: the keyword is `refresh_retry`, then stray text.
        ("refresh_retry_interval = 5s;", "Parsing error at line 1 column 14. Expected '='"),
        # Missing '}' at end of input.
        ('account "x" {', "Parsing error at line 1 column 14. Expected an account option or '}'"),
        # Tabs count as one column.
        ("\t\tfoo", "Parsing error at line 1 column 3."),
        # Non-ASCII counts as one column.
        ('account "\u00e9\u00e9" { \u00e9', "Parsing error at line 1 column 16."),
    ],
)
def test_syntax_error_position(text: str, expected: str) -> None:
    assert error_text(text).startswith(expected)


def test_syntax_error_at_end_of_input() -> None:
    assert error_text('auth_notify_cmd = "a"') == (
        "Parsing error at line 1 column 22. Expected ';', found end of input"
    )


def test_only_the_first_syntax_error_is_reported() -> None:
    assert "\n" not in error_text("foo;\nbar;\nbaz;")


def test_syntax_errors_before_semantic_errors() -> None:
    text = 'auth_error_cmd = "a";\nfoo'
    assert error_text(text).startswith("Parsing error at line 2 column 1.")


# --- load() -----------------------------------------------------------------------------


def test_load(tmp_path) -> None:
    path = tmp_path / "pizauth.conf"
    path.write_bytes(VALID_CONFIG.replace("\n", "\r\n").encode())
    assert load(str(path)) == parse(VALID_CONFIG)


def test_load_keeps_carriage_returns_in_strings(tmp_path) -> None:
    path = tmp_path / "pizauth.conf"
    path.write_bytes(account_with('client_secret = "a\r\nb";').encode())
    assert load(str(path)).accounts[0].client_secret == "a\r\nb"


def test_load_missing_file(tmp_path) -> None:
    path = tmp_path / "missing.conf"
    with pytest.raises(ConfigError) as exc_info:
        load(str(path))
    assert str(exc_info.value) == (f'Can\'t read "{path}": No such file or directory (os error 2)')


def test_load_directory(tmp_path) -> None:
    with pytest.raises(ConfigError) as exc_info:
        load(str(tmp_path))
    assert str(exc_info.value).startswith(f'Can\'t read "{tmp_path}": ')


def test_load_invalid_utf8(tmp_path) -> None:
    path = tmp_path / "pizauth.conf"
    path.write_bytes(MINIMAL_ACCOUNT.encode() + b"// \xff\xfe\n")
    with pytest.raises(ConfigError) as exc_info:
        load(str(path))
    assert str(exc_info.value) == f'Can\'t read "{path}": stream did not contain valid UTF-8'


def test_load_propagates_config_errors(tmp_path) -> None:
    path = tmp_path / "pizauth.conf"
    path.write_text("")
    with pytest.raises(ConfigError) as exc_info:
        load(str(path))
    # The file is named once, before the parser's own text.
    assert str(exc_info.value) == f"{path}: Must specify at least one account"


def test_load_names_the_file_before_a_positioned_error(tmp_path) -> None:
    path = tmp_path / "pizauth.conf"
    path.write_text('account "x" {\n  auth_uri = "http://a.com";\n}\n')
    with pytest.raises(ConfigError) as exc_info:
        load(str(path))
    assert str(exc_info.value) == (
        f'{path}: Line 1, column 1:\n  account "x" {{\nclient_id not specified'
    )


# --- hints for common mistakes ----------------------------------------------------------


@pytest.mark.parametrize(
    "text,line_col",
    [
        ("# comment\n" + MINIMAL_ACCOUNT, "line 1 column 1"),
        ("  # indented\n" + MINIMAL_ACCOUNT, "line 1 column 3"),
        ('account "x" {\n  # client_id = "b";\n}', "line 2 column 3"),
        (MINIMAL_ACCOUNT + 'auth_notify_cmd = "a"; # trailing', "line 7 column 24"),
    ],
)
def test_hash_comment_gets_a_hint(text: str, line_col: str) -> None:
    msg = error_text(text)
    assert msg.startswith(f"Parsing error at {line_col}. ")
    assert msg.endswith(" (comments start with //)")


def test_other_syntax_errors_get_no_comment_hint() -> None:
    assert "comments" not in error_text("foo;")
    assert "comments" not in error_text('auth_notify_cmd = "#";\nfoo')


def test_unterminated_string_is_reported_where_it_starts() -> None:
    # The closing quote is missing on line 2; the string runs on and takes line 3's
    # opening quote as its end, so the grammar only fails on line 3.
    text = 'account "x" {\n  auth_uri = "http://a.com;\n  client_id = "b";\n}'
    assert error_text(text) == (
        "Parsing error at line 2 column 14. A string starts here and runs on to line 3: "
        "if it should end on this line, its closing '\"' is missing "
        "(at line 3 column 16: Expected ';', found 'b')"
    )


def test_unterminated_last_string_is_reported_where_it_starts() -> None:
    msg = error_text('auth_notify_cmd = "a";\nerror_notify_cmd = "b;\n')
    assert msg.startswith("Parsing error at line 2 column 20. Expected a string, found '\"'")
    assert "not closed" in msg


def test_a_closed_string_spanning_lines_is_not_blamed_for_a_later_error() -> None:
    # Only blanks between the string's end and the error make the string suspect.
    text = 'auth_notify_cmd = "a\nb";\nfoo'
    assert error_text(text).startswith("Parsing error at line 3 column 1. Expected")


def test_twenty_accounts_parse_quickly() -> None:
    import time

    text = "".join(
        account_with(
            'auth_uri_fields = {"login_hint": "u@example.com", "prompt": "consent"};',
            'scopes = ["https://mail.example.com/", "offline_access"];',
            'client_secret = "s"; refresh_at_least = 30m; // comment',
            name=f"acct{i}",
        )
        for i in range(20)
    )
    parse(text)  # builds the grammar
    start = time.perf_counter()
    conf = parse(text)
    assert len(conf.accounts) == 20
    # Generous bound (CI machines vary); typically ~15-30 ms.
    assert time.perf_counter() - start < 0.5


# --- options newer than pizauth 1.1 -------------------------------------------------------

DEVICE_ACCOUNT = """
account "d" {
    auth_flow = "device";
    device_auth_uri = "https://login.example.com/devicecode";
    token_uri = "https://login.example.com/token";
    client_id = "c";
}
"""


def device_account_with(*fields: str) -> str:
    return DEVICE_ACCOUNT.replace("}", "\n".join(fields) + "\n}")


def test_a_1_1_config_has_the_old_meaning() -> None:
    conf = parse(VALID_CONFIG)
    act = conf.accounts[0]
    assert (act.auth_flow, act.device_auth_uri, act.issuer, act.revoke_uri) == (
        "code",
        None,
        None,
        None,
    )
    assert act.client_secret_cmd is None
    assert act.token_endpoint_auth_method == "client_secret_post"
    assert conf.token_store is None and conf.token_store_key_cmd is None
    # Every field pizauth 1.1 knows keeps its value; the new ones are only defaults.
    assert act == dataclasses.replace(act, auth_flow="code", revoke_uri=None)


def test_device_account() -> None:
    act = only_account(DEVICE_ACCOUNT)
    assert act.auth_flow == "device"
    assert act.device_auth_uri == "https://login.example.com/devicecode"
    assert act.token_uri == "https://login.example.com/token"
    assert act.auth_uri is None


def test_explicit_code_flow() -> None:
    assert only_account(account_with('auth_flow = "code";')).auth_flow == "code"


@pytest.mark.parametrize("flow", ["", "Device", "implicit", "device "])
def test_unknown_auth_flow(flow: str) -> None:
    assert error_text(account_with(f'auth_flow = "{flow}";')) == (
        f'Line 5, column 13:\n  auth_flow = "{flow}";\nauth_flow must be "code" or "device"'
    )


def test_device_account_needs_device_auth_uri() -> None:
    text = DEVICE_ACCOUNT.replace('device_auth_uri = "https://login.example.com/devicecode";', "")
    assert error_text(text) == 'Line 2, column 1:\n  account "d" {\ndevice_auth_uri not specified'


def test_device_account_needs_token_uri_and_client_id() -> None:
    no_token = DEVICE_ACCOUNT.replace('token_uri = "https://login.example.com/token";', "")
    assert error_text(no_token).endswith("\ntoken_uri not specified")
    no_client = DEVICE_ACCOUNT.replace('client_id = "c";', "")
    assert error_text(no_client).endswith("\nclient_id not specified")


@pytest.mark.parametrize(
    "statement",
    [
        'auth_uri = "http://a.com";',
        'redirect_uri = "http://localhost/";',
        'auth_uri_fields = {"a": "b"};',
        'login_hint = "u";',
    ],
)
def test_device_account_rejects_code_flow_options(statement: str) -> None:
    key = statement.split(" ")[0]
    assert error_text(device_account_with(statement)) == (
        f"Line 7, column 1:\n  {statement}\n'{key}' can't be used with auth_flow = \"device\""
    )


def test_first_misplaced_option_in_the_file_is_reported() -> None:
    text = device_account_with('redirect_uri = "http://localhost/";', 'auth_uri = "http://a";')
    assert error_text(text).endswith("\n'redirect_uri' can't be used with auth_flow = \"device\"")


def test_auth_flow_after_the_misplaced_option_still_counts() -> None:
    text = 'account "d" {\n  auth_uri = "http://a";\n  auth_flow = "device";\n}'
    assert error_text(text) == (
        "Line 2, column 3:\n"
        '  auth_uri = "http://a";\n'
        "'auth_uri' can't be used with auth_flow = \"device\""
    )


def test_code_account_rejects_device_auth_uri() -> None:
    text = account_with('device_auth_uri = "https://d.com/";')
    assert error_text(text) == (
        "Line 5, column 1:\n"
        '  device_auth_uri = "https://d.com/";\n'
        "'device_auth_uri' can't be used with auth_flow = \"code\""
    )


@pytest.mark.parametrize("option", ["device_auth_uri", "revoke_uri"])
@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("blah", "Invalid URI: relative URL without a base"),
        ("ftp://a.com/", "not a valid HTTP or HTTPS URI"),
        ("http://a.com/#x", "URI fragments ('#...') are not allowed"),
        ("http://", "Invalid URI: empty host"),
    ],
)
def test_new_uri_options_follow_the_uri_rules(option: str, uri: str, message: str) -> None:
    text = device_account_with(f'{option} = "{uri}";').replace(
        'device_auth_uri = "https://login.example.com/devicecode";', ""
    )
    col = len(option) + 4
    assert error_text(text) == f'Line 7, column {col}:\n  {option} = "{uri}";\n{message}'


def test_device_only_config_may_turn_both_listeners_off() -> None:
    conf = parse("http_listen = none;\nhttps_listen = none;\n" + DEVICE_ACCOUNT)
    assert (conf.http_listen, conf.https_listen) == (None, None)
    # A device account's (unset) redirect needs no listener either.
    conf = parse("http_listen = none;\n" + DEVICE_ACCOUNT)
    assert conf.http_listen is None


def test_any_code_account_still_needs_a_listener() -> None:
    text = "http_listen = none;\nhttps_listen = none;\n" + DEVICE_ACCOUNT + MINIMAL_ACCOUNT
    assert error_text(text) == "Cannot set both http_listen and https_listen to 'none'"
    text = "http_listen = none;\n" + DEVICE_ACCOUNT + MINIMAL_ACCOUNT
    assert error_text(text) == (
        "Account x has an 'http' redirect but the HTTP server is set to 'none'"
    )


# issuer


def test_issuer_lets_endpoints_come_from_metadata() -> None:
    act = only_account('account "g" { issuer = "https://accounts.google.com"; client_id = "c"; }')
    assert act.issuer == "https://accounts.google.com"
    assert act.auth_uri is act.token_uri is act.revoke_uri is None
    dev = only_account(
        'account "g" { auth_flow = "device"; issuer = "https://i.com"; client_id = "c"; }'
    )
    assert dev.device_auth_uri is None and dev.token_uri is None


def test_issuer_does_not_replace_client_id() -> None:
    text = 'account "g" { issuer = "https://accounts.google.com"; }'
    assert error_text(text).endswith("\nclient_id not specified")


def test_endpoints_written_with_an_issuer_are_kept() -> None:
    act = only_account(account_with('issuer = "https://i.com";', 'revoke_uri = "https://r/";'))
    assert (act.auth_uri, act.token_uri, act.revoke_uri) == (
        "http://a.com",
        "http://c.com",
        "https://r/",
    )


@pytest.mark.parametrize(
    "issuer",
    [
        "https://login.microsoftonline.com/common/v2.0",
        "HTTPS://i.com",
        "http://127.0.0.1:8080",
        "http://localhost:1/realm",
        "http://LOCALHOST/",
    ],
)
def test_valid_issuers(issuer: str) -> None:
    assert only_account(account_with(f'issuer = "{issuer}";')).issuer == issuer


@pytest.mark.parametrize(
    ("issuer", "message"),
    [
        ("http://i.com", "issuer must be an https URL (http only for 127.0.0.1 or localhost)"),
        ("http://localhost.evil.com/", "issuer must be an https URL"),
        ("http://127.0.0.2/", "issuer must be an https URL"),
        ("http://127.0.0.1@evil.com/", "issuer must not contain a user name or password"),
        ("https://u:p@i.com/", "issuer must not contain a user name or password"),
        ("https://i.com/?a=b", "issuer must not have a query ('?...')"),
        ("https://i.com/?", "issuer must not have a query ('?...')"),
        ("https://i.com/#", "URI fragments ('#...') are not allowed"),
        ("ftp://i.com/", "not a valid HTTP or HTTPS URI"),
        ("i.com", "Invalid URI: relative URL without a base"),
        ("https://127.0.0.1\\\\@evil.com/", "issuer must be a plain https URL"),
        ("https://i.com/a b", "issuer must be a plain https URL"),
        ("https://i.com/\u00e9", "issuer must be a plain https URL"),
        (" https://i.com/", "issuer must be a plain https URL"),
    ],
)
def test_invalid_issuers(issuer: str, message: str) -> None:
    msg = error_text(account_with(f'issuer = "{issuer}";'))
    assert msg.startswith(f'Line 5, column 10:\n  issuer = "{issuer}'), msg
    assert msg.split("\n")[2].startswith(message)


def test_without_issuer_endpoints_are_still_mandatory() -> None:
    assert error_text('account "x" { client_id = "c"; }').endswith("\nauth_uri not specified")
    text = 'account "x" { auth_flow = "code"; revoke_uri = "http://r"; auth_uri = "http://a"; }'
    assert error_text(text).endswith("\nclient_id not specified")


# client_secret_cmd and token_endpoint_auth_method


def test_client_secret_cmd() -> None:
    act = only_account(account_with('client_secret_cmd = "pass show oauth/x";'))
    assert act.client_secret_cmd == "pass show oauth/x"
    assert act.client_secret is None


@pytest.mark.parametrize(
    ("first", "second"),
    [("client_secret", "client_secret_cmd"), ("client_secret_cmd", "client_secret")],
)
def test_client_secret_and_cmd_are_exclusive(first: str, second: str) -> None:
    text = account_with(f'{first} = "a";', f'{second} = "b";')
    assert error_text(text) == (
        f"Line 6, column {len(second) + 4}:\n"
        f'  {second} = "b";\n'
        f"Mustn't specify both '{first}' and '{second}'"
    )


def test_empty_client_secret_cmd() -> None:
    msg = error_text(account_with('client_secret_cmd = "";'))
    assert msg.endswith("\nclient_secret_cmd must not be empty")


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
def test_token_endpoint_auth_methods(method: str) -> None:
    act = only_account(
        account_with(f'token_endpoint_auth_method = "{method}";', 'client_secret = "s";')
    )
    assert act.token_endpoint_auth_method == method


@pytest.mark.parametrize("method", ["", "none", "private_key_jwt", "CLIENT_SECRET_BASIC"])
def test_unknown_token_endpoint_auth_method(method: str) -> None:
    assert error_text(account_with(f'token_endpoint_auth_method = "{method}";')) == (
        f'Line 5, column 30:\n  token_endpoint_auth_method = "{method}";\n'
        'token_endpoint_auth_method must be "client_secret_post" or "client_secret_basic"'
    )


def test_basic_auth_needs_a_secret() -> None:
    text = account_with('token_endpoint_auth_method = "client_secret_basic";')
    assert error_text(text) == (
        "Line 5, column 1:\n"
        '  token_endpoint_auth_method = "client_secret_basic";\n'
        "client_secret_basic needs client_secret or client_secret_cmd"
    )
    act = only_account(text.replace("}", 'client_secret_cmd = "x";\n}'))
    assert act.token_endpoint_auth_method == "client_secret_basic"


def test_keyword_prefixes_are_not_confused() -> None:
    # "client_secret" is a prefix of "client_secret_cmd", "token_store" of its key command.
    conf = parse(
        'token_store_key_cmd = "k";\ntoken_store = "/s";\n'
        + account_with('client_secret_cmd = "c";')
    )
    assert conf.accounts[0].client_secret_cmd == "c"
    assert (conf.token_store, conf.token_store_key_cmd) == ("/s", "k")


# token_store


@pytest.mark.parametrize("path", ["/var/lib/pizauth/tokens", "~/.local/state/pizauth/tokens"])
def test_token_store(path: str) -> None:
    conf = parse(f'token_store = "{path}"; token_store_key_cmd = "cat key";' + MINIMAL_ACCOUNT)
    assert (conf.token_store, conf.token_store_key_cmd) == (path, "cat key")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tokens", "token_store must be an absolute path or start with '~/'"),
        ("", "token_store must be an absolute path or start with '~/'"),
        ("~", "token_store must be an absolute path or start with '~/'"),
        ("~root/t", "token_store must be an absolute path or start with '~/'"),
        ("./t", "token_store must be an absolute path or start with '~/'"),
        ("/", "token_store must name a file, not a directory"),
        ("~/", "token_store must name a file, not a directory"),
        ("/var/lib/", "token_store must name a file, not a directory"),
        ("/var/..", "token_store must name a file, not a directory"),
        ("/a\0b", "token_store must not contain a NUL character"),
    ],
)
def test_invalid_token_store(path: str, message: str) -> None:
    text = f'token_store = "{path}";\ntoken_store_key_cmd = "k";' + MINIMAL_ACCOUNT
    assert error_text(text) == f'Line 1, column 15:\n  token_store = "{path}";\n{message}'


def test_token_store_needs_its_key_cmd_and_vice_versa() -> None:
    assert error_text('token_store = "/t";' + MINIMAL_ACCOUNT) == (
        'Line 1, column 1:\n  token_store = "/t";\n'
        "token_store_key_cmd not specified (needed with token_store)"
    )
    assert error_text('\ntoken_store_key_cmd = "k";' + MINIMAL_ACCOUNT) == (
        'Line 2, column 1:\n  token_store_key_cmd = "k";\n'
        "token_store not specified (needed with token_store_key_cmd)"
    )


def test_empty_token_store_key_cmd() -> None:
    text = 'token_store = "/t"; token_store_key_cmd = "";' + MINIMAL_ACCOUNT
    assert error_text(text).endswith("\ntoken_store_key_cmd must not be empty")


def test_token_store_is_global_only() -> None:
    assert error_text(account_with('token_store = "/t";')).startswith("Parsing error at line 5")


@pytest.mark.parametrize(
    "option", ["auth_flow", "issuer", "client_secret_cmd", "token_endpoint_auth_method"]
)
def test_new_options_may_not_repeat(option: str) -> None:
    value = {"auth_flow": "code", "token_endpoint_auth_method": "client_secret_post"}.get(
        option, "https://i.com"
    )
    msg = error_text(account_with(f'{option} = "{value}";', f'{option} = "{value}";'))
    assert msg.endswith(f"\nMustn't specify '{option}' more than once")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("auth_flow", "device"),
        ("device_auth_uri", "https://d/"),
        ("issuer", "https://i/"),
        ("client_secret_cmd", "c"),
        ("token_endpoint_auth_method", "client_secret_basic"),
        ("revoke_uri", "https://r/"),
        ("token_uri", "https://t2/"),
    ],
)
def test_security_key_covers_new_fields(field: str, value: str) -> None:
    act = parse(VALID_CONFIG).accounts[0]
    assert dataclasses.replace(act, **{field: value}).security_key() != act.security_key()
