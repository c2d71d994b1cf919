-- Health report: feeds that are not healthy (a state other than 'active', or failing now),
-- longest failure streak first; at most $limit rows, with the number of all such feeds.
SELECT feed_url,
       coalesce(name, title)  AS feed_name,
       state,
       consecutive_failures,
       first_failure_at,
       last_success_at,
       last_error_class,
       last_error,
       next_due_at,
       count(*) OVER ()       AS failing_feeds
FROM feeds
WHERE coalesce(state, 'active') <> 'active' OR consecutive_failures > 0
ORDER BY consecutive_failures DESC, state NULLS LAST, feed_url
LIMIT $limit;
