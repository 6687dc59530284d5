-- grain:   one row per row of `rows` whose status is not ok
-- inputs:  table `rows`; no parameters
-- returns: the failed row's decoder, cell_id, status, axes, and the first line of its error
SELECT
    decoder,
    cell_id,
    coalesce(status, 'unknown') AS status,
    backbone,
    ckpt_type,
    out_height,
    out_width,
    sigma,
    image_id,
    split_part(coalesce(error, ''), chr(10), 1) AS error_first_line
FROM rows
WHERE status IS DISTINCT FROM 'ok'
ORDER BY decoder, cell_id
