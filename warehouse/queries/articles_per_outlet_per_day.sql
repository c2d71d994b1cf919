-- Articles per outlet per day (originals only, each in its latest version), newest day first.
SELECT coalesce(f.name, a.sitename, a.feed_url) AS outlet,
       CAST(a.published_at AS DATE)             AS day,
       count(*)                                 AS articles
FROM articles_latest a LEFT JOIN feeds f USING (feed_url)
WHERE a.duplicate_of IS NULL
GROUP BY ALL
ORDER BY day DESC NULLS LAST, articles DESC
LIMIT 50;
