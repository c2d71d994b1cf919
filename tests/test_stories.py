"""Story identity (tasks/stories.py, warehouse/stories.py, newsflow stories recluster).

The articles are the demo site's (The Harbour Gazette: six different local stories from one outlet
and template, and a syndicated copy of one of them), extracted by the pipeline's own extractor, and
copies made from them as syndicators and editors make them.
"""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks import stories
from tasks.dedup import article_id_for
from tasks.extract import ExtractJob, extract_article
from tasks.stories import StoryArticle, cluster, fingerprint, same_story, story_similarity
from warehouse.lock import WriterLock
from warehouse.store import Warehouse
from warehouse.stories import assign_story_ids, insert_story_index, recluster, story_counts

SITE = Path(__file__).resolve().parents[1] / "newsflow" / "demo" / "site" / "articles"
SLUGS = (
    "council-budget-vote",
    "harbour-storm-damage",
    "ferry-bus-strike",
    "university-seagrass-research",
    "aldwick-athletic-cup-semi-final",
    "nato-summit-security-guarantee",
)
T0 = datetime(2026, 11, 20, 7, 0, tzinfo=UTC)

# Another outlet's template lines around a syndicated copy.
WIRE_BEFORE = ["From our partners at Regional Wire", "Share on Facebook", "Share on X", "Copy link"]
WIRE_AFTER = [
    "Regional Wire stories are republished under licence; all rights reserved by the original publisher.",
    "Most read",
    "Sign up for the Regional Wire evening digest and get the five biggest stories of the day by email.",
]
# Stock sentences a newsroom puts under many different articles.
STOCK = [
    "The Harbour Gazette has served Port Aldwick and the Saltbeck coast since 1891.",
    "Sign up for the Morning Briefing: the day's top Port Aldwick stories in your inbox before 7am.",
    "Please read our community guidelines before posting a comment on any of our stories.",
    "If you have a story for the newsroom, contact our reporters by email or telephone at any time.",
]
# The same topic as harbour-storm-damage (same storm, town, harbour, boat, people), another article.
STORM_FOLLOW_UP = """Clean-up begins in Port Aldwick as Storm Idris moves away
Volunteers and council crews spent Sunday clearing shingle, seaweed and broken fencing from the seafront after Storm Idris, as the harbour authority confirmed that divers had inspected the damaged inner harbour wall.
Harbour master Colin Aspinall said the divers found the foundations of the wall intact, which he described as the best news of the weekend. A temporary barrier of concrete blocks will be put in place this week while engineers design a permanent repair, which is likely to take several months and cost well over a million pounds.
Salvage specialists from Saltbeck are expected to lift the Kittiwake on Tuesday. Its owner has been offered a berth for a replacement vessel free of charge for a year by the harbour authority, and a fundraising page set up by friends had raised more than nine thousand pounds by Sunday evening.
The council said all roads in the town had reopened, with the exception of the coast road at Gull Point, where a landslip on the cliff side will keep one lane closed until the slope has been made safe. Power has now been restored to every property in the area, according to the network operator."""


# --------------------------------------------------------------------------- material


@pytest.fixture(scope="module")
def demo() -> dict[str, str]:
    """slug -> the text newsflow's extractor gets from the demo page (with its leftovers)."""
    out = {}
    for slug in (*SLUGS, "nato-summit-security-guarantee-syndicated"):
        page = SITE / f"{slug}.html"
        ex = extract_article(
            ExtractJob(key=slug, url=f"http://gazette.test/articles/{slug}.html", body=page.read_bytes())
        )
        assert ex.text, slug
        out[slug] = ex.text
    return out


def paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n") if p.strip()]


def syndicated(text: str, headline: str = "Wire: a new headline written by another desk") -> str:
    """The body under another outlet's headline and template lines (its own first line, often the
    original headline or a section label, dropped)."""
    return "\n".join([*WIRE_BEFORE, headline, *paragraphs(text)[1:], *WIRE_AFTER])


def light_edit(text: str, rate: float = 0.08, seed: int = 1) -> str:
    rng = random.Random(seed)
    out = []
    for para in paragraphs(text):
        words = para.split()
        for i in range(len(words)):
            if rng.random() < rate:
                words[i] = rng.choice(["reportedly", "local", "new", "several", "council", "said"])
        out.append(" ".join(words))
    return "\n".join(out)


