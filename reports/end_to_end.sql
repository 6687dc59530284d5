-- grain:   one row per (setting, decoder) of the from_ldm rows, the setting being
--          {{setting_keys}} (pid_bench.axes.SETTING_KEYS; save_xt_step null: the final latent
--          x0). mode is constant here; precision and compile keep apart rows that an earlier
--          version of this query merged (it grouped by backbone, ckpt_type, size and step only)
-- inputs:  table `rows`, ok from_ldm rows; no parameters. Placeholder, filled in from code by
--          pid_bench.rundb.sql_text: {{setting_keys}} the setting columns
-- returns: the setting columns, decoder, ldm_ms (median LDM time to the captured step; x0: the
--          whole LDM call), decode_ms (median of the rows' p50), end_to_end_ms (median over rows
--          of ldm_ms_to_step + latency_ms_p50: "LDM to step K + decoder"), ldm_total_ms (median
--          whole LDM call), n; ordered by pair, size, step (x0 last) and decoder, the other
--          setting columns breaking ties
SELECT
    {{setting_keys}},
    decoder,
    median(ldm_ms_to_step) AS ldm_ms,
    median(latency_ms_p50) AS decode_ms,
    median(ldm_ms_to_step + latency_ms_p50) AS end_to_end_ms,
    median(ldm_total_ms) AS ldm_total_ms,
    count(*) AS n
FROM rows
WHERE status = 'ok' AND mode = 'from_ldm' AND ldm_ms_to_step IS NOT NULL
GROUP BY {{setting_keys}}, decoder
ORDER BY
    backbone, ckpt_type, out_height * out_width, out_height, save_xt_step NULLS LAST, decoder,
    {{setting_keys}}
