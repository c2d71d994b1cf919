-- Health report: how many feeds are in each life-cycle state (migration 005). state is NULL for
-- a feed row whose state was never set; the report shows those as "not set".
SELECT state, count(*) AS feeds
FROM feeds
GROUP BY state
ORDER BY state NULLS LAST;
