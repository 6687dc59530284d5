-- grain:   one row per (metric, reason) of set-level metrics (fid, kid) that are null in some
--          (setting, decoder) group of the report
-- inputs:  table `set_values` (pid_bench.sets rows of the report's groups); no parameters
-- returns: metric, reason, n_null (groups null for that reason), n_groups (groups computed)
WITH totals AS (
    SELECT metric, count(*) AS n_groups FROM set_values GROUP BY metric
)
SELECT
    s.metric,
    coalesce(s.reason, 'no value') AS reason,
    count(*) AS n_null,
    any_value(totals.n_groups) AS n_groups
FROM set_values AS s
JOIN totals USING (metric)
WHERE s.value IS NULL
GROUP BY s.metric, reason
ORDER BY s.metric, n_null DESC, reason
