-- grain:   one row for the whole run (ok rows only)
-- inputs:  table `rows`; no parameters
-- returns: n_cells, wall_ms (sum over cells of the worker's wall time per cell), decode_ms (the
--          decoders' own time: every timed repeat plus the warm-up, measured where the rows
--          have warmup_ms, else estimated at the p50), prepare_ms (native encode + caption
--          encoding), score_ms (the decoders' metrics), images_wait_ms (the part of the PNG
--          writes a cell waited for), images_ms (the writes' own time on the writer threads,
--          overlapping the metrics), features_ms (set-level features), other_ms (the rest:
--          image loading, LDM capture, model moves, what older rows do not split out),
--          decode_fraction (decode_ms / wall_ms: the device-busy share)
WITH cells AS (
    SELECT
        cell_id,
        any_value(cell_wall_ms) AS wall_ms,
        coalesce(any_value(encode_ms), 0) + coalesce(any_value(caption_ms), 0) AS prepare_ms,
        sum(list_sum(latency_ms) + coalesce(warmup_ms, latency_ms_p50 * warmup)) AS decode_ms,
        sum(score_ms) AS score_ms,
        any_value(images_wait_ms) AS images_wait_ms,
        any_value(images_ms) AS images_ms,
        any_value(features_ms) AS features_ms
    FROM rows
    WHERE status = 'ok' AND cell_wall_ms IS NOT NULL
    GROUP BY cell_id
)
SELECT
    count(*) AS n_cells,
    sum(wall_ms) AS wall_ms,
    sum(decode_ms) AS decode_ms,
    sum(prepare_ms) AS prepare_ms,
    sum(score_ms) AS score_ms,
    sum(images_wait_ms) AS images_wait_ms,
    sum(images_ms) AS images_ms,
    sum(features_ms) AS features_ms,
    sum(wall_ms) - sum(decode_ms) - sum(prepare_ms) - coalesce(sum(score_ms), 0)
        - coalesce(sum(images_wait_ms), 0) - coalesce(sum(features_ms), 0) AS other_ms,
    sum(decode_ms) / nullif(sum(wall_ms), 0) AS decode_fraction
FROM cells
