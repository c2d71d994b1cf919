"""Generated news pages and feeds (RSS 2.0, Atom, JSON Feed) for loopback sites in tests."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from html import escape

from newsflow.loopback import Route

_WORDS = (
    "harbour council minister budget storm ferry union strike summit alliance guarantee treaty "
    "research university court ruling election candidate market prices energy pipeline cable "
    "fisheries coastguard hospital teachers railway airport village mayor protest report inquiry "
    "villagers officials engineers investigators analysts residents volunteers farmers drivers"
).split()


def paragraph(rng: random.Random, words: int = 45) -> str:
    text = " ".join(rng.choice(_WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


@dataclass(frozen=True)
class Story:
    slug: str
    title: str
    author: str
    published: datetime
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.paragraphs)


def make_story(n: int, seed: int = 0, paragraphs: int = 6) -> Story:
    rng = random.Random(seed * 1000 + n)
    return Story(
        slug=f"story-{seed}-{n}",
        title=f"Story number {n}: {' '.join(rng.choice(_WORDS) for _ in range(5))}",
        author=f"Reporter {n}",
        published=datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=n * 7 + seed),
        paragraphs=tuple(paragraph(rng) for _ in range(paragraphs)),
    )


def article_page(story: Story, canonical: str | None = None, site_name: str = "Test Gazette") -> bytes:
    """A news page with the usual chrome around the story: menu, share bar, related box, comments."""
    body = []
    for i, p in enumerate(story.paragraphs):
        body.append(f"<p>{escape(p)}</p>")
        if i == 1:
            body.append(
                '<aside class="related"><a href="/other.html">Related: Unrelated headline here</a></aside>'
            )
    canonical_tag = f'<link rel="canonical" href="{escape(canonical)}">' if canonical else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(story.title)} | {site_name}</title>
<meta name="author" content="{escape(story.author)}">
<meta property="og:site_name" content="{site_name}">
<meta property="article:published_time" content="{story.published.isoformat()}">
{canonical_tag}</head>
<body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/world">World</a></li><li><a href="/sport">Sport</a></li></ul></nav>
<div class="cookie-banner">We use cookies to improve your experience.</div>
<main><article>
<h1>{escape(story.title)}</h1>
<p class="byline">By {escape(story.author)}</p>
<div class="share"><a href="https://example.com/share">Share on Facebook</a></div>
<div class="article-body">{"".join(body)}</div>
</article>
<section class="comments"><h3>Comments</h3><p>First comment: what a read.</p></section>
</main>
<footer><p>Copyright 2026 {site_name}. All rights reserved.</p></footer>
</body></html>""".encode()


def rss_feed(items: list[tuple[Story, str, str | None]], title: str = "Test feed") -> bytes:
    """items: (story, link, guid)."""
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel>',
        f"<title>{escape(title)}</title><link>http://example.invalid/</link><description>t</description>",
        "<language>en</language>",
    ]
    for story, link, guid in items:
        out.append("<item>")
        out.append(f"<title>{escape(story.title)}</title><link>{escape(link)}</link>")
        if guid:
            out.append(f'<guid isPermaLink="false">{escape(guid)}</guid>')
        out.append(f"<pubDate>{format_datetime(story.published)}</pubDate>")
        out.append(f"<dc:creator>{escape(story.author)}</dc:creator><category>News</category>")
        out.append(f"<description>{escape(story.paragraphs[0][:100])}</description></item>")
    out.append("</channel></rss>")
    return "\n".join(out).encode()


def atom_feed(items: list[tuple[Story, str, str]], title: str = "Test Atom feed") -> bytes:
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom">',
        f"<title>{escape(title)}</title><id>urn:test:feed</id><updated>2026-11-30T00:00:00Z</updated>",
    ]
    for story, link, entry_id in items:
        out.append(
            f'<entry><title>{escape(story.title)}</title><link rel="alternate" href="{escape(link)}"/>'
            f"<id>{escape(entry_id)}</id><published>{story.published.isoformat()}</published>"
            f"<updated>{story.published.isoformat()}</updated><author><name>{escape(story.author)}</name></author>"
            f'<category term="World"/><summary>{escape(story.paragraphs[0][:100])}</summary></entry>'
        )
    out.append("</feed>")
    return "\n".join(out).encode()


def json_feed(items: list[tuple[Story, str, str]], title: str = "Test JSON feed") -> bytes:
    return json.dumps(
        {
            "version": "https://jsonfeed.org/version/1.1",
            "title": title,
            "home_page_url": "http://example.invalid/",
            "items": [
                {
                    "id": item_id,
                    "url": link,
                    "title": story.title,
                    "date_published": story.published.isoformat(),
                    "authors": [{"name": story.author}],
                    "tags": ["Science"],
                    "content_text": story.paragraphs[0],
                }
                for story, link, item_id in items
            ],
        }
    ).encode()


RSS = "application/rss+xml; charset=utf-8"
ATOM = "application/atom+xml; charset=utf-8"
JSONFEED = "application/feed+json"


def page_route(story: Story, **kwargs) -> Route:
    return Route(body=article_page(story, **kwargs))


def feeds_toml(urls: list[str]) -> str:
    return "".join(
        f'[[feeds]]\nurl = "{u}"\nname = "feed {i}"\ntags = ["test"]\n\n' for i, u in enumerate(urls)
    )


def measured(family: str, case: str, **values: float | int | str) -> None:
    """Write down what a case measured (peak memory, time to give up, requests that reached a
    forbidden address) when ``HOSTILE_MEASURES_FILE`` names a file: the per-family table of
    ``benchmarks/hostile_bounds.py``. Tests assert their bounds either way."""
    path = os.environ.get("HOSTILE_MEASURES_FILE")  # not NEWSFLOW_*: fixtures clear those
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"family": family, "case": case, **values}) + "\n")