def teaser(text: str, fraction: float = 0.4) -> str:
    words = " ".join(paragraphs(text)).split()
    return " ".join(words[: int(len(words) * fraction)]) + "\nRead the full story"


def reordered(text: str, seed: int = 2) -> str:
    paras = paragraphs(text)
    rng = random.Random(seed)
    shuffled = paras[:]
    while shuffled == paras:
        rng.shuffle(shuffled)
    return "\n".join(shuffled)


def brief(text: str, words: int = 80) -> str:
    return " ".join(" ".join(paragraphs(text)).split()[:words])


# --------------------------------------------------------------------------- pairs


def test_syndicated_copy_with_different_boilerplate_is_the_same_story(demo):
    original = demo["council-budget-vote"]
    assert same_story(original, syndicated(original))


def test_the_demo_sites_real_syndicated_page_is_the_same_story(demo):
    assert same_story(
        demo["nato-summit-security-guarantee"], demo["nato-summit-security-guarantee-syndicated"]
    )


def test_light_edit_is_the_same_story(demo):
    original = demo["harbour-storm-damage"]
    edited = light_edit(original, rate=0.08)
    assert edited != original
    assert same_story(original, edited)
    # a paragraph added and another removed too
    paras = paragraphs(original)
    revised = "\n".join(
        [*paras[:3], "An earlier version of this article gave the wrong date for the storm.", *paras[4:]]
    )
    assert same_story(original, revised)


def test_truncated_teaser_is_the_same_story(demo):
    original = demo["ferry-bus-strike"]
    short = teaser(syndicated(original), 0.4)
    assert stories.scores(fingerprint(original), fingerprint(short))[1] < 0.5  # Jaccard alone is low
    assert same_story(original, short)
    assert same_story(short, original)  # symmetric


def test_reordered_paragraphs_are_the_same_story(demo):
    original = demo["university-seagrass-research"]
    assert same_story(original, reordered(original))


def test_same_topic_different_article_is_another_story(demo):
    assert not same_story(demo["harbour-storm-damage"], STORM_FOLLOW_UP)
    assert not same_story(teaser(demo["harbour-storm-damage"]), STORM_FOLLOW_UP)


def test_same_outlet_and_template_are_different_stories(demo):
    """The six demo stories come from one outlet, one template and one town: all different."""
    for i, a in enumerate(SLUGS):
        for b in SLUGS[i + 1 :]:
            assert story_similarity(demo[a], demo[b]) < 0.2, (a, b)


def test_shared_stock_sentences_and_template_do_not_merge(demo):
    a, b = demo["council-budget-vote"], demo["ferry-bus-strike"]
    wrap = "\n".join
    assert not same_story(
        wrap([*WIRE_BEFORE, a, *STOCK, *WIRE_AFTER]), wrap([*WIRE_BEFORE, b, *STOCK, *WIRE_AFTER])
    )
    # two short briefs with the same stock sentences: a third of each text is identical
    assert not same_story(wrap([brief(a), *STOCK[:3]]), wrap([brief(b), *STOCK[:3]]))


def test_no_text_and_tiny_texts():
    assert fingerprint(None) is None and fingerprint("") is None and fingerprint("Read more") is None
    placed = cluster(
        [StoryArticle("a", T0, None), StoryArticle("b", T0, "Read more"), StoryArticle("c", T0, "Read more")]
    )
    assert placed == {"a": None, "b": "b", "c": "c"}  # too short to tell: a story of its own


def test_fingerprints_are_stable_across_processes():
    """Band keys are stored: they must not depend on Python's per-process hash seed."""
    fp = fingerprint("The council approved the budget shortly before midnight on Thursday after six hours.")
    assert fp is not None and len(fp.bands) == stories.PARAMS.bands
    assert all(-(2**63) <= b < 2**63 for b in fp.bands)
    assert fp.bands[0] == 4632948661394100416  # the same in every process and on every machine


# --------------------------------------------------------------------------- batches


def batch_of_20(demo) -> tuple[list[StoryArticle], dict[str, str]]:
    """20 articles in 6 stories: each original, and 14 copies published after it. -> (articles,
    expected story of each: the article_id of its original)."""
    makers = [syndicated, light_edit, teaser, reordered]
    arts, expected = [], {}
    n = 0
    for s, slug in enumerate(SLUGS):
        original = demo[slug]
        oid = f"{slug}-0"
        arts.append(StoryArticle(oid, T0 + timedelta(hours=s), original))
        expected[oid] = oid
        copies = 3 if s < 2 else 2
        for c in range(copies):
            n += 1
            cid = f"{slug}-{c + 1}"
            text = makers[(s + c) % len(makers)](original)
            arts.append(StoryArticle(cid, T0 + timedelta(hours=s, minutes=10 * (c + 1)), text))
            expected[cid] = oid
    assert len(arts) == 20 and len(set(expected.values())) == 6
    return arts, expected


