-- grain:   one row per (setting, decoder, run_id), the setting being {{setting_keys}}
--          (pid_bench.axes.SETTING_KEYS); run_id is the report's name of the run (one value in
--          a run's own report; a cross-run leaderboard reads several runs into `rows`), so rows
--          of one setting and decoder from several runs sit next to each other
-- inputs:  table `rows` (the latest attempt per (cell, decoder) of every part of the run(s),
--          read with union_by_name); no parameters. Placeholders, filled in from code by
--          pid_bench.rundb.sql_text: {{setting_keys}} the setting columns; {{setting_order}}
--          their sort order (the output size by area then height, x0 first)
-- returns: the setting columns, decoder, run_id, n_rows, n_ok, latency_ms_p50 (median over ok
--          rows of each row's p50), n_noisy (ok rows whose repeats are noisy: timing_noisy),
--          peak_mem_allocated_bytes (max over ok rows; null on CPU), then the mean over ok rows
--          of every metric_* column present in the parts (metric_notes is text and left out)
SELECT
    {{setting_keys}},
    decoder,
    run_id,
    count(*) AS n_rows,
    count(*) FILTER (WHERE status = 'ok') AS n_ok,
    median(latency_ms_p50) FILTER (WHERE status = 'ok') AS latency_ms_p50,
    count(*) FILTER (WHERE status = 'ok' AND coalesce(timing_noisy, false)) AS n_noisy,
    max(peak_mem_allocated_bytes) FILTER (WHERE status = 'ok') AS peak_mem_allocated_bytes,
    avg(COLUMNS(lambda c: c LIKE 'metric\_%' ESCAPE '\' AND c <> 'metric_notes'))
        FILTER (WHERE status = 'ok')
FROM rows
GROUP BY {{setting_keys}}, decoder, run_id
ORDER BY {{setting_order}}, decoder, run_id
