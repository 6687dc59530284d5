-- grain:   one row per status (ok | error | oom | worker_lost | storage_error) of the latest
--          attempts
-- inputs:  table `rows`; no parameters
-- returns: n (rows with that status), most frequent first
SELECT
    coalesce(status, 'unknown') AS status,
    count(*) AS n
FROM rows
GROUP BY ALL
ORDER BY n DESC, status
