-- 003: story identity (tasks/stories.py, warehouse/stories.py, docs/stories.md).
-- Articles whose main text is substantially the same (syndicated copies under another headline and
-- template, light edits, truncated teasers, reordered paragraphs) share a `story_id`: the
-- article_id of the story's first article. NULL for an article without text (and for articles
-- stored before this migration until `newsflow stories recluster` has run once).

ALTER TABLE articles ADD COLUMN story_id VARCHAR;

-- The LSH index: each article's band keys (one MinHash value each, salted with its band number).
-- Derived data, not exported to Parquet: `newsflow stories recluster` rebuilds it from the texts.
-- Assigning an article looks its keys up here (an ART index lookup, not a scan).
CREATE TABLE story_index (
    band       BIGINT  NOT NULL,
    article_id VARCHAR NOT NULL
);
CREATE INDEX story_index_band ON story_index (band);

-- One row per article that belongs to a story, with its outlet: the publisher of the page (its site
-- name: one site with two feeds is one outlet, an aggregator feed carries several), else the name of
-- the feed that brought it, else the host of its URL.
CREATE VIEW story_articles AS
SELECT
    a.story_id,
    a.article_id,
    coalesce(a.published_at, a.fetched_at) AS published_at,
    a.fetched_at,
    coalesce(
        a.sitename,
        f.name,
        nullif(lower(regexp_extract(coalesce(a.final_url, a.url), '^[A-Za-z][A-Za-z0-9+.-]*://(?:www\.)?([^/:?#@]+)', 1)), ''),
        a.url
    ) AS outlet,
    a.title,
    a.url,
    a.feed_url,
    a.duplicate_of
FROM articles a
LEFT JOIN feeds f ON f.feed_url = a.feed_url
WHERE a.story_id IS NOT NULL;

-- One row per story: when it was first published and first fetched, its earliest article, how
-- many articles and distinct outlets carry it, and the outlets in the order they published it.
CREATE VIEW stories AS
WITH outlet_first AS (
    SELECT story_id, outlet, min(published_at) AS first_at
    FROM story_articles
    GROUP BY story_id, outlet
),
outlet_order AS (
    SELECT story_id, list(outlet ORDER BY first_at, outlet) AS outlets_in_order
    FROM outlet_first
    GROUP BY story_id
)
SELECT
    s.story_id,
    min(s.published_at) AS first_published_at,
    min(s.fetched_at) AS first_seen_at,
    first(s.article_id ORDER BY s.published_at, s.article_id) AS first_article_id,
    first(s.title ORDER BY s.published_at, s.article_id) AS title,
    first(s.outlet ORDER BY s.published_at, s.article_id) AS first_outlet,
    count(*) AS articles,
    count(DISTINCT s.outlet) AS outlets,
    any_value(o.outlets_in_order) AS outlets_in_order,
    max(s.published_at) AS last_published_at
FROM story_articles s
JOIN outlet_order o USING (story_id)
GROUP BY s.story_id;
