-- Phrase search in the main text (case-insensitive), originals only, in their latest version,
-- through the full-text index that `newsflow warehouse maintain` builds: the articles holding
-- both words (the index keeps them stemmed: 'secur', 'guarante'), then those holding the phrase.
-- `newsflow search "security guarantee"` also covers the articles stored since the last build,
-- and scans every text when there is no index.
WITH hits AS (
    SELECT d.name AS article_id
    FROM fts_main_articles.terms t JOIN fts_main_articles.docs d ON d.docid = t.docid
    WHERE t.termid IN (SELECT termid FROM fts_main_articles.dict WHERE term IN ('secur', 'guarante'))
    GROUP BY d.name HAVING count(DISTINCT t.termid) = 2
)
SELECT a.published_at, coalesce(f.name, a.sitename) AS outlet, a.title, a.url
FROM hits JOIN articles_latest a USING (article_id) LEFT JOIN feeds f USING (feed_url)
WHERE a.duplicate_of IS NULL AND a.text ILIKE '%security guarantee%'
ORDER BY a.published_at DESC NULLS LAST;
