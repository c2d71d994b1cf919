-- Feed health: last status, failures in a row, entries seen.
SELECT coalesce(name, feed_url) AS feed, format, last_status, last_success_at,
       consecutive_failures, last_error_class, entries_seen
FROM feeds
ORDER BY consecutive_failures DESC, feed;
