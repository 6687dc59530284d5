-- grain:   one row per (decoder, out_height, out_width)
-- inputs:  table `rows`, ok rows; no parameters
-- returns: peak_mem_allocated_bytes and peak_mem_reserved_bytes (max over the rows; null when no
--          row has a reading, as on CPU), n_readings (rows with an allocated-bytes reading)
SELECT
    decoder,
    out_height,
    out_width,
    max(peak_mem_allocated_bytes) AS peak_mem_allocated_bytes,
    max(peak_mem_reserved_bytes) AS peak_mem_reserved_bytes,
    count(peak_mem_allocated_bytes) AS n_readings
FROM rows
WHERE status = 'ok'
GROUP BY decoder, out_height, out_width
ORDER BY decoder, out_height * out_width, out_height
