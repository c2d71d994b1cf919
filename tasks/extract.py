"""Extract: main text and metadata of article pages with trafilatura, in a process pool.

The options were chosen by measuring on ../shared/corpus (``benchmarks/extraction_quality.py``):
``include_comments=False`` scored best on news pages (ScrapingHub F1 0.960 vs 0.953 default).
Every article row records the extractor name, version and these options.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version

from tasks.workers import TIMED_OUT, BoundedProcessPool

EXTRACTOR_NAME = "trafilatura"
EXTRACTOR_OPTIONS: dict[str, object] = {
    "include_comments": False,
    "include_tables": True,
    "favor_precision": False,
    "favor_recall": False,
    "with_metadata": True,
    "deduplicate": False,
}
EXTRACTOR_OPTIONS_JSON = json.dumps(EXTRACTOR_OPTIONS, sort_keys=True)

# Post-extraction clean-up, kept only because it measured no worse on ../shared/corpus (ScrapingHub
# F1 0.9626 -> 0.9629, WCXB 0.9357 -> 0.9358) while removing what news users complain of
# (trafilatura #584): share bars ("Share via: Facebook · X · Email") anywhere, and newsletter /
# subscription promos at the end of the text. Stripping headline and kicker lines at the start
# was measured too and lowered recall (0.9592), so it is not done.
_WORD_RE = re.compile(r"\w+")
_SHARE_WORDS = frozenset(
    "share via on facebook twitter x whatsapp email e mail linkedin pinterest reddit telegram copy link "
    "print messenger tweet this article story flipboard".split()
)
_SHARE_NETWORKS = frozenset({"facebook", "twitter", "whatsapp", "linkedin", "email"})
_PROMO = re.compile(r"\b(newsletters?|subscribe|subscription|sign up|signup|unsubscribe|inbox)\b", re.I)
_HEADING_END = re.compile(r"[.!?\"\u201d:]$")

_HTML_LANG = re.compile(rb"<html\b[^>]*?\blang\s*=\s*[\"']?([A-Za-z]{2,3})(?:[-_][A-Za-z0-9]+)*", re.I)
_META_CHARSET = re.compile(rb"<meta[^>]+charset", re.I)
_MIN_TEXT_FOR_LANGID = 40


@cache
def extractor_version() -> str:
    return f"{EXTRACTOR_NAME} {version('trafilatura')}"


@dataclass(frozen=True)
class ExtractJob:
    key: str  # caller's identifier, returned as is
    url: str  # final URL of the page (base for relative links)
    body: bytes
    content_type: str | None = None


@dataclass(frozen=True)
class Extracted:
    key: str
    text: str | None
    title: str | None = None
    author: str | None = None
    date: str | None = None  # as trafilatura finds it on the page, YYYY-MM-DD
    sitename: str | None = None
    language: str | None = None
    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    image: str | None = None
    description: str | None = None
    page_url: str | None = None  # <link rel=canonical> / og:url when the page declares one
    error: str | None = None


def _charset_from_content_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    match = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type, re.I)
    return match.group(1) if match else None


def _decode(body: bytes, content_type: str | None) -> bytes | str:
    """Use the HTTP charset when the page declares none itself and it decodes cleanly;
    otherwise hand trafilatura the bytes and let it detect."""
    charset = _charset_from_content_type(content_type)
    if charset and not _META_CHARSET.search(body[:4096]):
        try:
            return body.decode(charset)
        except (LookupError, ValueError):  # UnicodeError too: "undefined", "punycode" raise it
            pass
    return body


def _split_list(values) -> tuple[str, ...]:
    out: list[str] = []
    for value in values or []:
        for part in str(value).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return tuple(out)


def detect_language(body: bytes, text: str | None) -> str | None:
    """The page's declared language (``<html lang>``), else a guess from the text."""
    match = _HTML_LANG.search(body[:8192])
    if match:
        return match.group(1).decode("ascii").lower()
    if text and len(text) >= _MIN_TEXT_FOR_LANGID:
        import py3langid

        lang, _score = py3langid.classify(text[:5000])
        return lang
    return None


def _is_share_bar(line: str) -> bool:
    words = [w.lower() for w in _WORD_RE.findall(line)]
    return bool(words) and all(w in _SHARE_WORDS for w in words) and not _SHARE_NETWORKS.isdisjoint(words)


def _is_short_heading(line: str) -> bool:
    return len(line) < 80 and len(line.split()) <= 5 and not _HEADING_END.search(line.strip())


def clean_text(text: str) -> str:
    """Drop share bars, and a newsletter promo (with its short heading) closing the text."""
    lines = [line for line in text.split("\n") if not _is_share_bar(line)]
    trimmed = False
    while len(lines) > 1:
        last = lines[-1]
        if len(last) < 300 and _PROMO.search(last):
            lines.pop()
            trimmed = True
        elif trimmed and _is_short_heading(last):
            lines.pop()
        else:
            break
    return "\n".join(lines)


def extract_article(job: ExtractJob) -> Extracted:
    """Extract one page. Never raises: a failure comes back with ``error`` set."""
    from trafilatura import bare_extraction

    try:
        doc = bare_extraction(_decode(job.body, job.content_type), url=job.url, **EXTRACTOR_OPTIONS)
    except Exception as exc:  # trafilatura/lxml on hostile markup: record and go on
        return Extracted(key=job.key, text=None, error=f"{exc.__class__.__name__}: {exc}"[:500])
    if doc is None:
        return Extracted(key=job.key, text=None, error="no main text found")
    text = clean_text(doc.text or "").strip() or None
    page_url = doc.url if doc.url and doc.url != job.url else None
    return Extracted(
        key=job.key,
        text=text,
        title=doc.title or None,
        author=doc.author or None,
        date=doc.date or None,
        sitename=doc.sitename or None,
        language=detect_language(job.body, text),
        categories=_split_list(doc.categories),
        tags=_split_list(doc.tags),
        image=doc.image or None,
        description=doc.description or None,
        page_url=page_url,
        error=None if text else "no main text found",
    )


def _warm_up() -> None:
    """Pay the imports and the language model's loading before the first page, not during it."""
    import py3langid
    import trafilatura  # noqa: F401

    py3langid.classify("warm up the language identification model")


def _given_up(job: ExtractJob, why: str, timeout: float | None) -> Extracted:
    if why == TIMED_OUT:
        return Extracted(key=job.key, text=None, error=f"extraction took longer than {timeout:g} s")
    return Extracted(key=job.key, text=None, error="extractor process died on this page")


class ExtractorPool(BoundedProcessPool):
    """The run's worker processes, warmed up for extraction (feeds are parsed there too).

    ``timeout`` bounds the extraction of one page, in seconds (None or 0: no bound). Some pages
    take trafilatura minutes to hours (one element with thousands of attributes grows with the
    square of its size; 250,000 tiny paragraphs): such a page is stopped by killing the worker
    that holds it, recorded with an extraction error, and the rest of the batch goes on. A bound
    needs worker processes, so with a timeout even one worker runs in a process of its own."""

    def __init__(self, workers: int, timeout: float | None = None):
        super().__init__(workers, timeout, warm_up=_warm_up)

    def map(self, jobs: Iterable[ExtractJob]) -> list[Extracted]:
        return self.apply(extract_article, jobs, _given_up)


def extract_batch(jobs: list[ExtractJob], pool: ExtractorPool | None = None) -> list[Extracted]:
    if pool is None:
        return [extract_article(job) for job in jobs]
    return pool.map(jobs)
