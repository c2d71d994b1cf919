-- Health report: failed fetches (fetch_log rows with an error class) per day and error class,
-- feeds and pages counted apart, for the days $since .. $until (ingest_date, UTC).
SELECT ingest_date                              AS day,
       error_class                              AS error_class,
       count(*) FILTER (WHERE kind = 'feed')    AS feed_failures,
       count(*) FILTER (WHERE kind <> 'feed')   AS page_failures
FROM fetch_log
WHERE error_class IS NOT NULL
  AND ingest_date BETWEEN $since AND $until
GROUP BY ingest_date, error_class
ORDER BY day, error_class;
