-- Phrase search in the main text (case-insensitive), originals only, in their latest version,
-- through the full-text index that `newsflow warehouse maintain` builds. The index keeps each word
-- stemmed ('security' is 'secur', 'guarantee' is 'guarante') with its position in the text: the
-- articles where 'guarante' comes right after 'secur', then those holding the phrase.
-- `newsflow search "security guarantee"` also covers the articles stored since the last build,
-- and scans every text when there is no index.
-- DuckDB reads those articles through the primary key's index only when a thousand keys count as
-- few (its default is 50), and only when the text filter is not pushed into that read (OFFSET 0).
SET dynamic_or_filter_threshold = 10000;
WITH phrase(term, pos) AS (VALUES ('secur', 1), ('guarante', 2)),
hits AS (
    SELECT DISTINCT d.name AS article_id
    FROM fts_main_articles.terms t
    JOIN fts_main_articles.dict USING (termid) JOIN phrase p USING (term)
    JOIN fts_main_articles.docs d ON d.docid = t.docid
    GROUP BY d.name, t.pos - p.pos HAVING count(*) = 2
),
candidates AS (SELECT a.* FROM hits JOIN articles a USING (article_id) OFFSET 0)
SELECT a.published_at, coalesce(f.name, a.sitename) AS outlet, a.title, a.url
FROM candidates a LEFT JOIN feeds f USING (feed_url)
WHERE a.duplicate_of IS NULL AND a.text ILIKE '%security guarantee%'
  AND NOT EXISTS (  -- a later version of the same URL
        SELECT 1 FROM articles b
        WHERE b.version > 1 AND b.article_key = a.article_key AND b.version > a.version)
ORDER BY a.published_at DESC NULLS LAST;
