-- grain:   one row per distinct provenance tuple (git_sha, device, device_name, dtype, versions)
-- inputs:  table `rows`; no parameters
-- returns: n (rows), random_weights (true if any of those rows ran random networks)
SELECT
    git_sha,
    device,
    device_name,
    dtype,
    torch_version,
    diffusers_version,
    pid_bench_version,
    count(*) AS n,
    coalesce(bool_or(random_weights), false) AS random_weights
FROM rows
GROUP BY ALL
ORDER BY n DESC, git_sha, device
