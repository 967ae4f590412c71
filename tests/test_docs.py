"""The documents cannot drift from the code or break as they render.

- docs/protocol.md lists every message type of `pizauth/ipc.py` (`MsgType`), each under
  a heading `TYPE NAME (Class)`, with a table of the dataclass's fields in their order;
- every Markdown table in README.md and docs/ has as many cells in each row as in its
  header, and no table row stands outside a table (a paragraph or a blank line in the
  middle of a table ends it, and GitHub shows the rows after it as text);
- every relative link in README.md and docs/ names a file that exists and, with a
  `#anchor`, a heading of that file.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pizauth import ipc

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
PROTOCOL = ROOT / "docs" / "protocol.md"


def prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) of a Markdown document outside its fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"^ *(```|~~~)", line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


# -- docs/protocol.md against pizauth/ipc.py ---------------------------------------------------

MESSAGE_HEADING = re.compile(r"^#+ (\d+) `([A-Z_]+)` \(`(\w+)`\)$")


@dataclasses.dataclass(frozen=True)
class Documented:
    number: int
    name: str
    cls: str
    fields: tuple[str, ...]
    has_table: bool
    says_no_fields: bool


def documented_messages(text: str) -> list[Documented]:
    """Each message heading with the first column of the table in its section."""
    found: list[Documented] = []
    lines = prose(text)
    for i, (_, line) in enumerate(lines):
        heading = MESSAGE_HEADING.match(line)
        if not heading:
            continue
        body = []
        for _, after in lines[i + 1 :]:
            if after.startswith("#"):
                break
            body.append(after)
        rows = [r for r in body if r.startswith("|")]
        names = tuple(
            re.fullmatch(r"`(\w+)`", cells(r)[0]).group(1)  # type: ignore[union-attr]
            for r in rows[2:]
            if re.fullmatch(r"`(\w+)`", cells(r)[0])
        )
        assert len(names) == len(rows[2:]), f"{heading.group(2)}: a row names no field"
        found.append(
            Documented(
                int(heading.group(1)),
                heading.group(2),
                heading.group(3),
                names,
                bool(rows),
                any(r.startswith("No fields.") for r in body),
            )
        )
    return found


def message_class(msg_type: ipc.MsgType) -> type:
    """The message dataclass of `msg_type`: the one class in pizauth.ipc that declares it as
    its TYPE (a subclass that only marks the frame secret, CmdSecretReply, declares none)."""
    classes = {
        cls
        for cls in vars(ipc).values()
        if isinstance(cls, type)
        and dataclasses.is_dataclass(cls)
        and vars(cls).get("TYPE") is msg_type
    }
    assert len(classes) == 1, f"{msg_type.name}: message classes {classes}"
    return classes.pop()


def field_names(cls: type) -> tuple[str, ...]:
    # dataclasses.fields() leaves out ClassVars (TYPE, LIMITS): only what travels.
    return tuple(f.name for f in dataclasses.fields(cls))


def test_protocol_lists_every_message_type_once() -> None:
    documented = documented_messages(PROTOCOL.read_text())
    pairs = [(d.number, d.name) for d in documented]
    assert sorted(pairs) == sorted((t.value, t.name) for t in ipc.MsgType)
    assert len(set(pairs)) == len(pairs), "a message documented twice"


@pytest.mark.parametrize("msg_type", list(ipc.MsgType), ids=lambda t: t.name)
def test_protocol_gives_each_message_its_class_and_fields_in_order(
    msg_type: ipc.MsgType,
) -> None:
    [doc] = [d for d in documented_messages(PROTOCOL.read_text()) if d.name == msg_type.name]
    cls = message_class(msg_type)
    assert doc.cls == cls.__name__
    assert doc.fields == field_names(cls)
    if not field_names(cls):
        assert doc.says_no_fields and not doc.has_table


def test_the_protocol_check_sees_a_drift() -> None:
    """A field missing from the document, or two fields in the wrong order, no longer
    match the dataclass."""
    text = PROTOCOL.read_text()
    expected = field_names(ipc.NetRevokeResult)
    assert documented(text)["NET_REVOKE_RESULT"].fields == expected
    retry = "| `retry_after` | 4 | as in `NET_TOKEN_RESULT` |\n"
    error = "| `provider_error` | `MAX_ERROR_CODE` | the provider's OAuth error code |\n"
    assert error + retry in text
    dropped = text.replace(error + retry, error, 1)
    assert documented(dropped)["NET_REVOKE_RESULT"].fields != expected
    swapped = text.replace(error + retry, retry + error, 1)
    assert documented(swapped)["NET_REVOKE_RESULT"].fields != expected


def documented(text: str) -> dict[str, Documented]:
    return {d.name: d for d in documented_messages(text)}


# -- tables --------------------------------------------------------------------------------------

DELIMITER = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")


def cells(row: str) -> list[str]:
    """A table row's cells. GitHub splits a row at every `|` not escaped with a
    backslash, inside a code span too."""
    inner = row.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [c.strip() for c in re.split(r"(?<!\\)\|", inner)]


def table_problems(text: str) -> list[str]:
    problems = []
    lines = prose(text)
    i = 0
    while i < len(lines):
        number, line = lines[i]
        following = lines[i + 1][1] if i + 1 < len(lines) else ""
        if line.startswith("|") and DELIMITER.match(following):
            width = len(cells(line))
            if len(cells(following)) != width:
                problems.append(f"line {number + 1}: delimiter row of another width")
            i += 2
            while i < len(lines) and lines[i][1].startswith("|"):
                if len(cells(lines[i][1])) != width:
                    problems.append(
                        f"line {lines[i][0]}: {len(cells(lines[i][1]))} cells, header {width}"
                    )
                i += 1
            continue
        if line.startswith("|"):
            problems.append(f"line {number}: a table row outside a table")
        i += 1
    return problems


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_renders(doc: Path) -> None:
    assert table_problems(doc.read_text()) == []


def test_the_table_check_sees_what_breaks_a_table() -> None:
    good = "| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert table_problems(good) == []
    assert table_problems("| a | b |\n|---|---|\n| 1 | 2 | 3 |\n") == ["line 3: 3 cells, header 2"]
    assert table_problems("| a | b |\n|---|---|\n| `x|y` | 2 |\n") == ["line 3: 3 cells, header 2"]
    assert table_problems("| a | b |\n|---|---|\n| `x\\|y` | 2 |\n") == []
    # A paragraph in the middle of a table: the rows after it are text.
    assert table_problems(good + "A paragraph.\n| 3 | 4 |\n") == [
        "line 5: a table row outside a table"
    ]
    assert table_problems("```\n| not | a table |\n```\n") == []


# -- relative links --------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation but `-`
    and `_` dropped, spaces made `-`, and `-1`, `-2`... on repeats."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose(text):
        heading = re.match(r"^#{1,6} +(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def link_problems(doc: Path) -> list[str]:
    problems = []
    for number, line in prose(doc.read_text()):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto: and the like
            path, _, anchor = target.partition("#")
            where = (doc.parent / path).resolve() if path else doc
            if not where.exists():
                problems.append(f"line {number}: {target}: no such file")
            elif anchor and where.suffix == ".md" and anchor not in anchors(where.read_text()):
                problems.append(f"line {number}: {target}: no such heading")
    return problems


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    assert link_problems(doc) == []


def test_the_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## Surviving reboots\n\n## A `code` (b)\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Top\n\n"
        "[ok](other.md) [ok](other.md#surviving-reboots) [ok](#top) [ok](other.md#a-code-b)\n"
        "[web](https://example.com/nowhere) `[code](nowhere.md)`\n"
        "[gone](nowhere.md)\n"
        "[bad](other.md#no-such-heading) [bad](#nothing)\n"
    )
    assert link_problems(doc) == [
        "line 5: nowhere.md: no such file",
        "line 6: other.md#no-such-heading: no such heading",
        "line 6: #nothing: no such heading",
    ]
