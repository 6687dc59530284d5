-- grain:   one row for the whole run (ok rows only)
-- inputs:  table `rows`; no parameters
-- returns: n_cells, wall_ms (sum over cells of the worker's wall time per cell), decode_ms (the
--          decoders' own time: every timed repeat plus warm-up runs estimated at the p50),
--          prepare_ms (native encode + caption encoding), other_ms (the rest: image loading,
--          LDM capture, resizes for metrics, metrics, PNG writing), decode_fraction
WITH cells AS (
    SELECT
        cell_id,
        any_value(cell_wall_ms) AS wall_ms,
        coalesce(any_value(encode_ms), 0) + coalesce(any_value(caption_ms), 0) AS prepare_ms,
        sum(list_sum(latency_ms) + latency_ms_p50 * warmup) AS decode_ms
    FROM rows
    WHERE status = 'ok' AND cell_wall_ms IS NOT NULL
    GROUP BY cell_id
)
SELECT
    count(*) AS n_cells,
    sum(wall_ms) AS wall_ms,
    sum(decode_ms) AS decode_ms,
    sum(prepare_ms) AS prepare_ms,
    sum(wall_ms) - sum(decode_ms) - sum(prepare_ms) AS other_ms,
    sum(decode_ms) / nullif(sum(wall_ms), 0) AS decode_fraction
FROM cells
