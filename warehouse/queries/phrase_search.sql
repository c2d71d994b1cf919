-- Phrase search in the main text (case-insensitive), originals only, in their latest version.
SELECT a.published_at, coalesce(f.name, a.sitename) AS outlet, a.title, a.url
FROM articles_latest a LEFT JOIN feeds f USING (feed_url)
WHERE a.duplicate_of IS NULL AND a.text ILIKE '%security guarantee%'
ORDER BY a.published_at DESC NULLS LAST;