def test_order_independence_within_a_batch(demo):
    arts, expected = batch_of_20(demo)
    reference = cluster(arts)
    assert reference == expected
    rng = random.Random(5)
    for _ in range(10):
        shuffled = arts[:]
        rng.shuffle(shuffled)
        assert cluster(shuffled) == reference


def test_story_is_named_after_its_earliest_article(demo):
    """A copy published before the 'original' gives the story its id, whatever the input order."""
    original, copy = demo["council-budget-vote"], syndicated(demo["council-budget-vote"])
    arts = [StoryArticle("zz-late", T0 + timedelta(hours=2), original), StoryArticle("aa-early", T0, copy)]
    assert cluster(arts) == {"zz-late": "aa-early", "aa-early": "aa-early"}
    assert cluster(arts[::-1]) == {"zz-late": "aa-early", "aa-early": "aa-early"}
    tie = [StoryArticle("b", T0, original), StoryArticle("a", T0, copy)]  # same time: by article_id
    assert cluster(tie) == cluster(tie[::-1]) == {"a": "a", "b": "a"}


# --------------------------------------------------------------------------- warehouse


def article_rows(items, batch: str) -> list[dict]:
    """Minimal article rows: (key, text, published_at, outlet host)."""
    rows = []
    for key, text, published, host in items:
        url = f"https://{host}/news/{key}.html"
        fetched = published + timedelta(minutes=5)
        rows.append(
            {
                "article_id": article_id_for(url),
                "url": url,
                "url_key": url,
                "final_url": url,
                "canonical_url": url,
                "title": key,
                "published_at": published,
                "text": text,
                "text_chars": len(text or ""),
                "fetched_at": fetched,
                "run_id": "run-test",
                "load_batch": batch,
                "ingest_date": fetched.date(),
            }
        )
    return rows


def load(wh: Warehouse, batch: str, rows: list[dict]) -> None:
    """What load_batch does once stories are wired in (and works whether or not they are yet)."""
    index_rows = assign_story_ids(wh.con, rows)
    wh.load_batch(batch, "run-test", {"articles": rows})
    ids = [r["article_id"] for r in rows]
    indexed = wh.con.execute(
        "SELECT count(*) FROM story_index WHERE article_id IN (SELECT unnest(?::VARCHAR[]))", [ids]
    ).fetchone()[0]
    if not indexed:
        insert_story_index(wh.con, index_rows)


def stored_stories(wh: Warehouse) -> dict[str, str | None]:
    return dict(wh.con.execute("SELECT title, story_id FROM articles").fetchall())


def two_batches(demo):
    first = [(f"{slug}", demo[slug], T0 + timedelta(hours=i), "gazette.test") for i, slug in enumerate(SLUGS)]
    second = [
        ("budget-wire", syndicated(demo["council-budget-vote"]), T0 + timedelta(hours=8), "wire.test"),
        ("storm-teaser", teaser(demo["harbour-storm-damage"]), T0 + timedelta(hours=9), "digest.test"),
        ("strike-edited", light_edit(demo["ferry-bus-strike"]), T0 + timedelta(hours=10), "courier.test"),
        ("storm-follow-up", STORM_FOLLOW_UP, T0 + timedelta(hours=11), "gazette.test"),
        ("storm-wire", syndicated(demo["harbour-storm-damage"]), T0 + timedelta(hours=12), "wire.test"),
    ]
    return first, second


