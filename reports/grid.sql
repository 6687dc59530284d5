-- grain:   one row per cell of the report with at least one saved image: every setting of the
--          image viewer, in the leaderboard's order of settings, then image and seed
-- inputs:  table `rows`, ok rows; no parameters. Placeholders, filled in from code by
--          pid_bench.rundb.sql_text: {{setting_keys}} the setting columns
--          (pid_bench.axes.SETTING_KEYS); {{setting_order}} their sort order (the output size by
--          area then height, x0 first). A viewer setting is a setting (pid_steps included)
-- returns: cell_id, the cell's axes, image_id, seed, caption, reference_path, images (a list of
--          {decoder, path}: each ok decoder row's image_path, by decoder; paths relative to the
--          run directory), and embed_rank: the order in which the viewer embeds previews up to
--          its cap (each setting's first image and seed first, then each one's second, ...), so
--          a capped page still previews every backbone, size and noise level
WITH cells AS (
    SELECT
        cell_id,
        {{setting_keys}},
        image_id,
        seed,
        any_value(caption) AS caption,
        max(reference_path) AS reference_path,
        list({'decoder': decoder, 'path': image_path} ORDER BY decoder)
            FILTER (WHERE image_path IS NOT NULL) AS images
    FROM rows
    WHERE status = 'ok'
    GROUP BY ALL
    HAVING count(image_path) > 0
), ordered AS (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY {{setting_keys}}
            ORDER BY image_id, seed, cell_id
        ) AS nth_of_setting
    FROM cells
)
SELECT
    * EXCLUDE (nth_of_setting),
    row_number() OVER (
        ORDER BY nth_of_setting, {{setting_order}}, image_id, seed, cell_id
    ) - 1 AS embed_rank
FROM ordered
ORDER BY {{setting_order}}, image_id, seed, cell_id
