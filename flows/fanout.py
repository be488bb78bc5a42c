"""How renalflow's flows fan work out over Dask: the task options every fanned-out task
shares, the batch sizing, and how a dead worker is recognised.

Wiring only: ingest and scoring both use these, so neither imports the other's helpers.
"""

from __future__ import annotations

import os
import queue
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import dask
from distributed.scheduler import KilledWorker
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.tasks import Task
from prefect_dask import DaskTaskRunner

from renalflow.flows.runtime import dask_dashboard, flow_run_url
from renalflow.tasks.errors import InputError, RenalflowError, is_transient_io

T = TypeVar("T")
R = TypeVar("R")
F = TypeVar("F")


def retry_on_transient_io(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retry condition: only transient I/O errors, never a file's own defects."""
    try:
        state.result()
    except Exception as err:
        return is_transient_io(err)
    return False


class Opaque(Generic[T]):
    """A task argument Prefect passes along without walking through it.

    Prefect visits every element of list, dict and dataclass arguments looking for
    futures; for batches of hundreds of headers that costs more than the work.
    (`prefect.utilities.annotations.quote` does the same but does not survive the
    trip through Dask.)
    """

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __getstate__(self) -> T:
        return self.value

    def __setstate__(self, value: T) -> None:
        self.value = value


# Caching is the store's job: its ledger says which files are done, so Prefect's
# input-hash cache is switched off (hashing thousands of URIs per task buys nothing).
TASK_OPTIONS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": retry_on_transient_io,
}


def worker_died(err: BaseException) -> bool:
    """Whether a task failed because the worker processes running it kept dying."""
    return isinstance(err, KilledWorker)


def attempts() -> int:
    """How many worker deaths Dask allows a task before giving up on it."""
    return int(dask.config.get("distributed.scheduler.allowed-failures", 3)) + 1


def cluster_threads() -> int:
    """Worker threads of the Dask cluster this flow runs on (1 without a cluster)."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if not isinstance(runner, DaskTaskRunner):
        return 1
    workers = runner.client.scheduler_info().get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


NO_WORKERS_GRACE_S = 60.0
"""Our choice: how long a flow waits on a cluster with no workers before it fails (a
local cluster restarts its workers within seconds; an external one may get new ones).
A cluster whose workers wait in a batch queue sets NO_WORKERS_GRACE_CONFIG higher."""
NO_WORKERS_GRACE_CONFIG = "renalflow.no-workers-grace"
"""Its key in the Dask configuration (YAML, or DASK_RENALFLOW__NO_WORKERS_GRACE=600)."""


def no_workers_grace_s() -> float:
    """The grace the Dask configuration sets (seconds), or NO_WORKERS_GRACE_S."""
    import dask

    value = dask.config.get(NO_WORKERS_GRACE_CONFIG, NO_WORKERS_GRACE_S)
    try:
        grace = float(value)
    except (TypeError, ValueError):
        grace = -1.0
    if not grace > 0:
        raise InputError(
            f"the Dask configuration sets {NO_WORKERS_GRACE_CONFIG} to {value!r}: give a "
            "number of seconds above 0, e.g. 600"
        )
    return grace


class NoWorkersError(RenalflowError):
    """The Dask cluster has no workers left to run the flow's tasks."""


