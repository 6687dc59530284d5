-- grain:   one row per (backbone, ckpt_type, out_height, out_width, save_xt_step, decoder) of the
--          from_ldm rows (save_xt_step null: the final latent x0)
-- inputs:  table `rows`, ok from_ldm rows; no parameters
-- returns: ldm_ms (median LDM time to the captured step; x0: the whole LDM call), decode_ms
--          (median of the rows' p50), end_to_end_ms (median over rows of ldm_ms_to_step +
--          latency_ms_p50: "LDM to step K + decoder"), ldm_total_ms (median whole LDM call), n
SELECT
    backbone,
    ckpt_type,
    out_height,
    out_width,
    save_xt_step,
    decoder,
    median(ldm_ms_to_step) AS ldm_ms,
    median(latency_ms_p50) AS decode_ms,
    median(ldm_ms_to_step + latency_ms_p50) AS end_to_end_ms,
    median(ldm_total_ms) AS ldm_total_ms,
    count(*) AS n
FROM rows
WHERE status = 'ok' AND mode = 'from_ldm' AND ldm_ms_to_step IS NOT NULL
GROUP BY backbone, ckpt_type, out_height, out_width, save_xt_step, decoder
ORDER BY backbone, ckpt_type, out_height * out_width, out_height, save_xt_step NULLS LAST, decoder
