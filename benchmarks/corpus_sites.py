"""Serve the shared corpus of real news pages on loopback, as N small sites with an RSS feed each.

Used by ``throughput.py`` to run the whole ``newsflow poll`` on real pages, and handy by hand::

    python benchmarks/corpus_sites.py --sites 20      # serves until Ctrl-C, prints the feeds file

Each site listens on its own loopback address (127.0.0.2, 127.0.0.3, ...: one politeness bucket
per site, as with real hosts), serves its share of the pages (round-robin) at
``/articles/<corpus>-<id>.html`` and lists them all in ``/rss.xml``.

The corpus is read from ``<repo>/../shared/corpus`` (``NEWSFLOW_CORPUS_DIR`` overrides it) and is
only read: nothing is copied into the repository.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from newsflow.loopback import LoopbackSite, Route

CORPORA: tuple[str, ...] = ("scrapinghub", "wcxb-dev-articles")
CORPUS_ENV = "NEWSFLOW_CORPUS_DIR"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
RSS_CONTENT_TYPE = "application/rss+xml; charset=utf-8"
FEED_PATH = "/rss.xml"
SITEMAP_PATH = "/sitemap.xml.gz"
SITEMAP_INDEX_PATH = "/sitemap_index.xml"
_FALLBACK_PUBDATE = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class CorpusMissing(FileNotFoundError):
    """The shared corpus is not on this machine: benchmarks skip."""


# --------------------------------------------------------------------------- corpus


def corpus_root() -> Path:
    """``$NEWSFLOW_CORPUS_DIR``, else ``shared/corpus`` next to the repository."""
    override = os.environ.get(CORPUS_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "shared" / "corpus"


def require_corpus(root: Path | None = None, corpora: Iterable[str] = CORPORA) -> Path:
    root = root or corpus_root()
    missing = [c for c in corpora if not (root / c / "html").is_dir()]
    if missing:
        raise CorpusMissing(
            f"corpus not found: {', '.join(str(root / c) for c in missing)} (set {CORPUS_ENV})"
        )
    return root


@dataclass(frozen=True)
class CorpusPage:
    corpus: str
    page_id: str
    url: str  # the page's original URL, from the ground truth
    html: bytes = field(repr=False)
    truth: dict[str, Any] = field(repr=False)  # the ground-truth record as stored

    @property
    def key(self) -> str:
        return f"{self.corpus}-{self.page_id}"

    @property
    def path(self) -> str:
        return f"/articles/{self.key}.html"

    @property
    def title(self) -> str:
        return self.truth.get("title") or self.page_id

    @property
    def main_text(self) -> str:
        return self.truth.get("articleBody") or self.truth.get("main_content") or ""


@lru_cache(maxsize=4)
def _scrapinghub_truth(root: Path) -> dict[str, dict[str, Any]]:
    return json.loads((root / "scrapinghub" / "ground-truth.json").read_text(encoding="utf-8"))


def page_ids(corpus: str, root: Path | None = None) -> list[str]:
    root = require_corpus(root, [corpus])
    return sorted(p.name.removesuffix(".html.gz") for p in (root / corpus / "html").glob("*.html.gz"))


def ground_truth(corpus: str, page_id: str, root: Path | None = None) -> dict[str, Any]:
    root = root or corpus_root()
    if corpus == "scrapinghub":
        return _scrapinghub_truth(root)[page_id]
    if corpus == "wcxb-dev-articles":
        path = root / corpus / "ground-truth" / f"{page_id}.json"
        return json.loads(path.read_text(encoding="utf-8"))
    raise ValueError(f"unknown corpus {corpus!r} (known: {', '.join(CORPORA)})")


def load_page(corpus: str, page_id: str, root: Path | None = None) -> CorpusPage:
    root = root or corpus_root()
    html = gzip.decompress((root / corpus / "html" / f"{page_id}.html.gz").read_bytes())
    truth = ground_truth(corpus, page_id, root)
    return CorpusPage(corpus=corpus, page_id=page_id, url=truth.get("url") or "", html=html, truth=truth)


def page_refs(
    corpora: Sequence[str] = CORPORA, max_pages: int | None = None, root: Path | None = None
) -> list[tuple[str, str]]:
    """(corpus, id) of the pages, the corpora interleaved so that a ``max_pages`` subset holds
    some of each."""
    root = require_corpus(root, corpora)
    per_corpus = [[(c, i) for i in page_ids(c, root)] for c in corpora]
    refs: list[tuple[str, str]] = []
    for n in range(max((len(ids) for ids in per_corpus), default=0)):
        refs.extend(ids[n] for ids in per_corpus if n < len(ids))
    return refs[:max_pages] if max_pages is not None else refs


def load_corpus(
    corpora: Sequence[str] = CORPORA, max_pages: int | None = None, root: Path | None = None
) -> list[CorpusPage]:
    root = require_corpus(root, corpora)
    return [load_page(c, i, root) for c, i in page_refs(corpora, max_pages, root)]


# --------------------------------------------------------------------------- feeds


def _pub_date(page: CorpusPage, n: int) -> str:
    """The ground-truth date when there is one, else a made-up one (one hour apart per item)."""
    raw = page.truth.get("publish_date")
    try:
        when = datetime.fromisoformat(str(raw)[:10]).replace(hour=12, tzinfo=UTC) if raw else None
    except ValueError:
        when = None
    return format_datetime(when or _FALLBACK_PUBDATE - timedelta(hours=n), usegmt=True)


def rss_feed(site_url: str, pages: Sequence[CorpusPage]) -> bytes:
    items = "".join(
        "<item>"
        f"<title>{escape(page.title)}</title>"
        f"<link>{escape(site_url + page.path)}</link>"
        f'<guid isPermaLink="false">{escape(page.page_id)}</guid>'
        f"<pubDate>{_pub_date(page, n)}</pubDate>"
        "</item>\n"
        for n, page in enumerate(pages)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>\n'
        f"<title>Corpus site {escape(site_url)}</title><link>{escape(site_url)}/</link>\n"
        "<description>Pages of the shared benchmark corpus, served on loopback</description>\n"
        f"{items}</channel></rss>\n"
    ).encode()


def _iso_date(page: CorpusPage, n: int) -> str:
    return parsedate_to_datetime(_pub_date(page, n)).date().isoformat()


def sitemap(site_url: str, pages: Sequence[CorpusPage]) -> bytes:
    """A gzipped sitemap of the site's pages, with lastmod."""
    urls = "".join(
        f"<url><loc>{escape(site_url + page.path)}</loc><lastmod>{_iso_date(page, n)}</lastmod></url>\n"
        for n, page in enumerate(pages)
    )
    return gzip.compress(
        (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n{urls}</urlset>\n'
        ).encode()
    )


