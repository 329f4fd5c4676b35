"""``samkit sweep``: a grid of ``samkit train`` runs as work units, then one table and one figure to choose ρ.

Each grid point is one training run in its own folder ``OUT/runs/NAME`` (``NAME`` spells the flags that vary, e.g.
``optimizer=sam,rho=0.1,seed=0``; every value exactly, so two values never share a folder). A setting only some
optimizers take (``lam``: unified, ``gsam_alpha``: gsam, ``sam_start``: the SAM variants, ``sam_on``: sam, usam,
unified) applies to the runs of those optimizers; the sweep refuses it only when no run uses it. Runs go through the same executors as ``samkit reproduce`` (this process, a local
process pool, a Ray cluster); a run folder is written only by the run that owns it, and a rerun of the sweep resumes
every unfinished run from its last checkpoint and skips the finished ones. Once every run is in, the driver writes

* ``OUT/sweep.csv`` — one row per run: the flags that vary (floats exactly, as ``repr`` writes them), the final
  test accuracy and losses, the mean and last ‖g‖ and ‖ε‖ over training, the status (``completed`` /
  ``diverged`` / ``failed``) and the run folder;
* ``OUT/sweep.png`` — final test accuracy against ρ per optimizer, and against the realised mean ‖ε‖ (the fair
  comparison between SAM, whose ‖ε‖ is ρ, and USAM, whose ‖ε‖ is ρ‖g‖).

``OUT`` and every run folder must be new, empty, or samkit's (:func:`samkit._io.claim_folder`): a folder holding
files samkit did not write is refused before any run starts.

Example:
    >>> grid = expand_grid({"optimizer": ["sam", "usam"], "rho": [0.01, 0.1]})
    >>> [run_name(g) for g in grid]
    ['optimizer=sam,rho=0.01', 'optimizer=sam,rho=0.1', 'optimizer=usam,rho=0.01', 'optimizer=usam,rho=0.1']
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from samkit._io import MARKER, atomic_write_text, claim_folder, csv_text, file_head
from samkit._progress import Progress, slots
from samkit.experiments.executors import Executor, InlineExecutor, Task, unit_threads
from samkit.experiments.runner import safe_name
from samkit.optim import registry
from samkit.train import TrainConfig, TrainError, train
from samkit.train.config import OPTIONS
from samkit.train.records import is_run_entry

__all__ = ["expand_grid", "run_name", "run_sweep", "SweepRun", "plot_sweep", "claim_sweep_folder"]


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values in ``grid`` (key order kept; the last key varies fastest).

    >>> expand_grid({"a": [1, 2], "b": ["x"]})
    [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
    """
    keys = list(grid)
    for k in keys:
        if not list(grid[k]):
            raise ValueError(f"the grid of {k!r} is empty")
    return [dict(zip(keys, values)) for values in itertools.product(*(list(grid[k]) for k in keys))]


def _fmt(v: Any) -> str:
    """A value as a run's name spells it: a float exactly (``:g`` where that reads back as the same float, as
    earlier sweeps named their runs, else the shortest text that does: ``repr``).

    >>> _fmt(0.05), _fmt(100.0), _fmt(1234567.0), _fmt(0.0500000001)
    ('0.05', '100', '1234567.0', '0.0500000001')
    """
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    return str(v)


#: The longest run name (:func:`samkit.experiments.runner.safe_name`'s limit).
_NAME_MAX = 120


def run_name(point: Mapping[str, Any]) -> str:
    """The folder name of a grid point: ``key=value`` pairs joined by commas, made file-name safe.

    Distinct points get distinct names: a name that had to be changed to be safe (characters replaced, or cut to
    120 characters) ends with a hash of the exact text.

    >>> run_name({"rho": 0.1, "seed": 0}), run_name({"data_dir": "a/b"})
    ('rho=0.1,seed=0', 'data_dir=a_b-16db84ffb045')
    """
    if not point:
        return "run"
    text = ",".join(f"{k}={_fmt(v)}" for k, v in point.items())
    name = safe_name(text)
    if name == text:
        return name
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return safe_name(f"{name[: _NAME_MAX - len(digest) - 1]}-{digest}")


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its folder name, the flags that vary, and its full config."""

    name: str
    point: dict[str, Any]
    config: TrainConfig


def _only_where_used(runs: Sequence[SweepRun]) -> list[SweepRun]:
    """The runs with each setting only some optimizers take (:data:`~samkit.train.config.OPTIONS`: ``lam``,
    ``gsam_alpha``, ``sam_start``, ``sam_on``) dropped from the runs of the other optimizers, when some run of the
    sweep takes it; a run that then repeats an earlier one (a swept ``lam`` on a ``sam`` run) is left out. When no run
    takes the setting it is kept, and the config's check refuses it as for a single run."""
    optimizers = {r.config.optimizer for r in runs}
    owners = {key: set(registry.takers(key)) for key in OPTIONS}
    for key, takers in owners.items():
        if len(optimizers) > 1 and not takers & optimizers and any(getattr(r.config, key) is not None for r in runs):
            flag, names = "--" + key.replace("_", "-"), " or ".join(registry.takers(key))
            add = names if len(takers) == 1 else f"one of {', '.join(registry.takers(key))}"
            raise TrainError(
                f"{flag} is only used with --optimizer {names}, and no run of the sweep uses it "
                f"(--optimizer {','.join(sorted(optimizers))}): add {add} to --optimizer or leave {flag} out"
            )
    kept: list[SweepRun] = []
    seen: dict[str, TrainConfig] = {}
    for r in runs:
        cfg, point, renamed = r.config, dict(r.point), False
        for key, takers in owners.items():
            if getattr(cfg, key) is not None and cfg.optimizer not in takers and takers & optimizers:
                unset: dict[str, Any] = {key: None}
                cfg = dataclasses.replace(cfg, **unset)
                renamed |= point.pop(key, None) is not None
        name = run_name(point) if renamed else r.name
        if name in seen and seen[name] == cfg:
            continue  # the same run as one before
        seen.setdefault(name, cfg)
        kept.append(r if cfg is r.config else SweepRun(name, point, cfg))
    return kept


