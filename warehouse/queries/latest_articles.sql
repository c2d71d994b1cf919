-- The latest articles with their outlet and the start of their (latest) text.
SELECT a.published_at, coalesce(f.name, a.sitename) AS outlet, a.title, a.author, a.language,
       left(a.text, 120) AS text_start
FROM articles_latest a LEFT JOIN feeds f USING (feed_url)
WHERE a.duplicate_of IS NULL AND a.text IS NOT NULL
ORDER BY a.published_at DESC NULLS LAST
LIMIT 10;
