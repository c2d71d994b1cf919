-- 007: article versions. A URL fetched again whose text changed is a new version of its article:
-- a new `articles` row with `version` = latest + 1, every older version kept. Same text: no row.
--
-- article_id   version 1: hash of url_key (unchanged: every id stored before stays valid);
--              version n > 1: hash of url_key and n (tasks.dedup.article_id_for)
-- article_key  the article_id of version 1: the same on every version of the URL
-- version      1, 2, ...
-- url_key      no longer unique: one row per version, UNIQUE (url_key, version)
--
-- `articles` holds every version; the view `articles_latest` one row per URL, its latest version.
--
-- DuckDB cannot drop a UNIQUE constraint in place: the table is rebuilt (its rows copied aside,
-- the table dropped and created again, the rows copied back), and the views over it are dropped
-- first and made again at the end. No ALTER TABLE ... RENAME: replaying a write-ahead log that
-- renames a table and indexes it in one transaction is fragile in DuckDB (duckdb/duckdb#25510),
-- and a writer killed before its next checkpoint leaves exactly that log.
--
-- No secondary index (CREATE INDEX) on the new table, where 001 had two (canonical_url,
-- content_hash): with DuckDB 1.5.5 such an index can lose its entries when a writer is killed and
-- the next one recovers (tests/test_crash.py's kills: lookups by an indexed column found 0 of 18
-- stored rows, 21 of 24 in another run), and a lookup answered from it then misses rows that are
-- there: a copy passes for an original, a stored URL for a new one. Constraint indexes (the
-- primary key, UNIQUE) came through the same kills whole. The lookups of a load batch (200
-- pages) hold more keys than DuckDB answers from an index anyway (dynamic_or_filter_threshold,
-- 50): they scan the column either way (measured at a million articles, 100 keys: 0.20 s
-- without the index, 0.18 s with it).

DROP VIEW IF EXISTS stories;
DROP VIEW IF EXISTS story_articles;

CREATE TABLE articles_before_007 AS SELECT * FROM articles;
DROP TABLE articles;

CREATE TABLE articles (
    article_id        VARCHAR PRIMARY KEY,  -- see above
    url               VARCHAR NOT NULL,     -- the link exactly as the feed entry gave it
    url_key           VARCHAR NOT NULL,     -- canonical form of url; one row per version
    final_url         VARCHAR,              -- after redirects
    canonical_url     VARCHAR,              -- <link rel=canonical> on the same site, else canonical final_url
    feed_url          VARCHAR,
    entry_key         VARCHAR,
    guid              VARCHAR,
    title             VARCHAR,
    author            VARCHAR,
    published_at      TIMESTAMPTZ,
    language          VARCHAR,
    sitename          VARCHAR,
    description       VARCHAR,
    categories        VARCHAR[],
    tags              VARCHAR[],
    image             VARCHAR,
    text              VARCHAR,
    text_chars        INTEGER,
    content_hash      VARCHAR,
    duplicate_of      VARCHAR,              -- NULL for an original
    duplicate_reason  VARCHAR,              -- 'canonical_url' | 'content_hash'
    http_status       INTEGER,
    fetched_at        TIMESTAMPTZ NOT NULL,
    raw_path          VARCHAR,              -- WARC file under the data dir
    raw_offset        BIGINT,               -- offset of the response record in it
    extractor         VARCHAR,
    extractor_version VARCHAR,
    extractor_options VARCHAR,
    extraction_error  VARCHAR,
    run_id            VARCHAR NOT NULL,
    load_batch        VARCHAR NOT NULL,
    ingest_date       DATE NOT NULL,
    story_id          VARCHAR,              -- 003; a new version keeps its article's story
    version           INTEGER NOT NULL DEFAULT 1,
    article_key       VARCHAR NOT NULL,     -- the article_id of version 1
    UNIQUE (url_key, version)
);

INSERT INTO articles BY NAME
SELECT *, 1 AS version, article_id AS article_key FROM articles_before_007;
DROP TABLE articles_before_007;

-- The Parquet files of `articles` get the two new columns: each partition is rewritten from DuckDB
-- by the next writer (Warehouse.recover / export_pending, the path of every unexported batch), so
-- an interrupted rewrite is finished by the writer after it.
INSERT INTO load_batches
SELECT 'migration-007-article-versions', 'migration-007', now(),
       list(DISTINCT 'articles@' || CAST(ingest_date AS VARCHAR) ORDER BY 'articles@' || CAST(ingest_date AS VARCHAR)),
       false
FROM articles
HAVING count(*) > 0;

-- The views, last: warehouse.stories.story_views_sql() makes them from here on a Parquet connection.

-- One row per article (URL): its latest version, how many versions it has, when it was first fetched.
CREATE VIEW articles_latest AS
SELECT
    *,
    count(*) OVER by_article AS versions,
    min(fetched_at) OVER by_article AS first_fetched_at
FROM articles
WINDOW by_article AS (PARTITION BY article_key)
QUALIFY version = max(version) OVER by_article;

-- One row per article that belongs to a story, in its latest version, with its outlet: the
-- publisher of the page (its site name: one site with two feeds is one outlet, an aggregator feed
-- carries several), else the name of the feed that brought it, else the host of its URL.
-- `fetched_at` is when the article was first fetched (its first version).
CREATE VIEW story_articles AS
SELECT
    a.story_id,
    a.article_id,
    coalesce(a.published_at, a.first_fetched_at) AS published_at,
    a.first_fetched_at AS fetched_at,
    coalesce(
        a.sitename,
        f.name,
        nullif(lower(regexp_extract(coalesce(a.final_url, a.url), '^[A-Za-z][A-Za-z0-9+.-]*://(?:www\.)?([^/:?#@]+)', 1)), ''),
        a.url
    ) AS outlet,
    a.title,
    a.url,
    a.feed_url,
    a.duplicate_of,
    a.version,
    a.article_key
FROM articles_latest a
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
    first(s.article_key ORDER BY s.published_at, s.article_id) AS first_article_id,
    first(s.title ORDER BY s.published_at, s.article_id) AS title,
    first(s.outlet ORDER BY s.published_at, s.article_id) AS first_outlet,
    count(*) AS articles,
    count(DISTINCT s.outlet) AS outlets,
    any_value(o.outlets_in_order) AS outlets_in_order,
    max(s.published_at) AS last_published_at
FROM story_articles s
JOIN outlet_order o USING (story_id)
GROUP BY s.story_id;
