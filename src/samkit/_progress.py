"""Progress of work units on stderr: a live bar on a terminal, plain lines in a log.

Units run wherever the executor puts them (often other processes), so progress is reported by the driver from
what it knows: which units are done and, for executors that run units first come first served on ``slots``
workers (this process, a local pool), which ones are running and for how long. A clock thread keeps the bar's
elapsed time and the running units' seconds ticking, so a unit of several minutes still shows life.

On a terminal this is a tqdm bar whose postfix names the running units. Anywhere else (a file, a CI log) it prints
plain lines, never a carriage return: one when a unit finishes (the first and the last always, the others at most
one every :data:`LINE_EVERY_S` seconds), and one every :data:`HEARTBEAT_S` seconds while nothing finishes.

>>> import io
>>> from samkit.experiments.executors import Task
>>> log = io.StringIO()
>>> tasks = [Task("E0", k, {}, print) for k in ("a", "b")]
>>> p = Progress(tasks, "E0", slots=1, stream=log)
>>> p.done(tasks[0]); p.done(tasks[1]); p.close()
>>> print(log.getvalue(), end="")  # doctest: +ELLIPSIS
E0: 1/2 units done, ... s elapsed; running: E0 b (... s)
E0: 2/2 units done, ... s elapsed
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["Progress", "slots", "HEARTBEAT_S", "LINE_EVERY_S"]

#: plain-line mode: a line after this many seconds without one
HEARTBEAT_S = 30.0
#: plain-line mode: at most one line per finished unit this often
LINE_EVERY_S = 5.0
#: how many running units the status names
_NAMED = 3
#: the clock thread's period (seconds)
_TICK_S = 1.0


class Progress:
    """Report finished and running units of ``tasks`` (see the module docstring).

    ``tasks``: the units to run, in the order they are handed to the executor (objects with ``experiment`` and
    ``key``, e.g. :class:`samkit.experiments.executors.Task`).
    ``slots``: how many units run at once, first come first served (1 in this process, ``jobs`` on a pool), or
    ``None`` when the executor schedules them otherwise (Ray): the status then counts the units still out.
    ``unit`` names what a task is in the lines ("unit", "run"). ``stream`` defaults to ``sys.stderr``; ``tty``
    defaults to ``stream.isatty()``.
    """

    def __init__(
        self,
        tasks: Sequence[Any],
        desc: str,
        slots: int | None,
        *,
        unit: str = "unit",
        stream: IO[str] | None = None,
        tty: bool | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(tty if tty is not None else getattr(self.stream, "isatty", lambda: False)())
        self.desc, self.unit, self.slots = desc, unit, slots
        self.total, self.finished = len(tasks), 0
        self._pending: dict[int, Any] = {id(t): t for t in tasks}
        self._t0 = time.monotonic()
        self._started: dict[int, float] = {}
        self._last_line = -float("inf")  # the first finished unit prints at once
        self._lock = threading.Lock()
        self._mark_started()
        self._bar: Any = None
        if self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, leave=True, dynamic_ncols=True)
            self._bar.set_postfix_str(self._running(), refresh=True)
        self._stop = threading.Event()
        self._clock = threading.Thread(target=self._tick, name="samkit-progress", daemon=True)
        self._clock.start()

    # ------------------------------------------------------------------ state
    def _mark_started(self) -> None:
        """Units entering the first ``slots`` of the queue start now (first come, first served)."""
        if self.slots is None:
            return
        now = time.monotonic()
        for key in list(self._pending)[: self.slots]:
            self._started.setdefault(key, now)

    def _running(self) -> str:
        if not self._pending:
            return ""
        if self.slots is None:
            return f"{len(self._pending)} {self.unit}s out"
        now = time.monotonic()
        keys = list(self._pending)[: self.slots]
        named = [f"{self._pending[k].experiment} {self._pending[k].key} ({now - self._started[k]:.0f} s)" for k in keys]
        more = f" +{len(keys) - _NAMED} more" if len(keys) > _NAMED else ""
        return "running: " + ", ".join(named[:_NAMED]) + more

    def _line(self) -> str:
        elapsed = _clock(time.monotonic() - self._t0)
        running = self._running()
        text = f"{self.desc}: {self.finished}/{self.total} {self.unit}s done, {elapsed} elapsed"
        return text + (f"; {running}" if running else "")

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_line = time.monotonic()

    # ------------------------------------------------------------------ events
    def done(self, task: Any) -> None:
        """``task`` finished (successfully or not)."""
        with self._lock:
            self._pending.pop(id(task), None)
            self._started.pop(id(task), None)
            self.finished += 1
            self._mark_started()
            if self._bar is not None:
                self._bar.set_postfix_str(self._running(), refresh=False)
                self._bar.update(1)
            elif self.finished == self.total or time.monotonic() - self._last_line >= LINE_EVERY_S:
                self._print(self._line())

    def write(self, text: str) -> None:
        """Print a message line without breaking the bar."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(text, file=self.stream)
            else:
                self._print(text)

    def _tick(self) -> None:
        while not self._stop.wait(_TICK_S):
            with self._lock:
                if self._stop.is_set():
                    return
                if self._bar is not None:
                    self._bar.set_postfix_str(self._running(), refresh=False)
                    self._bar.refresh()
                elif time.monotonic() - self._last_line >= HEARTBEAT_S:
                    self._print(self._line())

    def close(self) -> None:
        """Stop the clock; on a terminal, leave the finished bar on screen."""
        self._stop.set()
        self._clock.join(timeout=5)
        with self._lock:
            if self._bar is not None:
                self._bar.set_postfix_str(self._running(), refresh=False)
                self._bar.close()
                self._bar = None


def slots(executor: Any) -> int | None:
    """How many units an executor of :mod:`samkit.experiments.executors` runs at once, first come first served:
    1 in this process (``inline``), ``jobs`` on a local pool; None for one that schedules them otherwise (Ray).

    >>> from samkit.experiments.executors import InlineExecutor, PoolExecutor
    >>> slots(InlineExecutor()), slots(PoolExecutor(3))
    (1, 3)
    """
    name = getattr(executor, "name", None)
    if name == "inline":
        return 1
    jobs = getattr(executor, "jobs", None)
    return jobs if name == "pool" and isinstance(jobs, int) else None


def _clock(seconds: float) -> str:
    """``"42 s"``, ``"3m05s"``, ``"1h02m"``.

    >>> _clock(42.4), _clock(185), _clock(3720)
    ('42 s', '3m05s', '1h02m')
    """
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
