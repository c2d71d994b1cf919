-- The latest failed fetches of feeds and pages, with their error class.
SELECT fetched_at, kind, url, status, error_class, error_message
FROM fetch_log
WHERE error_class IS NOT NULL
ORDER BY fetched_at DESC
LIMIT 20;
