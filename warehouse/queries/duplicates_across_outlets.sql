-- Duplicates: each copy, the original it copies (the version whose text was copied), and why they match.
SELECT o.title AS original_title, o.url AS original_url, o.version AS original_version,
       d.url AS copy_url, d.duplicate_reason AS matched_by, d.fetched_at AS copy_fetched_at
FROM articles_latest d JOIN articles o ON o.article_id = d.duplicate_of
ORDER BY d.fetched_at DESC
LIMIT 50;
