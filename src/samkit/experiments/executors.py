"""Where work units run: this process, a local process pool, or a Ray cluster — behind one interface.

A unit of work is a pure function of its parameters and seed, so it may run anywhere: the runner hands an
:class:`Executor` a list of :class:`Task` s and gets back one :class:`Outcome` per task, in the order they finish.
Only the driver (the process that called the runner) writes files; workers just compute and return JSON-able
results. That is what keeps results identical whatever the executor, the number of jobs or the order, and what
makes a killed run resumable.

* :class:`InlineExecutor` runs the tasks one after another in this process (``--jobs 1``).
* :class:`PoolExecutor` runs them on ``jobs`` worker processes (``spawn``-started, so no OpenMP state is forked).
  A worker that dies (killed, out of memory) breaks the pool: the executor starts a new one and resubmits the
  tasks that had not finished, up to ``retries`` times each.
* :class:`RayExecutor` runs one Ray task per unit, with the unit's declared resources (``num_cpus``, ``num_gpus``,
  fractions allowed), on a local Ray instance or a cluster (``address="auto"`` or ``"HOST:PORT"``). Ray retries a
  task whose worker died.

Every unit runs on ``SAMKIT_THREADS`` torch threads (default 1) wherever it runs, so the floating-point results do
not depend on the executor. A unit that raises becomes an :class:`Outcome` with an ``error`` naming the
experiment, the unit and its parameters; the other units still run.

Example:
    >>> from samkit.experiments.executors import InlineExecutor, Task
    >>> tasks = [Task("demo", "a", {"x": 2}, _square), Task("demo", "b", {"x": 3}, _square)]
    >>> sorted((o.task.key, o.result["y"]) for o in InlineExecutor().run(tasks))
    [('a', 4), ('b', 9)]
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib.util
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from samkit._io import jsonable
from samkit._threads import default_threads, torch_threads

__all__ = [
    "Task",
    "Outcome",
    "Executor",
    "InlineExecutor",
    "PoolExecutor",
    "RayExecutor",
    "make_executor",
    "portable",
    "default_jobs",
    "unit_threads",
    "RayMissingError",
]


class RayMissingError(RuntimeError):
    """``--executor ray`` without Ray installed."""


@dataclass(frozen=True)
class Task:
    """One unit to run: ``fn(params)`` is called in a worker; ``experiment`` and ``key`` name it in errors.

    ``fn`` must be picklable by reference (a module-level function, or a bound method of an object of an
    importable class) for the pool and Ray executors. ``resources`` are Ray resource requests
    (``{"num_cpus": 1}``, ``{"num_cpus": 1, "num_gpus": 0.25}``).
    """

    experiment: str
    key: str
    params: Mapping[str, Any]
    fn: Callable[[Mapping[str, Any]], Any]
    resources: Mapping[str, float] = field(default_factory=lambda: {"num_cpus": 1})


@dataclass
class Outcome:
    """What came back for a task: a JSON-able ``result`` and the ``seconds`` it took, or an ``error`` text."""

    task: Task
    result: Any = None
    seconds: float = 0.0
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


def unit_threads() -> int:
    """The torch thread count of a unit, wherever it runs: ``SAMKIT_THREADS`` (default 1; :mod:`samkit._threads`)."""
    return default_threads()


def default_jobs() -> int:
    """The default ``--jobs``: the CPU cores this process may use (``os.sched_getaffinity``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _describe(task: Task) -> str:
    params = ", ".join(f"{k}={_short(v)}" for k, v in task.params.items())
    return f"{task.experiment} unit {task.key!r} ({params})"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def execute(fn: Callable[[Mapping[str, Any]], Any], params: Mapping[str, Any]) -> tuple[Any, float]:
    """Run one unit with the unit thread policy; return its JSON-able result and the seconds it took.

    This is what every executor calls, in whichever process the unit runs.
    """
    with torch_threads(unit_threads()):
        t0 = time.perf_counter()
        result = jsonable(fn(params))
        return result, round(time.perf_counter() - t0, 3)


def _execute_or_error(
    fn: Callable[[Mapping[str, Any]], Any], params: Mapping[str, Any]
) -> tuple[Any, float, str | None]:
    """:func:`execute`, with an exception turned into its formatted text (exceptions may not unpickle)."""
    try:
        result, seconds = execute(fn, params)
        return result, seconds, None
    except Exception as err:  # noqa: BLE001 - any failure of a unit is reported, the others go on
        tb = traceback.format_exc(limit=-3)
        return None, 0.0, f"{type(err).__name__}: {err}\n{tb}"


def _error_text(task: Task, message: str) -> str:
    return f"{_describe(task)} failed: {message}"


class Executor:
    """Runs tasks and yields their outcomes in the order they finish (see the module docstring)."""

    #: a short name for messages and provenance
    name = "executor"

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (a no-op for executors without any)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class InlineExecutor(Executor):
    """Run every task in this process, one after another."""

    name = "inline"

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        for task in tasks:
            result, seconds, error = _execute_or_error(task.fn, task.params)
            yield Outcome(task, result, seconds, None if error is None else _error_text(task, error))


def portable(fn: Callable[..., Any]) -> bool:
    """Whether a worker process can import ``fn`` (a function, or a bound method: its class) by module name.

    Functions defined in ``__main__`` (a script, a notebook) or in a module that cannot be found by name are not:
    the pool runs those units in this process instead.
    """
    owner = getattr(fn, "__self__", None)
    module = type(owner).__module__ if owner is not None else getattr(fn, "__module__", None)
    if not module or module in ("__main__", "__mp_main__"):
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _worker_init(driver: int | None = None) -> None:
    # Ctrl-C reaches the whole process group: the driver stops the workers itself, so they ignore SIGINT
    # (no traceback from every worker).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's first bar makes a multiprocessing lock; a worker killed on Ctrl-C never releases it (the resource
    # tracker then warns of a "leaked semaphore"). Workers show no bars to share a lock with.
    with contextlib.suppress(ImportError):
        from tqdm import tqdm

        tqdm.set_lock(threading.RLock())
    if driver is not None:
        threading.Thread(target=_exit_with_driver, args=(driver,), name="samkit-driver-watch", daemon=True).start()


def _exit_with_driver(driver: int, every: float = 0.2) -> None:
    """End this worker as soon as its driver is gone (``kill -9`` of ``samkit run`` or ``sweep``): it would otherwise
    go on computing units nobody will collect, holding memory, while a rerun computes the same units again.
    A process whose parent dies is re-parented, so ``getppid()`` changes; polling it works on every POSIX system."""
    while os.getppid() == driver:
        time.sleep(every)
    os._exit(70)


class PoolExecutor(Executor):
    """Run tasks on ``jobs`` local worker processes; resubmit the unfinished ones if a worker dies.

    >>> PoolExecutor(2).jobs
    2
    """

    name = "pool"

    def __init__(self, jobs: int, *, retries: int = 2) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
        self.jobs = jobs
        self.retries = retries
        self._pool: cf.ProcessPoolExecutor | None = None

    def _new_pool(self, n: int) -> cf.ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")
        return cf.ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))

    def _submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        """Submit with SIGINT ignored: a worker started by this call inherits that (an ignored signal stays ignored
        across exec), so a Ctrl-C while it still imports torch prints no traceback from it; the driver handles it."""
        assert self._pool is not None
        if threading.current_thread() is not threading.main_thread():
            return self._pool.submit(fn, *args)
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return self._pool.submit(fn, *args)
        finally:
            signal.signal(signal.SIGINT, old)

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        local = [t for t in tasks if not portable(t.fn)]
        if local:  # defined in a script or notebook: a worker process could not import it
            yield from InlineExecutor().run(local)
            tasks = [t for t in tasks if portable(t.fn)]
        pending = list(tasks)
        attempts = {id(t): 0 for t in pending}
        if not pending:
            return
        try:
            while pending:
                if self._pool is None:
                    self._pool = self._new_pool(min(self.jobs, len(pending)))
                futures = {}
                for t in pending:
                    attempts[id(t)] += 1
                    futures[self._submit(_execute_or_error, t.fn, t.params)] = t
                pending = []
                broken = False
                for fut in cf.as_completed(futures):
                    t = futures[fut]
                    try:
                        result, seconds, error = fut.result()
                    except cf.process.BrokenProcessPool:
                        broken = True
                        if attempts[id(t)] > self.retries:
                            msg = f"its worker process died {attempts[id(t)]} times (killed, or out of memory)"
                            yield Outcome(t, error=_error_text(t, msg), attempts=attempts[id(t)])
                        else:
                            pending.append(t)
                        continue
                    yield Outcome(t, result, seconds, None if error is None else _error_text(t, error), attempts[id(t)])
                if broken:
                    self._shutdown(kill=True)
                    again = {id(t) for t in pending}
                    pending = [t for t in tasks if id(t) in again]
        except BaseException:
            # Ctrl-C or the consumer stopped: stop the workers now, finished results were already handed out.
            self._shutdown(kill=True)
            raise

    def _shutdown(self, kill: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            # the workers first: the pool's manager thread then finds them gone and ends on its own, so neither
            # shutdown() here nor the interpreter's exit (which joins that thread) can wait on a worker
            procs = list(getattr(pool, "_processes", {}).values())
            for p in procs:
                with contextlib.suppress(Exception):
                    p.kill()
            for p in procs:
                with contextlib.suppress(Exception):
                    p.join(timeout=5)
            pool.shutdown(wait=False, cancel_futures=True)
        else:
            pool.shutdown(wait=True)

    def close(self) -> None:
        self._shutdown(kill=False)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayMissingError("--executor ray needs Ray: pip install 'samkit[ray]' (or pip install ray)") from None
    return ray


class RayExecutor(Executor):
    """One Ray task per unit, with the unit's resource requests; Ray retries tasks whose worker died.

    Connects to ``address`` (``"auto"`` for the cluster this node belongs to, or ``"HOST:PORT"``), or — with
    ``address=None`` and no Ray instance running in this process — starts a local one with ``num_cpus`` CPUs.
    An already initialized Ray (``ray.init`` called by the user) is used as it is.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, retries: int = 2) -> None:
        self.ray = _import_ray()
        self.retries = retries
        self._started = False
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
            if address:
                kwargs["address"] = address
            elif num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            try:
                self.ray.init(**kwargs)
            except ConnectionError as err:
                raise ConnectionError(f"cannot connect to the Ray cluster at {address!r}: {err}") from None
            self._started = True
        self._remote = self.ray.remote(_execute_or_error)

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        ray = self.ray
        refs = {}
        for t in tasks:
            res = dict(t.resources)
            opts: dict[str, Any] = {
                "num_cpus": float(res.pop("num_cpus", 1)),
                "num_gpus": float(res.pop("num_gpus", 0)),
                "max_retries": self.retries,
                "retry_exceptions": False,
            }
            if res:
                opts["resources"] = res
            refs[self._remote.options(**opts).remote(t.fn, dict(t.params))] = t
        try:
            waiting = list(refs)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                for ref in done:
                    t = refs[ref]
                    try:
                        result, seconds, error = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - worker crashed beyond the retries, or task lost
                        yield Outcome(t, error=_error_text(t, f"{type(err).__name__}: {err}"))
                        continue
                    yield Outcome(t, result, seconds, None if error is None else _error_text(t, error))
        except BaseException:
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_executor(kind: str = "local", jobs: int | None = None, address: str | None = None) -> Executor:
    """The executor for ``--executor KIND --jobs N --address A``.

    ``"local"`` with ``jobs == 1`` runs in this process; with ``jobs > 1`` on a process pool. ``jobs=None`` means
    :func:`default_jobs`. ``"ray"`` uses :class:`RayExecutor` (``jobs`` then caps the CPUs of a local instance).

    >>> type(make_executor("local", 1)).__name__
    'InlineExecutor'
    """
    if kind not in ("local", "ray"):
        raise ValueError(f"unknown executor {kind!r}; allowed: 'local', 'ray'")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    if kind == "ray":
        return RayExecutor(address, num_cpus=jobs)
    if address:
        raise ValueError("--address is for --executor ray")
    n = default_jobs() if jobs is None else jobs
    return InlineExecutor() if n == 1 else PoolExecutor(n)


def _square(params: Mapping[str, Any]) -> dict[str, Any]:  # used by the module's doctest
    return {"y": params["x"] ** 2}
