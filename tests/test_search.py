"""Phrase search (warehouse/search.py): the full-text index and the scan find the same articles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.dedup import article_id_for
from warehouse.maintenance import checkpoint
from warehouse.search import (
    SQL_CREATE_INDEX,
    SQL_MARK_BUILT,
    fts_extension_path,
    index_built_at,
    index_candidates,
    load_fts,
    phrase_pattern,
    search,
)
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


SQL_BM25 = """
    SELECT title, round(fts_main_articles.match_bm25(article_id, ?), 9) AS score FROM articles
    WHERE score IS NOT NULL ORDER BY title
"""


@pytest.mark.skipif(fts_extension_path() is None, reason="duckdb-extension-fts is not installed")
def test_the_index_names_only_texts_with_the_phrase_words_in_place(tmp_path):
    items = [(k, t, i) for i, (k, t) in enumerate(TEXTS.items())]
    items.append(("of-between", "No security of any guarantee; a security of guarantee, at last.", 9))
    with Warehouse(tmp_path / "data") as wh:
        wh.load_batch("b1", "run-test", {"articles": rows(items, "b1")})
        assert load_fts(wh.con)
        # the extension's own index, without positions, marked built (as newsflow built it before
        # positions): not used by a search, and built again by the next maintenance
        wh.con.execute(SQL_CREATE_INDEX)
        wh.con.execute(SQL_MARK_BUILT, [T0, len(items)])
        assert index_built_at(wh.con) is None
        assert search(wh.con, "security guarantee").method == "scan"
        scores = {
            q: wh.con.execute(SQL_BM25, [q]).fetchall() for q in ("security guarantee", "café", "the allies")
        }
        assert len(scores["security guarantee"]) == 8  # every text with either word, "apart" among them

        checkpoint(wh.con)
        assert index_built_at(wh.con) is not None
        # the positions replace the extension's postings without changing them: the same scores
        assert {q: wh.con.execute(SQL_BM25, [q]).fetchall() for q in scores} == scores

        def named(phrase: str) -> list[str]:
            ids = index_candidates(wh.con, phrase)
            return sorted(
                r[0]
                for r in wh.con.execute(
                    "SELECT title FROM articles WHERE list_contains(?, article_id)", [list(ids)]
                ).fetchall()
            )

        # both words, apart or inside a longer word: not named; stemmed forms in place: named
        assert named("security guarantee") == ["capitals", "duplicate", "hyphen", "line-break", "plain"]
        assert named("guarantee security") == []
        # a stop word of the phrase holds its place: "of" between, not "of any" between
        assert named("security of guarantee") == ["of-between"]
        assert search(wh.con, "security of guarantee").rows[0][2] == "of-between"
        assert named("the allies offered") == ["duplicate", "plain"]
        assert named("allies security") == []  # a word the texts never have next to the other
        assert named("security zeppelin") == []  # a word no text has


def test_phrase_pattern_is_whole_words_in_order():
    with pytest.raises(ValueError):
        phrase_pattern("  -- ")
    assert phrase_pattern("a.b") == r"(?i)(?:^|[^\pL\pN])a[^\pL\pN]+b(?:$|[^\pL\pN])"
