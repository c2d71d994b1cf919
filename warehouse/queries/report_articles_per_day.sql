-- Health report: articles stored per day and feed, for the days $since .. $until (ingest_date,
-- the UTC day the row was loaded). Duplicates are counted as well (they are pages the feed made
-- us fetch) and also on their own. feed_url is NULL for articles that came from no feed (a
-- backfill of a URL list or a sitemap). The name is the feed list's, else the feed's own title.
SELECT a.ingest_date                        AS day,
       a.feed_url                           AS feed_url,
       any_value(coalesce(f.name, f.title)) AS feed_name,
       count(*)                             AS articles,
       count(a.duplicate_of)                AS duplicates
FROM articles a
LEFT JOIN feeds f ON f.feed_url = a.feed_url
WHERE a.ingest_date BETWEEN $since AND $until
GROUP BY a.ingest_date, a.feed_url
ORDER BY day, feed_url NULLS LAST;
