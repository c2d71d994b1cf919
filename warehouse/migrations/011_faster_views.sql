-- 011: the same three views as 007, computed with less work (same columns, same rows: checked
-- against 007's at 1,000,000 articles, benchmarks/queries.py).
--
-- articles_latest: 007 ran a window over every article (a sort of the whole table by
-- article_key) to find each URL's latest version, though nearly every article has one version.
-- Here only the article keys that have a version 2 or later are grouped; every other article is
-- its own latest version (0.32 s -> 0.1 s at 1M articles).
-- stories: 007 grouped every story's articles twice and took the first article with an ordered
-- aggregate. Here one pass per (story, outlet) keeps what the story needs of that outlet, with
-- the outlet's first article by (published_at, article_id), and the story is made from those.
--
-- warehouse.stories.story_views_sql() makes the views from here on a Parquet connection.

-- One row per article (URL): its latest version, how many versions it has, when it was first fetched.
CREATE OR REPLACE VIEW articles_latest AS
SELECT
    a.*,
    coalesce(v.versions, 1) AS versions,
    coalesce(v.first_fetched_at, a.fetched_at) AS first_fetched_at
FROM articles a
LEFT JOIN (
    SELECT article_key, count(*) AS versions, min(fetched_at) AS first_fetched_at, max(version) AS latest
    FROM articles
    WHERE article_key IN (SELECT article_key FROM articles WHERE version > 1)
    GROUP BY article_key
) v ON v.article_key = a.article_key
WHERE a.version = coalesce(v.latest, 1);

-- One row per article that belongs to a story, in its latest version, with its outlet: the
-- publisher of the page (its site name: one site with two feeds is one outlet, an aggregator feed
-- carries several), else the name of the feed that brought it, else the host of its URL.
-- `fetched_at` is when the article was first fetched (its first version).
CREATE OR REPLACE VIEW story_articles AS
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
CREATE OR REPLACE VIEW stories AS
WITH per_outlet AS (
    SELECT
        story_id,
        outlet,
        min(published_at) AS first_at,
        max(published_at) AS last_at,
        min(fetched_at) AS first_seen_at,
        count(*) AS articles,
        arg_min({'article_key': article_key, 'title': title, 'article_id': article_id},
                (published_at, article_id)) AS first_row
    FROM story_articles
    GROUP BY story_id, outlet
)
SELECT
    story_id,
    min(first_at) AS first_published_at,
    min(first_seen_at) AS first_seen_at,
    arg_min(first_row.article_key, (first_at, first_row.article_id)) AS first_article_id,
    arg_min(first_row.title, (first_at, first_row.article_id)) AS title,
    arg_min(outlet, (first_at, first_row.article_id)) AS first_outlet,
    CAST(sum(articles) AS BIGINT) AS articles,
    count(*) AS outlets,
    list(outlet ORDER BY first_at, outlet) AS outlets_in_order,
    max(last_at) AS last_published_at
FROM per_outlet
GROUP BY story_id;
