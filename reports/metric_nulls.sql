-- grain:   one row per (metric, reason) for each metric the suite asked for that is null in
--          some ok row of the report
-- inputs:  table `metric_values` (cell_id, decoder, status, ordinal, metric, value, note);
--          no parameters
-- returns: metric, reason (the row's note; rows without one predate the request), n_null
--          (ok rows null for that reason), n_ok (ok rows in the report), in the suite's order
WITH ok AS (
    SELECT * FROM metric_values WHERE status = 'ok'
),
totals AS (
    SELECT metric, count(*) AS n_ok FROM ok GROUP BY metric
)
SELECT
    ok.metric,
    coalesce(ok.note, 'not recorded in the row (computed before the suite asked for this metric)')
        AS reason,
    count(*) AS n_null,
    any_value(totals.n_ok) AS n_ok,
    min(ok.ordinal) AS ordinal
FROM ok
JOIN totals USING (metric)
WHERE ok.value IS NULL
GROUP BY ok.metric, reason
ORDER BY ordinal, n_null DESC, reason
