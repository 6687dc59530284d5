"""Ray: a local Ray on loopback (or a cluster by address), one `CellWorker` actor per device,
and the scheduling of model groups onto them (`execute`); an actor that dies is replaced and its
cell retried."""

from __future__ import annotations

import os
import signal
import threading
from collections import defaultdict, deque
from contextlib import contextmanager

from pid_bench.settings import CellSettings
from pid_bench.suite import Cell
from pid_bench.worker import CellWorker, lost_rows

#: How long a dead actor's calls may take to return rows they finished before the death.
SETTLE_TIMEOUT_S = 30.0
#: Retries of a cell whose actor died (a fresh actor each time) before it is `worker_lost`.
DEFAULT_MAX_RETRIES = 2
#: Test-only: the device actors compute on whatever Ray assigned (fake GPUs run on "cpu").
WORKER_DEVICE_ENV = "PID_BENCH_WORKER_DEVICE"


class StopFlag:
    """SIGINT/SIGTERM set a flag the scheduling loop reads between cells (main thread only).

    `install` runs again after `ray.init`, which puts its own SIGTERM handler in place.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self.previous: dict = {}

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handler(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (parts stay atomic)
        self.signal = signal.Signals(signum).name

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._handler)

    @contextmanager
    def installed(self):
        self.install()
        try:
            yield self
        finally:
            for sig, old in self.previous.items():
                signal.signal(sig, old)


def model_groups(todo: list[tuple[str, Cell]], actors: int = 1) -> list[list[tuple[str, Cell]]]:
    """Cells grouped by the models they need, in first-seen order; while there are fewer groups
    than actors, the largest is halved so every actor works (each half loads its model once)."""
    by_model: dict[tuple[str, str], list[tuple[str, Cell]]] = {}
    for cid, cell in todo:
        by_model.setdefault((cell.backbone, cell.ckpt_type), []).append((cid, cell))
    groups = list(by_model.values())
    while len(groups) < actors:
        largest = max(range(len(groups)), key=lambda i: len(groups[i]), default=None)
        if largest is None or len(groups[largest]) < 2:
            break
        group = groups[largest]
        groups[largest : largest + 1] = [group[: len(group) // 2], group[len(group) // 2 :]]
    return groups


def execute(
    todo, settings: CellSettings, ray_address, cpu_workers: int, progress: bool,
    max_retries: int = DEFAULT_MAX_RETRIES, stop: StopFlag | None = None,
):  # fmt: skip
    """Yield the rows of each finished cell as actors complete them.

    One actor per GPU (else `cpu_workers` CPU actors). Each actor takes a whole model group,
    and the next group only when its group is done, so it loads each model once. An actor that
    dies is replaced; the cell it was running is retried up to `max_retries` times, then
    reported `worker_lost`; the cells queued behind it are resubmitted without penalty.
    """
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        init_ray(ray_address, cpu_workers)
        if stop is not None:
            stop.install()
    try:
        pool = ActorPool(settings, cpu_workers, todo)
        with ProgressBar(len(todo), progress) as bar:
            while pool.busy and not stop:
                for rows in pool.next_results(max_retries):
                    bar.update(rows)
                    yield rows
    finally:
        if started_here:
            ray.shutdown()
        elif "pool" in locals():  # a Ray we did not start (a notebook's, a test's) outlives us
            pool.close()


class ActorPool:
    """Actors, the groups still queued, and the calls in flight (ref -> call)."""

    def __init__(
        self, settings: CellSettings, cpu_workers: int, todo: list, worker: type | None = None
    ) -> None:
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.device = os.environ.get(WORKER_DEVICE_ENV) or ("cuda" if gpus else "cpu")
        resources = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 1}
        self.worker_cls = ray.remote(**resources)(worker or CellWorker)
        self.settings = settings
        wanted = gpus or max(1, cpu_workers)
        self.queue = deque(model_groups(todo, wanted))
        self.attempts: dict[str, int] = defaultdict(int)
        self.inflight: dict = {}  # ref -> (actor slot, submission number, cid, cell)
        self.submitted = 0
        count = min(wanted, len(self.queue))
        self.actors = [self._new_actor() for _ in range(count)]
        for slot in range(count):
            self._assign(slot)

    @property
    def busy(self) -> bool:
        return bool(self.inflight)

    def close(self) -> None:
        """Stop this run's actors (their CPUs and models go back to a Ray that stays up)."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)

    def _new_actor(self):
        return self.worker_cls.remote(self.device, self.settings)

    def _assign(self, slot: int) -> None:
        """Give the actor in `slot` the next queued group, if it has nothing in flight."""
        if not self.queue or any(s == slot for s, *_ in self.inflight.values()):
            return
        for cid, cell in self.queue.popleft():
            self.submitted += 1
            ref = self.actors[slot].run.remote(cid, cell)
            self.inflight[ref] = (slot, self.submitted, cid, cell)

    def next_results(self, max_retries: int) -> list[list[dict]]:
        """Wait up to a second for one call; the rows it settles (none on a retry)."""
        import ray
        from ray.exceptions import RayActorError

        ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=1.0)
        if not ready:
            return []
        slot, number, cid, cell = self.inflight.pop(ready[0])
        try:
            rows = ray.get(ready[0])
        except RayActorError as exc:
            return self._actor_died(slot, (number, cid, cell), exc, max_retries)
        except Exception as exc:  # the call failed outside run_cell (e.g. unpicklable result)
            rows = lost_rows(cid, cell, self.settings, exc)
        self._assign(slot)
        return [rows]

    def _actor_died(self, slot: int, failed, exc: BaseException, max_retries: int):
        """Replace the actor. Calls of it that finished before it died are settled normally; of
        the rest, the earliest submitted was running (retried, or given up after `max_retries`)
        and the others were queued behind it (resubmitted without penalty)."""
        import ray

        settled, casualties = [], [failed]
        for ref in [r for r, v in self.inflight.items() if v[0] == slot]:
            _, number, cid, cell = self.inflight.pop(ref)
            try:
                # A call that finished before the death returns its rows; one that did not
                # fails at once (its actor is dead). The wait only covers a finished call's
                # result still on its way: with timeout=0 a busy machine took it for a
                # casualty, and the call that killed the actor then ran once too often.
                settled.append(ray.get(ref, timeout=SETTLE_TIMEOUT_S))
            except Exception:
                casualties.append((number, cid, cell))
        calls = sorted(casualties, key=lambda call: call[0])
        running, queued = calls[0][1:], [c[1:] for c in calls[1:]]
        self.attempts[running[0]] += 1
        if self.attempts[running[0]] > max_retries:
            settled.append(lost_rows(*running, self.settings, exc))
        else:
            queued.insert(0, running)
        if queued:
            self.queue.appendleft(queued)
        self.actors[slot] = self._new_actor()
        self._assign(slot)
        return settled


