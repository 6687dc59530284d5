-- grain:   one row per (decoder, out_megapixels); PiD rows only carry FLOPs
-- inputs:  table `rows`, ok rows with a FLOP count; no parameters
-- returns: out_megapixels, flops (one decode), achieved_tflops and mfu (medians over the rows;
--          null on CPU), n (rows), n_mfu (rows with an MFU)
SELECT
    decoder,
    out_height * out_width / 1e6 AS out_megapixels,
    median(flops) AS flops,
    median(achieved_tflops) AS achieved_tflops,
    median(mfu) AS mfu,
    count(*) AS n,
    count(mfu) AS n_mfu
FROM rows
WHERE status = 'ok' AND flops IS NOT NULL
GROUP BY decoder, out_megapixels
ORDER BY decoder, out_megapixels
