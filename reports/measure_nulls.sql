-- grain:   one row per (decoder, column_name, reason)
-- inputs:  table `rows`, ok rows with measure_notes (JSON {column: reason}); no parameters
-- returns: decoder, column_name (a timing, memory or compute column left null), reason, n (rows)
SELECT
    decoder,
    entry.key AS column_name,
    entry.value AS reason,
    count(*) AS n
FROM (
    SELECT decoder, unnest(map_entries(CAST(json(measure_notes) AS MAP(VARCHAR, VARCHAR)))) AS entry
    FROM rows
    WHERE status = 'ok' AND measure_notes IS NOT NULL
)
GROUP BY ALL
ORDER BY decoder, column_name, reason
