"""Phrase search (warehouse/search.py): the full-text index and the scan find the same articles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.dedup import article_id_for
from warehouse.maintenance import checkpoint
from warehouse.search import fts_extension_path, index_built_at, phrase_pattern, search
from warehouse.store import Warehouse

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
TEXTS = {
    "plain": "Leaders met in Vilnius.\nThe allies offered a security guarantee to Kyiv on Tuesday.",
    "capitals": "SECURITY GUARANTEE was the phrase of the week, said the minister.",
    "apart": "Security was tight; no guarantee was given by anyone at the summit.",
    "inside-a-word": "The insecurity guarantees nothing, the analyst wrote in her column.",
    "hyphen": "A security-guarantee pact and a new café opened near the station.",
    "line-break": "They talked about security\nguarantee of the border for hours.",
    "accents": "Le café du coin servait un café crème aux délégués du sommet.",
    "duplicate": "The allies offered a security guarantee to Kyiv on Tuesday, again.",
}
PHRASES = [
    "security guarantee",
    "Security   Guarantee",
    "guarantee",
    "of the",  # stop words only: the scan answers
    "café",
    "caf",  # never inside a longer word
    "the allies offered",
    "2026",
]


def rows(items: list[tuple[str, str, int]], batch: str) -> list[dict]:
    out = []
    for key, text, hour in items:
        url = f"https://news.test/{key}.html"
        fetched = T0 + timedelta(hours=hour)
        out.append(
            {
                "article_id": article_id_for(url), "url": url, "url_key": url, "final_url": url,
                "canonical_url": url, "title": key, "published_at": fetched, "text": text,
                "text_chars": len(text), "fetched_at": fetched, "run_id": "run-test",
                "load_batch": batch, "ingest_date": fetched.date(),
            }
        )  # fmt: skip
    return out


def results(wh: Warehouse, phrase: str, **kw) -> tuple[str, list[str]]:
    found = search(wh.con, phrase, **kw)
    return found.method, [r[2] for r in found.rows]


@pytest.mark.skipif(fts_extension_path() is None, reason="duckdb-extension-fts is not installed")
def test_phrase_search_finds_the_same_articles_with_the_index_and_with_the_scan(tmp_path):
    first = [(k, t, i) for i, (k, t) in enumerate(TEXTS.items()) if k != "duplicate"]
    with Warehouse(tmp_path / "data") as wh:
        wh.load_batch("b1", "run-test", {"articles": rows(first, "b1")})
        dup = rows([("duplicate", TEXTS["duplicate"], 20)], "b2")
        dup[0].update(
            duplicate_of=article_id_for("https://news.test/plain.html"), duplicate_reason="content_hash"
        )
        wh.load_batch("b2", "run-test", {"articles": dup})
        assert index_built_at(wh.con) is None
        scanned = {p: results(wh, p) for p in PHRASES}
        assert all(method == "scan" for method, _ in scanned.values())
        assert scanned["security guarantee"][1] == ["line-break", "hyphen", "capitals", "plain"]
        assert scanned["caf"][1] == [] and scanned["café"][1] == ["accents", "hyphen"]

        checkpoint(wh.con)  # what maintenance runs: builds the index
        assert index_built_at(wh.con) is not None
        for phrase in PHRASES:
            method, found = results(wh, phrase)
            assert found == scanned[phrase][1], phrase
            assert method == ("scan" if phrase in ("of the", "2026") else "fts"), phrase

        # stored after the build (and a later version of one indexed): found without a rebuild
        late = rows([("late", "Talks on a security guarantee resumed.", 30)], "b3")
        v2 = rows([("plain", "The allies withdrew the offer of a security guarantee.", 31)], "b3")
        v2[0].update(
            article_id=article_id_for(v2[0]["url_key"], 2), article_key=v2[0]["article_id"], version=2
        )
        wh.load_batch("b3", "run-test", {"articles": late + v2})
        for kw in ({}, {"all_versions": True}):
            method, found = results(wh, "security guarantee", **kw)
            assert method == "fts" and found == results(wh, "security guarantee", use_index=False, **kw)[1]
        assert results(wh, "the allies offered")[1] == []  # the latest version of "plain" no longer says it
        assert results(wh, "the allies offered", all_versions=True)[1] == ["plain"]


def test_phrase_pattern_is_whole_words_in_order():
    with pytest.raises(ValueError):
        phrase_pattern("  -- ")
    assert phrase_pattern("a.b") == r"(?i)(?:^|[^\pL\pN])a[^\pL\pN]+b(?:$|[^\pL\pN])"
