"""OPML subscription lists in and out: plain functions over bytes, no network, no Prefect.

Reading goes through listparser, which is always handed bytes: given a ``str`` that starts with
``http://`` or ``https://`` it would fetch that URL itself, outside the guarded fetcher.
Writing uses xml.etree, which escapes attribute values.
"""

from __future__ import annotations

import codecs
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import format_datetime

import listparser

from tasks.feeds import FeedSpec

DEFAULT_TITLE = "newsflow feeds"

_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>", re.I)
_XML_DECL_ENCODING = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']", re.I)
# Characters XML 1.0 does not allow anywhere, escaped or not.
_NOT_XML_CHARS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


class OpmlError(ValueError):
    """The document is not an OPML subscription list."""


# --------------------------------------------------------------------------- reading


def _decode(data: bytes) -> str:
    """The document as text: BOM first, then the XML declaration's encoding, else UTF-8."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace")
    match = _XML_DECL_ENCODING.match(data)
    encoding = match.group(1).decode("ascii") if match else "utf-8"
    try:
        return data.decode(encoding, errors="replace")
    except LookupError:  # an encoding name Python does not know
        return data.decode("utf-8", errors="replace")


def _as_utf8(data: bytes) -> bytes:
    """Re-encode as UTF-8 with a BOM and no XML declaration.

    listparser parses with lxml's *HTML* parser, which ignores the XML declaration and reads a
    document without a BOM as Latin-1: "Café" in plain UTF-8 would come back as "CafÃ©".
    """
    text = _XML_DECL.sub("", _decode(data), count=1)
    return codecs.BOM_UTF8 + text.encode("utf-8")


def _tags(categories: Iterable[Iterable[str]]) -> tuple[str, ...]:
    """listparser's ``categories`` are paths: the enclosing folders (``["News", "World"]``) and each
    entry of a ``category="/Tech/AI,solo"`` attribute. Every folder or path element becomes a tag."""
    return tuple(dict.fromkeys(part.strip() for path in categories for part in path if part.strip()))


def read_opml(data: bytes) -> list[FeedSpec]:
    """Every feed outline of an OPML 1.0/2.0 document, in document order (URLs as written,
    unvalidated: checking them is the caller's job). Raises :class:`OpmlError` when the document
    is not OPML."""
    result = listparser.parse(_as_utf8(data))  # bytes: listparser must never fetch
    if not str(result.get("version", "")).startswith("opml"):
        reason = result.get("bozo_exception")
        raise OpmlError("not an OPML document" + (f" ({reason})" if reason else ""))
    specs = []
    for feed in result["feeds"]:
        url = (feed.get("url") or "").strip()
        name = (feed.get("title") or "").strip() or None
        if name == url:  # our export writes text=url for a feed without a name
            name = None
        specs.append(FeedSpec(url=url, name=name, tags=_tags(feed.get("categories") or [])))
    return specs


# --------------------------------------------------------------------------- writing


def _xml_safe(value: str) -> str:
    """Drop characters XML 1.0 cannot carry (NUL, most C0 controls, lone surrogates)."""
    return _NOT_XML_CHARS.sub("", value)


def tags_that_split(specs: Iterable[FeedSpec]) -> list[str]:
    """Tags that OPML's ``category`` syntax cannot carry whole: readers split on ``,`` and ``/``."""
    return sorted({t for s in specs for t in s.tags if "," in t or "/" in t})


def write_opml(
    specs: Iterable[FeedSpec], title: str = DEFAULT_TITLE, created: datetime | None = None
) -> bytes:
    """An OPML 2.0 document with one ``type="rss"`` outline per feed; tags go into ``category``."""
    root = ET.Element("opml", version="2.0")
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = _xml_safe(title)
    ET.SubElement(head, "dateCreated").text = format_datetime(created or datetime.now(UTC), usegmt=True)
    body = ET.SubElement(root, "body")
    for spec in specs:
        # ``text`` is required by OPML: a feed without a name shows its URL (read back as no name).
        attrs = {"type": "rss", "text": spec.name or spec.url}
        if spec.name:
            attrs["title"] = spec.name
        attrs["xmlUrl"] = spec.url
        if spec.tags:
            attrs["category"] = ",".join(spec.tags)
        ET.SubElement(body, "outline", {k: _xml_safe(v) for k, v in attrs.items()})
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