def test_second_batch_joins_the_stories_of_the_first_through_the_index(tmp_path, demo):
    first, second = two_batches(demo)
    with Warehouse(tmp_path / "data") as wh:
        load(wh, "b1", article_rows(first, "b1"))
        assert wh.con.execute("SELECT count(*) FROM story_index").fetchone()[0] == 6 * stories.PARAMS.bands
        load(wh, "b2", article_rows(second, "b2"))
        got = stored_stories(wh)
        ids = {t: article_id_for(f"https://{h}/news/{t}.html") for t, _, _, h in first + second}
        assert got["budget-wire"] == ids["council-budget-vote"]
        assert got["storm-teaser"] == got["storm-wire"] == ids["harbour-storm-damage"]
        assert got["strike-edited"] == ids["ferry-bus-strike"]
        assert got["storm-follow-up"] == ids["storm-follow-up"]  # same topic: a story of its own
        assert all(got[t] == ids[t] for t, *_ in first)
        # the view: one row per story, outlets in order of publication
        row = wh.con.execute(
            "SELECT articles, outlets, outlets_in_order, first_article_id, first_outlet FROM stories "
            "WHERE story_id = ?",
            [ids["harbour-storm-damage"]],
        ).fetchone()
        assert row == (
            3,
            3,
            ["gazette.test", "digest.test", "wire.test"],
            ids["harbour-storm-damage"],
            "gazette.test",
        )
        assert wh.con.execute("SELECT count(*) FROM stories").fetchone()[0] == 7
        # exported: story_id is in the articles Parquet files
        parquet = wh.con.execute(
            "SELECT count(*) FROM read_parquet(?) WHERE story_id IS NOT NULL",
            [str(tmp_path / "data" / "parquet" / "articles" / "*" / "*.parquet")],
        ).fetchone()[0]
        assert parquet == 11


def test_maintenance_archives_the_band_keys_and_later_loads_find_them_there(tmp_path, demo):
    """Loads add band keys to the small `story_index` only; maintenance's checkpoint moves them to
    `story_index_archive` (DuckDB writes a changed ART index out whole: a poll must not change the
    big one). Stories found through the archive are those found without it."""
    from warehouse.maintenance import checkpoint

    first, second = two_batches(demo)
    counts = "SELECT (SELECT count(*) FROM story_index), (SELECT count(*) FROM story_index_archive)"
    with Warehouse(tmp_path / "plain") as wh:
        load(wh, "b1", article_rows(first, "b1"))
        load(wh, "b2", article_rows(second, "b2"))
        expected = stored_stories(wh)
    keys = 6 * stories.PARAMS.bands
    with Warehouse(tmp_path / "data") as wh:
        load(wh, "b1", article_rows(first, "b1"))
        checkpoint(wh.con)
        assert wh.con.execute(counts).fetchone() == (0, keys)
        load(wh, "b2", article_rows(second, "b2"))
        assert wh.con.execute(counts).fetchone() == (
            len(second) * stories.PARAMS.bands,
            keys,
        )  # archive untouched
        assert stored_stories(wh) == expected
        assert story_counts(wh.con)["index_rows"] == keys + len(second) * stories.PARAMS.bands


def test_order_of_the_rows_in_a_batch_does_not_matter(tmp_path, demo):
    arts, _ = batch_of_20(demo)
    items = [(a.article_id, a.text, a.when, f"outlet{i % 4}.test") for i, a in enumerate(arts)]
    results = []
    for n, seed in enumerate((None, 1, 2)):
        shuffled = items[:]
        if seed is not None:
            random.Random(seed).shuffle(shuffled)
        with Warehouse(tmp_path / f"data{n}") as wh:
            load(wh, "b1", article_rows(shuffled, "b1"))
            results.append(stored_stories(wh))
    assert results[0] == results[1] == results[2]
    assert len(set(results[0].values())) == 6


def test_recluster_is_idempotent_and_canonical(tmp_path, demo):
    """Batches that arrive out of time order: the copy stored first named the story. Recluster
    gives every story its earliest article's id, rewrites the changed partitions, and a second
    run changes nothing."""
    first, second = two_batches(demo)
    data = tmp_path / "data"
    with Warehouse(data) as wh:
        load(wh, "b1", article_rows(second, "b1"))  # the copies first
        load(wh, "b2", article_rows(first, "b2"))
        before = stored_stories(wh)
        assert before["council-budget-vote"] == before["budget-wire"]  # joined the copy's story
        report = recluster(wh, "run-recluster", "recluster-0001")
        after = stored_stories(wh)
        ids = {t: article_id_for(f"https://{h}/news/{t}.html") for t, _, _, h in first + second}
        assert after["budget-wire"] == after["council-budget-vote"] == ids["council-budget-vote"]
        assert after["storm-teaser"] == after["storm-wire"] == ids["harbour-storm-damage"]
        assert report.changed >= 3 and report.stories == 7 and report.articles == 11
        assert report.partitions_rewritten
        assert wh.con.execute("SELECT bool_and(exported) FROM load_batches").fetchone()[0]
        counts = story_counts(wh.con)
        again = recluster(wh, "run-recluster-2", "recluster-0002")
        assert again.changed == 0 and not again.partitions_rewritten
        assert stored_stories(wh) == after and story_counts(wh.con) == counts
        parquet = dict(
            wh.con.execute(
                "SELECT title, story_id FROM read_parquet(?)",
                [str(data / "parquet" / "articles" / "*" / "*.parquet")],
            ).fetchall()
        )
        assert parquet == after  # the rewritten partitions agree with DuckDB
        # a warehouse from before stories existed: no story_id, no index; recluster fills both
        wh.con.execute("UPDATE articles SET story_id = NULL")
        wh.con.execute("DELETE FROM story_index")
        assert recluster(wh, "run-recluster-3", "recluster-0003").changed == 11
        assert stored_stories(wh) == after and story_counts(wh.con) == counts