_SWEEP_TEMP = re.compile(r"\.sweep\.(?:csv\.[0-9a-f]{12}\.tmp|png\.[0-9a-f]{12}\.png)")


def _is_run_folder(path: Path) -> bool:
    """A folder of ``OUT/runs`` a sweep wrote: marked, or holding only a training run's files."""
    if path.is_symlink() or not path.is_dir():
        return False
    return (path / MARKER).is_file() or all(is_run_entry(p) for p in path.iterdir())


def _is_sweep_entry(path: Path) -> bool:
    """Whether ``path``, an entry of a sweep folder without samkit's marker (written before the marker existed), is
    one a sweep writes: ``runs/`` (of run folders), ``sweep.csv``, ``sweep.png``, the CLI's ``.lock``, or a
    temporary file of an atomic write."""
    name = path.name
    if path.is_symlink():
        return False
    if name == "runs":
        return path.is_dir() and ((path / MARKER).is_file() or all(_is_run_folder(p) for p in path.iterdir()))
    if name == ".lock" or _SWEEP_TEMP.fullmatch(name):
        return path.is_file()
    if name not in ("sweep.csv", "sweep.png") or not path.is_file():
        return False
    head = file_head(path, 16)
    return head is not None and head.startswith(b"run," if name == "sweep.csv" else b"\x89PNG")


def claim_sweep_folder(out: str | Path) -> Path:
    """Make ``OUT`` a sweep's folder, or refuse it (:func:`samkit._io.claim_folder`): new, empty, marked, or holding
    only what a sweep writes (``runs/`` of run folders, ``sweep.csv``, ``sweep.png``); links below it are refused.
    Raises :class:`samkit._io.UnsafePathError` (a ``ValueError``)."""
    return claim_folder(out, ours=_is_sweep_entry, what="the sweep")


def _claim_folders(out: Path, names: Sequence[str]) -> None:
    """Make ``OUT`` and each run's folder samkit's, or refuse them (before any run starts)."""
    claim_sweep_folder(out)
    for name in names:
        claim_folder(out / "runs" / name, ours=is_run_entry, what="the run")


def _train_unit(params: Mapping[str, Any]) -> dict[str, Any]:
    """Run (or resume, or just read back) one training run; return what the sweep table needs.

    Runs in a worker. The run's folder holds its checkpoint, so a killed run resumes where it stopped.
    """
    cfg = TrainConfig(**dict(params))
    assert cfg.out is not None  # run_sweep gives every unit its run folder
    out = Path(cfg.out)
    resume = (out / "checkpoint.pt").exists()
    summary = train(cfg, resume=resume)
    hist = [r for r in summary.get("history", []) if r.get("status") == "ok"]

    def series(name: str) -> list[float]:
        return [float(r[name]) for r in hist if r.get(name) is not None]

    g, e = series("grad_norm"), series("eps_norm")
    return {
        "status": summary["status"],
        "epochs_done": summary.get("epochs_done"),
        "final_test_acc": summary.get("final_test_acc"),
        "final_test_loss": summary.get("final_test_loss"),
        "final_train_loss": summary.get("final_train_loss"),
        "mean_grad_norm": sum(g) / len(g) if g else None,
        "mean_eps_norm": sum(e) / len(e) if e else None,
        "last_grad_norm": g[-1] if g else None,
        "last_eps_norm": e[-1] if e else None,
        "final_top_eigenvalue": summary.get("final_top_eigenvalue"),
    }


