-- grain:   one row per (backbone, ckpt_type, image_id, sigma, out_height, out_width) whose PiD
--          image was saved; at most $groups rows, spread over images first (each image's first
--          group, then each image's second, ...)
-- inputs:  table `rows`, ok rows; parameter $groups (how many groups to return)
-- returns: caption, reference_path, and the image_path of the native+bicubic, native and pid rows
--          (paths relative to the run directory; null where that decoder saved no image)
WITH groups AS (
    SELECT
        backbone,
        ckpt_type,
        image_id,
        sigma,
        out_height,
        out_width,
        any_value(caption) AS caption,
        max(reference_path) AS reference_path,
        max(image_path) FILTER (WHERE decoder = 'native+bicubic') AS bicubic_path,
        max(image_path) FILTER (WHERE decoder = 'native') AS native_path,
        max(image_path) FILTER (WHERE decoder = 'pid') AS pid_path
    FROM rows
    WHERE status = 'ok'
    GROUP BY backbone, ckpt_type, image_id, sigma, out_height, out_width
), ranked AS (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY image_id ORDER BY backbone, ckpt_type, sigma, out_height * out_width
        ) AS nth_of_image
    FROM groups
    WHERE pid_path IS NOT NULL
)
SELECT * EXCLUDE (nth_of_image)
FROM ranked
ORDER BY nth_of_image, image_id, backbone, ckpt_type, sigma, out_height * out_width
LIMIT $groups
