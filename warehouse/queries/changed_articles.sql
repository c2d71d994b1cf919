-- Articles that changed after they were first fetched (several versions), most recently changed first.
SELECT url, versions, first_fetched_at, fetched_at AS changed_at, title
FROM articles_latest
WHERE versions > 1
ORDER BY changed_at DESC
LIMIT 20;