def run_sweep(
    runs: Sequence[SweepRun],
    out: str | Path,
    executor: Executor | None = None,
    *,
    progress: bool = True,
    gpus_per_run: float = 0.0,
) -> list[dict[str, Any]]:
    """Run every :class:`SweepRun` (each into ``OUT/runs/NAME``), then write ``sweep.csv`` and ``sweep.png``.

    Returns the rows of ``sweep.csv``. A run that raised gets status ``failed`` (its error is printed); the others
    still finish. Every config is validated, and every folder claimed, before the first run starts. ``lam``,
    ``gsam_alpha``, ``sam_start`` and ``sam_on`` apply only to the runs of the optimizers that take them (a run they
    would only rename is left out), and are refused only when no run takes them. ``gpus_per_run`` is each run's GPU request
    on executors that schedule GPUs (Ray); a run picks the device it is given (``device="auto"``).
    """
    out = Path(out)
    runs = _only_where_used(runs)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise TrainError("the sweep has two runs with the same flags")
    tasks = []
    for r in runs:
        cfg = dataclasses.replace(
            r.config,
            out=str(out / "runs" / r.name),
            progress=False,
            quiet=True,
            threads=r.config.threads or unit_threads(),
        )
        cfg.validate()
        needs = {"num_cpus": 1, **({"num_gpus": gpus_per_run} if gpus_per_run else {})}
        tasks.append(Task("sweep", r.name, dataclasses.asdict(cfg), _train_unit, needs))
    _claim_folders(out, names)
    executor = executor or InlineExecutor()
    by_name = {r.name: r for r in runs}
    results: dict[str, dict[str, Any]] = {}
    bar = Progress(tasks, "sweep", slots(executor), unit="run") if progress and tasks else None
    try:
        for outcome in executor.run(tasks):
            if outcome.ok:
                results[outcome.task.key] = outcome.result
            else:
                first = (outcome.error or "").splitlines()[0]
                (bar.write if bar else print)(f"samkit: error: {first}")
                results[outcome.task.key] = {"status": "failed", "error": first}
            if bar is not None:
                bar.done(outcome.task)
    finally:
        if bar is not None:
            bar.close()
    rows = []
    for name in names:  # grid order, whatever the completion order
        r = by_name[name]
        row: dict[str, Any] = {"run": name, **r.point}  # floats as they are: sweep.csv writes them exactly
        for key in ("optimizer", "rho", "lr", "seed"):
            row.setdefault(key, getattr(r.config, key))
        res = results[name]
        for key in (
            "status",
            "epochs_done",
            "final_test_acc",
            "final_test_loss",
            "final_train_loss",
            "mean_grad_norm",
            "mean_eps_norm",
            "last_grad_norm",
            "last_eps_norm",
            "final_top_eigenvalue",
        ):
            v = res.get(key)
            row[key] = "" if v is None else v
        rows.append(row)
    atomic_write_text(out / "sweep.csv", csv_text(rows))
    plot_sweep(rows, out / "sweep.png")
    return rows


def _num(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Final test accuracy against ρ (left) and against the realised mean ‖ε‖ (right), one colour per optimizer.

    Each run is a point; lines join the per-ρ means over the other flags (seeds). Runs that diverged or failed are
    drawn as crosses at the bottom of the axes. Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from samkit.experiments.plotting import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    opts = sorted({str(r["optimizer"]) for r in rows})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, opt in enumerate(opts):
        c = colors[i % len(colors)]
        mine = [r for r in rows if str(r["optimizer"]) == opt]
        ok = [r for r in mine if r["status"] == "completed" and math.isfinite(_num(r["final_test_acc"]))]
        bad = [r for r in mine if r not in ok]
        for ax, xkey in zip(axes, ("rho", "mean_eps_norm")):
            xs = [_num(r[xkey]) for r in ok]
            ys = [100 * _num(r["final_test_acc"]) for r in ok]
            ax.scatter(xs, ys, color=c, s=18, alpha=0.6, label=f"{opt} (each run)")
            if xkey == "rho":
                by_rho: dict[float, list[float]] = {}
                for x, y in zip(xs, ys):
                    by_rho.setdefault(x, []).append(y)
                if by_rho:
                    xm = sorted(by_rho)
                    ax.plot(xm, [sum(by_rho[x]) / len(by_rho[x]) for x in xm], color=c, lw=1.5, label=f"{opt} (mean)")
            bx = [_num(r["rho"]) for r in bad] if xkey == "rho" else []
            if bx:
                mark = "x+12"[i % 4]  # a different cross per optimizer, so coinciding failures stay visible
                ax.scatter(bx, [0.0] * len(bx), marker=mark, color=c, s=60, label=f"{opt} diverged / failed")
    for ax, label in zip(axes, (r"$\rho$", r"realised mean $\|\varepsilon\|$ over training")):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title(r"accuracy against $\rho$")
    axes[1].set_title(r"accuracy against the perturbation actually applied")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(fontsize=8, loc="lower left")
    path = Path(path)
    save_figure(fig, path)  # closes the figure
    return path
