-- Feed health, one row per feed (`newsflow feeds status`, the poll's health artifact).
-- $feeds: the feed URLs to show, or NULL for every feed in the warehouse.
-- mean_new_per_day counts new entries since the feed was added; new_per_day is the smoothed
-- rate the scheduler uses (recent weeks weigh most).
SELECT coalesce(name, title, feed_url)                       AS feed,
       feed_url,
       coalesce(state, 'active')                             AS state,
       last_success_at,
       consecutive_failures                                  AS failures,
       last_error_class,
       left(last_error, 200)                                 AS last_error,
       next_due_at,
       round(entries_seen / greatest(date_diff('second', added_at, coalesce(last_fetched_at, added_at)) / 86400.0, 1.0), 2)
                                                             AS mean_new_per_day,
       round(new_per_day, 2)                                 AS new_per_day,
       poll_interval_s,
       fetch_url                                             AS moved_to
FROM feeds
WHERE $feeds IS NULL OR feed_url IN (SELECT unnest($feeds::VARCHAR[]))
