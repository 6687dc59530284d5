-- grain:   one row per (decoder, sigma)
-- inputs:  table `rows`, ok rows with a sigma; no parameters
-- returns: n (rows), then the mean of every metric_* column present (metric_notes left out)
SELECT
    decoder,
    sigma,
    count(*) AS n,
    avg(COLUMNS(lambda c: c LIKE 'metric\_%' ESCAPE '\' AND c <> 'metric_notes'))
FROM rows
WHERE status = 'ok' AND sigma IS NOT NULL
GROUP BY decoder, sigma
ORDER BY decoder, sigma