def test_recluster_command_takes_the_writer_lock(tmp_path, demo, monkeypatch, capsys):
    from newsflow import cli_stories

    data = tmp_path / "data"
    first, _ = two_batches(demo)
    with Warehouse(data) as wh:
        load(wh, "b1", article_rows(first, "b1"))
    parser = argparse.ArgumentParser()
    cli_stories.register(parser.add_subparsers())
    args = parser.parse_args(["stories", "recluster", "--data-dir", str(data), "--format", "json"])
    assert args.func(args) == 0
    assert '"changed": 0' in capsys.readouterr().out
    monkeypatch.setenv("NEWSFLOW_LOCK_TIMEOUT", "0.2")
    with WriterLock(data, 1, "another writer"):
        assert args.func(args) == 75


def test_the_documented_queries_run_as_written(tmp_path, demo):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Stories", 1)[1].split("\n## ", 1)[0]
    queries = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    assert len(queries) >= 4
    first, second = two_batches(demo)
    # the first minutes of today (UTC): "today" for the query at any hour, 00:xx included
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    second = [(k, text, today + timedelta(minutes=i), host) for i, (k, text, _, host) in enumerate(second)]
    with Warehouse(tmp_path / "data") as wh:
        load(wh, "b1", article_rows(first, "b1"))
        load(wh, "b2", article_rows(second, "b2"))
        results = [wh.con.execute(q).fetchall() for q in queries]
    largest_today, first_by = results[0], results[1]
    assert largest_today[0][:3] == ("harbour-storm-damage", 2, 2)  # teaser and wire copy today
    assert first_by == [("gazette.test", 3, 2.3)]  # budget, storm, strike: the Gazette first
    assert all(results)


def test_story_views_over_parquet(tmp_path, demo):
    """While a writer holds DuckDB, `newsflow sql` reads Parquet: the views can be made there too."""
    from warehouse.queries import parquet_connection
    from warehouse.stories import create_story_views

    first, second = two_batches(demo)
    data = tmp_path / "data"
    with Warehouse(data) as wh:
        load(wh, "b1", article_rows(first, "b1"))
        load(wh, "b2", article_rows(second, "b2"))
        expected = wh.con.execute("SELECT * FROM stories ORDER BY story_id").fetchall()
        wh.export_snapshots()
    con = parquet_connection(data)  # makes the story views itself
    try:
        assert not create_story_views(con)  # already there
        assert con.execute("SELECT * FROM stories ORDER BY story_id").fetchall() == expected
    finally:
        con.close()


def test_index_rebuilt_from_texts_keeps_the_stories(tmp_path, demo):
    """After `newsflow warehouse rebuild` (the index is not in Parquet) and after a re-extraction."""
    from warehouse.stories import rebuild_story_index, reindex_articles

    first, second = two_batches(demo)
    index = "SELECT band, article_id FROM story_index ORDER BY ALL"
    with Warehouse(tmp_path / "data") as wh:
        load(wh, "b1", article_rows(first, "b1"))
        load(wh, "b2", article_rows(second, "b2"))
        before, stories_before = wh.con.execute(index).fetchall(), stored_stories(wh)
        wh.con.execute("DELETE FROM story_index")
        assert rebuild_story_index(wh.con) == len(before)
        assert wh.con.execute(index).fetchall() == before
        ids = [r[0] for r in wh.con.execute("SELECT article_id FROM articles ORDER BY 1 LIMIT 3").fetchall()]
        assert reindex_articles(wh.con, ids) == 3 * stories.PARAMS.bands
        assert wh.con.execute(index).fetchall() == before and stored_stories(wh) == stories_before
