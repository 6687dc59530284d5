-- grain:   one row per (decoder, out_megapixels)
-- inputs:  table `rows`, ok rows with a latency; no parameters
-- returns: out_megapixels = out_height * out_width / 1e6, latency_ms_p50 (median over the rows'
--          p50 figures), n (rows behind the median)
SELECT
    decoder,
    out_height * out_width / 1e6 AS out_megapixels,
    median(latency_ms_p50) AS latency_ms_p50,
    count(*) AS n
FROM rows
WHERE status = 'ok' AND latency_ms_p50 IS NOT NULL
GROUP BY decoder, out_megapixels
ORDER BY decoder, out_megapixels
