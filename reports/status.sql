-- grain:   one row per status (ok | error | oom | worker_lost)
-- inputs:  table `rows`; no parameters
-- returns: n (rows with that status), most frequent first
SELECT
    coalesce(status, 'unknown') AS status,
    count(*) AS n
FROM rows
GROUP BY ALL
ORDER BY n DESC, status
