"""Adding feeds to ``feeds.toml`` without disturbing what the user wrote there.

The existing text is kept byte for byte: new ``[[feeds]]`` tables are built with tomlkit and
appended at the end of the file (``[[feeds]]`` headers anywhere in a TOML file add to the same
array). Re-serialising the whole document through tomlkit would be shorter, but tomlkit moves
tables and comments around when an array of tables is not the last thing in the file, and
produces invalid TOML for a file without a final newline. The result is re-read with tomllib and
compared before anything is written, and the write is atomic (temporary file + ``os.replace``).
"""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomlkit
import tomlkit.exceptions
import tomlkit.items

from tasks.feeds import FeedSpec
from warehouse.files import fsync_dir


class FeedListError(Exception):
    """``feeds.toml`` cannot be read or extended (bad TOML, ``feeds`` not a list, …)."""


@dataclass
class AddResult:
    added: list[FeedSpec] = field(default_factory=list)
    present: list[FeedSpec] = field(default_factory=list)  # URL already in the list (or given twice)
    invalid: list[tuple[FeedSpec, str]] = field(default_factory=list)  # with the reason


# --------------------------------------------------------------------------- values


def feed_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a feed URL, or None when it can (http/https with a host)."""
    if not url:
        return "empty URL"
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return "URL contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:  # e.g. a broken IPv6 literal
        return f"invalid URL: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme or '(none)'!r} is not allowed, only http and https"
    if not host:
        return "URL has no host"
    return None


def clean_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Stripped, non-empty, each once, in their first order."""
    return tuple(dict.fromkeys(t.strip() for t in tags if t and t.strip()))


def clean_spec(spec: FeedSpec) -> FeedSpec:
    name = (spec.name or "").strip() or None
    return FeedSpec(url=spec.url.strip(), name=name, tags=clean_tags(spec.tags))


# --------------------------------------------------------------------------- reading


def read_text(path: Path) -> str:
    """The file's text; a missing file is an empty list."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedListError(f"cannot read {path}: {exc}") from exc


def _parse(text: str, path: Path) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise FeedListError(f"{path} is not valid TOML: {exc}") from exc


def existing_urls(doc: tomlkit.TOMLDocument) -> set[str]:
    """URLs already in the list, compared after stripping whitespace (as ``load_feed_list`` does)."""
    feeds = doc.get("feeds", [])
    if not isinstance(feeds, list):
        raise FeedListError(f"'feeds' must be a list of tables, not {type(feeds).__name__}")
    return {
        item["url"].strip() for item in feeds if isinstance(item, dict) and isinstance(item.get("url"), str)
    }


def load_urls(path: Path) -> set[str]:
    return existing_urls(_parse(read_text(path), path))


# --------------------------------------------------------------------------- appending


def _as_plain(spec: FeedSpec) -> dict[str, Any]:
    """The table for one feed: url, name when there is one, tags when there are any."""
    item: dict[str, Any] = {"url": spec.url}
    if spec.name:
        item["name"] = spec.name
    if spec.tags:
        item["tags"] = list(spec.tags)
    return item


def _fragment(specs: list[FeedSpec]) -> str:
    """``[[feeds]]`` tables for ``specs``, serialised by tomlkit (quoting and escapes are its job)."""
    doc = tomlkit.document()
    aot = tomlkit.aot()
    for spec in specs:
        table = tomlkit.table()
        table.update(_as_plain(spec))
        aot.append(table)
    doc.append("feeds", aot)
    return tomlkit.dumps(doc)


def append_feeds(text: str, specs: list[FeedSpec], path: Path = Path("feeds.toml")) -> str:
    """``text`` with ``specs`` appended to its feed list; the existing text is left as it was."""
    doc = _parse(text, path)
    feeds = doc.get("feeds")
    if feeds is not None and not isinstance(feeds, tomlkit.items.AoT | tomlkit.items.Array):
        raise FeedListError(f"{path}: 'feeds' must be a list of tables")
    if isinstance(feeds, tomlkit.items.Array):
        # ``feeds = [{…}, …]`` is a static array: TOML forbids adding [[feeds]] tables to it,
        # so the new entries go into the array itself.
        for spec in specs:
            inline = tomlkit.inline_table()
            inline.update(_as_plain(spec))
            feeds.append(inline)
        new_text = tomlkit.dumps(doc)
    else:
        newline = "\r\n" if "\r\n" in text else "\n"
        fragment = _fragment(specs).replace("\n", newline)
        if text and not text.endswith("\n"):
            text += newline
        separator = newline if text.strip() else ""
        new_text = text + separator + fragment
    _check_appended(text, new_text, specs, path)
    return new_text


def _check_appended(old: str, new: str, specs: list[FeedSpec], path: Path) -> None:
    """The new text must read back as the old list plus the new tables, nothing else changed."""
    try:
        before, after = tomllib.loads(old), tomllib.loads(new)
    except tomllib.TOMLDecodeError as exc:
        raise FeedListError(f"{path}: appending would produce invalid TOML ({exc}); nothing written") from exc
    expected = dict(before)
    expected["feeds"] = list(before.get("feeds", [])) + [_as_plain(s) for s in specs]
    if after != expected:
        raise FeedListError(f"{path}: appending would change existing content; nothing written")


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temporary file in the same directory and ``os.replace``: readers see the old
    file or the new one, never half of one. A symlinked file is written through, not replaced,
    and an existing file keeps its permission bits."""
    target = path.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        mode: int | None = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = None
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    # 0o666 lets the umask decide for a new file, as open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def add_feeds(path: Path, specs: Iterable[FeedSpec]) -> AddResult:
    """Append every valid feed of ``specs`` whose URL is not in ``path`` yet; one write at most."""
    text = read_text(path)
    known = existing_urls(_parse(text, path))
    result = AddResult()
    for spec in map(clean_spec, specs):
        problem = feed_url_problem(spec.url)
        if problem:
            result.invalid.append((spec, problem))
        elif spec.url in known:
            result.present.append(spec)
        else:
            known.add(spec.url)
            result.added.append(spec)
    if result.added:
        write_atomic(path, append_feeds(text, result.added, path))
    return result