def sitemap_index(sitemap_urls: Sequence[str]) -> bytes:
    entries = "".join(f"<sitemap><loc>{escape(u)}</loc></sitemap>\n" for u in sitemap_urls)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n{entries}</sitemapindex>\n'
    ).encode()


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


# --------------------------------------------------------------------------- sites


@dataclass
class CorpusSites:
    sites: list[LoopbackSite]
    feed_urls: list[str]
    pages: list[tuple[str, str, str]]  # (url, corpus, id)
    sitemap_index_url: str = ""  # on the first site: an index of every site's gzipped sitemap
    _stopped: bool = False

    def write_feeds_toml(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tables = [
            f"[[feeds]]\nurl = {_toml_string(url)}\nname = {_toml_string(f'corpus site {n + 1}')}\n"
            for n, url in enumerate(self.feed_urls)
        ]
        path.write_text("# Loopback corpus sites (benchmarks/corpus_sites.py)\n\n" + "\n".join(tables))
        return path

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            for site in self.sites:
                site.stop()

    def __enter__(self) -> CorpusSites:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_corpus(
    n_sites: int = 20,
    corpora: Sequence[str] = CORPORA,
    first_ip: int = 2,
    *,
    pages: Sequence[CorpusPage] | None = None,
    max_pages: int | None = None,
    root: Path | None = None,
) -> CorpusSites:
    """Start ``n_sites`` loopback sites on 127.0.0.{first_ip}.. serving the corpus pages
    round-robin, each with an RSS 2.0 feed of its pages. ``pages`` skips loading the corpus."""
    if n_sites < 1 or first_ip < 1 or first_ip + n_sites - 1 > 254:
        raise ValueError(f"{n_sites} sites from 127.0.0.{first_ip} do not fit in 127.0.0.1-254")
    if pages is None:
        pages = load_corpus(corpora, max_pages, root)
    sites: list[LoopbackSite] = []
    try:
        for n in range(n_sites):
            sites.append(LoopbackSite(host=f"127.0.0.{first_ip + n}", port=0))
        served = _add_routes(sites, pages)
        for site in sites:
            site.start()
    except BaseException:
        for site in sites:
            site.stop()
        raise
    return CorpusSites(
        sites=sites,
        feed_urls=[s.url(FEED_PATH) for s in sites],
        pages=served,
        sitemap_index_url=sites[0].url(SITEMAP_INDEX_PATH),
    )


def _add_routes(sites: Sequence[LoopbackSite], pages: Sequence[CorpusPage]) -> list[tuple[str, str, str]]:
    shares: list[list[CorpusPage]] = [list(pages[n :: len(sites)]) for n in range(len(sites))]
    served: list[tuple[str, str, str]] = []
    for site, share in zip(sites, shares, strict=True):
        for page in share:
            site.routes[page.path] = Route(body=page.html, content_type=HTML_CONTENT_TYPE)
            served.append((site.url(page.path), page.corpus, page.page_id))
        site.routes[FEED_PATH] = Route(body=rss_feed(site.base_url, share), content_type=RSS_CONTENT_TYPE)
        site.routes[SITEMAP_PATH] = Route(body=sitemap(site.base_url, share), content_type="application/gzip")
    sites[0].routes[SITEMAP_INDEX_PATH] = Route(
        body=sitemap_index([s.url(SITEMAP_PATH) for s in sites]), content_type="application/xml"
    )
    return served


# --------------------------------------------------------------------------- command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the shared corpus on loopback as N news sites.")
    parser.add_argument("--sites", type=int, default=20, help="number of sites (default 20)")
    parser.add_argument("--first-ip", type=int, default=2, help="last octet of the first site's address")
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=CORPORA)
    parser.add_argument("--max-pages", type=int, help="serve only this many pages")
    parser.add_argument("--feeds-file", type=Path, help="where to write the feeds.toml (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        corpus = serve_corpus(args.sites, args.corpora, args.first_ip, max_pages=args.max_pages)
    except CorpusMissing as exc:
        print(f"skipped: {exc}")
        return 0
    feeds_file = args.feeds_file or Path(tempfile.mkdtemp(prefix="newsflow-corpus-")) / "feeds.toml"
    corpus.write_feeds_toml(feeds_file)
    print(f"serving {len(corpus.pages)} pages on {len(corpus.sites)} loopback sites:")
    for url in corpus.feed_urls:
        print(f"  {url}")
    print(f"feeds file: {feeds_file}")
    print(f"sitemap index: {corpus.sitemap_index_url}")
    print(
        "try: NEWSFLOW_ALLOW_PRIVATE_NETWORKS=1 NEWSFLOW_HOST_MIN_DELAY=0 "
        f"newsflow poll --feeds {feeds_file} --data-dir /tmp/newsflow-corpus-data"
    )
    print("Ctrl-C to stop", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly on kill too
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        corpus.stop()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