class RayAddressError(ConnectionError):
    """A --ray-address / $RAY_ADDRESS that does not answer."""


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast, naming the address, when HOST:PORT (or ray://HOST:PORT) refuses connections;
    `ray.init` would otherwise retry for a long while. "auto" and other forms pass through."""
    import socket

    target = address.removeprefix("ray://").removeprefix("http://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as err:
        raise RayAddressError(
            f"Ray address {address} does not answer ({err.strerror or err}); start the cluster "
            "(`ray start --head`), fix --ray-address / $RAY_ADDRESS, or drop it to run locally"
        ) from None


#: Environment of the local Ray this tool starts; its processes inherit it at start-up.
LOCAL_RAY_ENV = {
    # Keeps the node IP 127.0.0.1 (Ray otherwise swaps a loopback _node_ip_address for the
    # machine's external address), so GCS, raylet, workers and agents all bind loopback.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # No usage report (ray.io) from the driver or the GCS.
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray 2.60's dashboard head asks the cloud metadata service (169.254.169.254) which cloud it
    # is on even with usage stats off (usage_stats_head.run calls get_cluster_config_to_report
    # before reading the setting). Plain HTTP from the local Ray's processes goes to a closed
    # loopback port instead; loopback itself stays direct. Nothing of ours uses HTTP (weights
    # are read offline), so this only stops the probe.
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost,::1",
}


@contextmanager
def loopback_ray():
    """Start-up settings of a local Ray, restored afterwards so that a later cluster
    connection in this process behaves as Ray's defaults say.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, into `ray_constants.ENABLE_RAY_CLUSTER`,
    when ray is first imported; if it was imported before this (a notebook, the tests), the
    constant is set for the duration of `ray.init` too. The "Token authentication is enabled"
    banner is dropped: on a local, loopback-only Ray it tells the user nothing (auth stays on).
    """
    import logging

    saved_env = {key: os.environ.get(key) for key in LOCAL_RAY_ENV}
    os.environ.update(LOCAL_RAY_ENV)
    import ray._private.ray_constants as ray_constants

    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    banner = logging.getLogger("ray._private.authentication.authentication_token_setup")
    saved_level = banner.level
    banner.setLevel(logging.ERROR)
    try:
        yield
    finally:
        banner.setLevel(saved_level)
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def init_ray(address: str | None, cpu_workers: int) -> None:
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address)
        ray.init(address=address, log_to_driver=False)
        return
    with loopback_ray():
        ray.init(
            # "local": always a new Ray of our own, never a `ray start` cluster found in /tmp/ray
            address="local",
            num_cpus=max(1, cpu_workers) + 1,
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )


class ProgressBar:
    """Cells done / failed / ETA on stderr (rich)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.failed = 0
        self.progress = Progress(
            TextColumn("[bold]cells"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), disable=not enabled, transient=False,
        )  # fmt: skip
        self.task = self.progress.add_task("cells", total=total, failed=0)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, rows: list[dict]) -> None:
        if any(row["status"] != "ok" for row in rows):
            self.failed += 1
        self.progress.update(self.task, advance=1, failed=self.failed)