def live_workers() -> int | None:
    """Workers of the running flow's Dask cluster (None when it runs without Dask)."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if not isinstance(runner, DaskTaskRunner):
        return None
    return len(runner.client.scheduler_info(n_workers=-1).get("workers", {}))


def finished_while_workers(
    finished: queue.SimpleQueue[F],
    pending: Callable[[], str],
    kept: str,
    grace_s: float | None = None,
    poll_s: float = 5.0,
) -> Iterator[F]:
    """Each future as done callbacks put it on `finished`, for as long as the caller
    takes them; a cluster that has had no workers for `grace_s` meanwhile ends the wait
    with NoWorkersError, saying what is `pending` and what is `kept`.

    Waits on the queue, never on a signal-based timeout, so the caller's work between
    two futures is never interrupted. `grace_s` defaults to `no_workers_grace_s()`."""
    grace_s = no_workers_grace_s() if grace_s is None else grace_s
    without_since: float | None = None
    while True:
        try:
            future = finished.get(timeout=poll_s)
        except queue.Empty:
            if live_workers() != 0:
                without_since = None
                continue
            without_since = without_since or time.monotonic()
            if time.monotonic() - without_since >= grace_s:
                raise NoWorkersError(
                    f"the Dask cluster has had no workers for {grace_s:.0f} s with "
                    f"{pending()}: start workers for it (`dask worker SCHEDULER_ADDRESS`) "
                    f"or run without --dask-address, then rerun (workers that take longer to "
                    f"come: raise {NO_WORKERS_GRACE_CONFIG} in the Dask configuration); "
                    f"{kept} are kept"
                ) from None
            continue
        yield future


def while_workers(
    futures: list[PrefectFuture[R]],
    grace_s: float | None = None,
    poll_s: float = 5.0,
) -> Iterator[PrefectFuture[R]]:
    """Each future as it completes (like Prefect's as_completed), but a cluster that has
    had no workers for `grace_s` ends the wait with NoWorkersError instead of waiting
    forever (what is done is kept: the store and the results commit per batch)."""
    finished: queue.SimpleQueue[PrefectFuture[R]] = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(finished.put)
    remaining = len(futures)

    def pending() -> str:
        return f"{remaining} tasks waiting (its workers died or were stopped)"

    if not remaining:
        return
    for future in finished_while_workers(finished, pending, "finished batches", grace_s, poll_s):
        remaining -= 1
        yield future
        if not remaining:
            return


def completed_batches(
    submit: Callable[[list[T]], PrefectFuture[R]],
    batches: list[list[T]],
    on_split: Callable[[list[T]], None] | None = None,
) -> Iterator[tuple[list[T], R | None]]:
    """Submit every batch and yield (batch, result) as each completes.

    A batch whose worker processes kept dying is submitted again one item at a time
    (`on_split` is told first), so one item that kills its worker costs only itself:
    that item comes back alone with the result None. Any other failure propagates.
    """
    work = [(submit(batch), batch) for batch in batches]
    while work:
        items_of = {id(future): items for future, items in work}
        futures = [future for future, _ in work]
        work = []
        for future in while_workers(futures):
            items = items_of[id(future)]
            try:
                result = future.result()
            except Exception as err:
                if not worker_died(err):
                    raise
                if len(items) > 1:
                    if on_split is not None:
                        on_split(items)
                    work += [(submit([item]), [item]) for item in items]
                else:
                    yield items, None
                continue
            yield items, result


def cores_per_worker_thread() -> int | None:
    """When the workers run on this machine, its cores shared out among their threads
    (TensorFlow would otherwise give every worker process every core); for workers on
    other machines, no limit."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if not isinstance(runner, DaskTaskRunner):
        return None
    workers = runner.client.scheduler_info(n_workers=-1).get("workers", {})
    local = [w for w in workers.values() if str(w.get("host", "")).startswith("127.")]
    if not local or len(local) != len(workers):
        return None
    threads = sum(int(w.get("nthreads", 1)) for w in local)
    return max(1, (os.cpu_count() or 1) // max(1, threads))


def balanced(n_items: int, n_tasks: int, smallest: int, largest: int) -> int:
    """Batch size giving about `n_tasks` tasks, within [smallest, largest]."""
    return max(min(smallest, largest), min(largest, -(-n_items // max(1, n_tasks))))


def run_links() -> dict[str, str]:
    """Where to watch the running flow: its Prefect UI page and, when the cluster serves
    one, the Dask dashboard (runtime owns both addresses)."""
    links: dict[str, str] = {}
    url = flow_run_url()
    if url:
        links["Prefect run"] = url
    dashboard = dask_dashboard()
    if dashboard:
        links["Dask dashboard"] = dashboard
    return links


def announce_run(what: str) -> None:
    """One line per link on stderr as the work starts (not a log record: it shows in
    quiet mode too, and stays out of the flow's logs)."""
    # sys.stderr.write, not print: a flow with log_prints turns print into log records.
    for name, link in run_links().items():
        sys.stderr.write(f"{what}: {name} {link}\n")
    sys.stderr.flush()
