-- grain:   one row per (mode, backbone, ckpt_type, precision, compile, out_height, out_width, sigma,
--          save_xt_step, decoder)
-- inputs:  table `rows` (the latest attempt per (cell, decoder) of every part, read with
--          union_by_name); no parameters
-- returns: n_rows, n_ok, latency_ms_p50 (median over ok rows of each row's p50),
--          peak_mem_allocated_bytes (max over ok rows; null on CPU), then the mean over ok rows of
--          every metric_* column present in the parts (metric_notes is text and left out)
SELECT
    mode,
    backbone,
    ckpt_type,
    precision,
    compile,
    out_height,
    out_width,
    sigma,
    save_xt_step,
    decoder,
    count(*) AS n_rows,
    count(*) FILTER (WHERE status = 'ok') AS n_ok,
    median(latency_ms_p50) FILTER (WHERE status = 'ok') AS latency_ms_p50,
    max(peak_mem_allocated_bytes) FILTER (WHERE status = 'ok') AS peak_mem_allocated_bytes,
    avg(COLUMNS(lambda c: c LIKE 'metric\_%' ESCAPE '\' AND c <> 'metric_notes'))
        FILTER (WHERE status = 'ok')
FROM rows
GROUP BY mode, backbone, ckpt_type, precision, compile, out_height, out_width, sigma, save_xt_step,
    decoder
ORDER BY
    mode, backbone, ckpt_type, precision, compile, out_height * out_width, out_height, sigma, save_xt_step NULLS FIRST,
    decoder
