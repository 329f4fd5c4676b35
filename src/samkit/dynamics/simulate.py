"""Exact, batched GD / SAM / USAM / unified-SAM simulation on the analytic problems (float64).

One update for every configuration at once::

    g = ∇L(x);  ε = c(‖g‖, ρ)·g  (samkit.core.perturb_batched);  x ← x − η ∇L(x + ε)

with ``c = ρ/‖g‖`` (SAM, ``"l2"``), ``ρ`` (USAM, ``"none"``), ``ρ((1−λ) + λ/‖g‖)`` (``"unified"``), and no
perturbation for GD. Normalization is exact by default (``eps=0``): a zero gradient is a fixed point. ε comes from
:mod:`samkit.core`, the code behind :class:`samkit.SAM`: for the same gradient, the same ε bit for bit.

Two engines run the same per-step function (:func:`update`), with the same results to rounding: 1e-12 relative in
float64 on the tested cases; over long runs the difference follows the dynamics' sensitivity (a 256×256 SAM phase
diagram over 2 000 steps: iterates 9.1e-13, final losses 1.5e-12 relative):

* **eager** (the default for small sweeps): one step at a time; diverged configurations are dropped from the
  computation.
* **fused** (``fused=True``; automatic for large sweeps, see :func:`simulate`): :func:`torch.compile` (inductor) of
  one whole step, divergence check and freezing included, on a state laid out ``[*shape, B]`` (configurations
  contiguous, so the per-configuration norm vectorizes across configurations): a few passes over the state per step
  instead of a dozen separate ones and no host read, except where a row leaves the range of the fast norms (then
  that step is recomputed with the scale-safe ones). Diverged configurations stay in the computation, frozen. The
  first compilation takes 10-30 s (inductor caches it on disk); when compilation is not available the eager engine
  runs instead, with a warning.

Example:
    >>> import torch
    >>> from samkit.dynamics import Quadratic, simulate
    >>> q = Quadratic([10.0, 1.0])
    >>> res = simulate(q, "usam", eta=[0.095, 0.105], rho=0.1, x0=torch.ones(2), steps=400, blowup=1e12)
    >>> res.diverged.tolist()
    [False, True]
    >>> res = simulate(q, "sam", eta=0.18, rho=0.1, x0=torch.ones(2), steps=2000)
    >>> round(res.final.norm().item(), 6)      # the 2-cycle amplitude ηρβ/(2 − ηβ) = 0.9
    0.9
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from samkit._checks import batch_view, integer, number
from samkit.core import batched_coefficients, batched_norm, batched_norm_plain, perturb_batched, resolve_lam
from samkit.dynamics.problems import DTYPE, Problem

__all__ = ["SIM_METHODS", "SimResult", "simulate", "update"]

#: method name -> ``normalization`` of the perturbation rule (:func:`samkit.core.resolve_lam`; None: GD, no
#: perturbation)
SIM_METHODS: dict[str, str | None] = {"gd": None, "sam": "l2", "usam": "none", "unified": "unified"}
RECORDABLE = ("loss", "grad_norm", "x", "path_length", "sharpness")
#: ``fused=None`` compiles when ``B · numel · steps`` reaches this (about 5 s of eager work on one core) and the
#: problem is elementwise (``Problem.fusable``)
AUTO_FUSE_WORK = 5e8


@dataclass
class SimResult:
    """The outcome of :func:`simulate` for a batch of ``B`` configurations.

    Fields: ``method``; ``eta``, ``rho`` (``[B]``); ``diverged`` (``[B]`` bool); ``diverged_at`` (``[B]`` long,
    the step whose iterate left the finite range / exceeded ``blowup``, −1 if never); ``final`` (``[B, *shape]``,
    the last iterate, or the last finite one for diverged runs); ``steps`` (``[T]`` recorded step indices,
    including 0 and the last); ``series`` (``name -> [T, B, ...]``; a diverged run's entries after its
    divergence repeat its frozen iterate's values); ``lam``, ``eps``, ``problem`` (its class name).

    >>> from samkit.dynamics import ScalarFactorization
    >>> r = simulate(ScalarFactorization(), "gd", eta=0.1, steps=4, record_every=2)
    >>> r.steps.tolist(), r.series["loss"].shape, len(r.to_rows())
    ([0, 2, 4], torch.Size([3, 1]), 3)
    """

    method: str
    eta: Tensor
    rho: Tensor
    diverged: Tensor
    diverged_at: Tensor
    final: Tensor
    steps: Tensor
    series: dict[str, Tensor] = field(default_factory=dict)
    lam: float | None = None
    eps: float = 0.0
    problem: str = ""

    @property
    def batch(self) -> int:
        """Number of configurations ``B``."""
        return int(self.eta.numel())

    @property
    def final_loss(self) -> Tensor:
        """The recorded loss at the last step, ``[B]`` (needs ``"loss"`` in ``record``)."""
        if "loss" not in self.series:
            raise KeyError("final_loss needs 'loss' in record")
        return self.series["loss"][-1]

    def to_rows(self, every: int = 1) -> list[dict[str, Any]]:
        """Tidy rows: one per (recorded step, configuration), with every scalar series as a column.

        Columns: ``step``, ``config``, ``method``, ``eta``, ``rho``, ``lam``, ``diverged``, ``diverged_at`` and the
        scalar series (``loss``, ``grad_norm``, ``path_length``, ``sharpness``); the ``x`` series is written as
        ``x0``, ``x1``, ... when an iterate has at most 4 entries, else left out. ``every`` thins the recorded steps.
        """
        every = integer(every, "every", minimum=1)
        idx = list(range(0, len(self.steps), every))
        if idx[-1] != len(self.steps) - 1:
            idx.append(len(self.steps) - 1)
        eta, rho = self.eta.tolist(), self.rho.tolist()
        div, div_at = self.diverged.tolist(), self.diverged_at.tolist()
        cols: dict[str, list] = {}
        for k, v in self.series.items():
            if k == "x":
                flat = v.flatten(2)
                if flat.shape[2] <= 4:
                    for j in range(flat.shape[2]):
                        cols[f"x{j}"] = flat[:, :, j].tolist()
            else:
                cols[k] = v.tolist()
        rows = []
        steps = self.steps.tolist()
        for i in idx:
            for b in range(self.batch):
                row = {
                    "step": steps[i],
                    "config": b,
                    "method": self.method,
                    "eta": eta[b],
                    "rho": rho[b],
                    "lam": self.lam,
                    "diverged": div[b] and div_at[b] <= steps[i],
                    "diverged_at": div_at[b],
                }
                for k, col in cols.items():
                    row[k] = col[i][b]
                rows.append(row)
        return rows


def _as_param(v: float | Sequence[float] | Tensor, name: str) -> Tensor:
    t = torch.as_tensor(v, dtype=DTYPE)
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must hold finite numbers >= 0")
    return t


def _configurations(
    problem: Problem, eta: float | Sequence[float] | Tensor, rho: float | Sequence[float] | Tensor, x0: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """``eta``, ``rho`` (``[B]``) and the iterates ``x`` (``[B, *shape]``) of the ``B`` configurations, broadcast."""
    shape = tuple(problem.shape)
    if x0 is None:
        x0 = problem.default_x0()
    x0 = torch.as_tensor(x0, dtype=DTYPE)
    if tuple(x0.shape) == shape:
        x0 = x0.unsqueeze(0)
    elif tuple(x0.shape[1:]) != shape:
        raise ValueError(f"x0 must have shape {shape} or (B, *{shape}), got {tuple(x0.shape)}")
    eta_t, rho_t = _as_param(eta, "eta"), _as_param(rho, "rho")
    eta_t, rho_t = torch.broadcast_tensors(eta_t, rho_t)
    eta_t, rho_t = eta_t.reshape(-1), rho_t.reshape(-1)
    try:
        B = torch.broadcast_shapes(eta_t.shape, rho_t.shape, x0.shape[:1])[0]
    except RuntimeError as err:
        raise ValueError(
            f"cannot broadcast eta ({eta_t.numel()}), rho ({rho_t.numel()}) and x0's batch ({x0.shape[0]})"
        ) from err
    x = x0.expand(B, *shape).clone()
    if not torch.isfinite(x).all():
        raise ValueError("x0 must be finite")
    return eta_t.expand(B).clone(), rho_t.expand(B).clone(), x


def update(problem: Problem, x: Tensor, eta: Tensor, rho: Tensor, lam: float | None, eps: float) -> Tensor:
    """One step for a batch of iterates ``x`` (``[B, *shape]``): ``x − η ∇L(x + ε)``, ``ε`` from
    :func:`samkit.core.perturb_batched` (``lam`` the resolved λ; None: GD, no perturbation). ``eta`` broadcasts
    against ``x`` (``[B, 1, ..., 1]``), ``rho`` is ``[B]``. Nothing is checked: :func:`simulate` checks once.

    >>> from samkit.dynamics import Quadratic
    >>> x, eta, rho = torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 0.1, dtype=torch.float64), torch.ones(1)
    >>> update(Quadratic([2.0]), x, eta, rho, lam=1.0, eps=0.0)    # SAM: 1 − 0.1 · ∇L(1 + 1·sign(2))
    tensor([[0.6000]], dtype=torch.float64)
    """
    return _step(problem, x, eta, rho, lam, eps, exact=True)[0]


def _step(
    problem: Problem, x: Tensor, eta: Tensor, rho: Tensor, lam: float | None, eps: float, exact: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`update`, and the coefficients ``c`` of ``ε = c·g`` (None for GD). With ``exact=False`` its fast path
    (:func:`samkit.core.batched_coefficients`) and its float mask ``exact`` (1.0 where the row is :func:`update`'s
    result; None: every row is)."""
    g = problem._grad(x)
    c = ok = None
    if lam is not None:
        if exact:
            e = perturb_batched(g, rho, lam, eps)
        else:
            c, ok = batched_coefficients(g, rho, lam, eps)
            e = batch_view(c, g.dim()) * g
        g = problem._grad(e.add_(x))
    return torch.addcmul(x, eta, g, value=-1.0), c, ok


def _range_scale(blowup: float) -> float:
    """A power of two ``c`` with ``c · blowup`` in [0.5, 1) (1 for an infinite blowup): ``‖c x‖`` neither overflows
    nor loses anything that matters near ``‖x‖ = blowup``, and multiplying by it is exact."""
    return math.ldexp(1.0, -math.frexp(blowup)[1]) if math.isfinite(blowup) else 1.0


def _inside(xn: Tensor, quick: Tensor | float, scale: Tensor | float, limit: Tensor | float) -> Tensor:
    """``[B]`` float mask: 1.0 for the rows of ``xn`` that are finite with norm at most the blowup, with ``quick =
    blowup / sqrt(numel)`` (a row whose max-abs is at most that is inside), ``scale`` = :func:`_range_scale` and
    ``limit = scale · blowup``. Branch-free, comparisons and selections only; the same decision in both engines."""
    m = xn.flatten(1).abs().amax(1)  # NaN in a row gives NaN
    norm = torch.linalg.vector_norm((xn * scale).flatten(1), dim=1)
    one, zero = torch.ones((), dtype=m.dtype, device=m.device), torch.zeros((), dtype=m.dtype, device=m.device)
    return torch.where(m - m == 0, torch.where(m <= quick, one, torch.where(norm <= limit, one, zero)), zero)


class _Fused(NamedTuple):
    """What one fused step returns besides the state, updated in place (per-row values are float64)."""

    #: 1.0 while a row is within the range, 0.0 once it left it (frozen)
    alive: Tensor
    #: the step at which a row left the range, −1.0 if never
    diverged_at: Tensor
    path: Tensor | None
    #: > 0 when an active row took a value outside the fast path's exact range (the state was then left unchanged:
    #: redo the step with ``exact=True``); None: no row can
    inexact: Tensor | None
    #: the step count after this step (0-dim)
    t: Tensor
    #: the step's coefficients ``c``, returned so that the compiled code computes them once per row (it would
    #: otherwise recompute them, a square root and a division, for every entry)
    c: Tensor | None


def _fused_step(
    problem: Problem,
    x: Tensor,
    eta: Tensor,
    rho: Tensor,
    alive: Tensor,
    diverged_at: Tensor,
    path: Tensor | None,
    t: Tensor,
    quick: Tensor,
    scale: Tensor,
    limit: Tensor,
    lam: float | None,
    eps: float,
    exact: bool,
) -> _Fused:
    """One step of :func:`update` for every configuration, ``x`` updated in place, without a host read (what the
    fused engine compiles). A row that leaves the range is frozen at its last finite iterate (``alive`` 0,
    ``diverged_at`` = ``t + 1``) instead of being dropped. ``exact=False`` takes the fast path of the norms; where an
    active row needed the exact one, ``x`` is left as it was and ``inexact`` says so. Per-row masks are float
    (comparisons and selections): boolean algebra on masks is slow in the compiled CPU code."""
    xn, c, ok = _step(problem, x, eta, rho, lam, eps, exact)
    inexact = None if ok is None else alive * (1.0 - ok)
    now = alive * _inside(xn, quick, scale, limit)
    diverged_at = torch.where(now < alive, t + 1.0, diverged_at)
    if path is not None:
        if exact:
            length = batched_norm(xn - x)
        else:
            length, ok = batched_norm_plain(xn - x)
            more = now * (1.0 - ok)
            inexact = more if inexact is None else inexact + more
        path = torch.where(now > 0, path + length, path)
    new = torch.where(batch_view(now > 0, x.dim()), xn, x)
    if inexact is not None:  # keep the state for the exact step
        inexact = inexact.sum()
        new = torch.where(inexact > 0, x, new)
    x.copy_(new)
    return _Fused(now, diverged_at, path, inexact, t + 1.0, c)


#: compiled :func:`_fused_step`, fast and exact; torch.compile caches the code per problem, shapes and constants
_COMPILED: dict[tuple[bool, str, int], Any] = {}
#: the torch.compile backend of the fused engine (tests use "aot_eager": traced, not compiled to C++)
_BACKEND = "inductor"
#: iterates of at most this many entries get their per-configuration reductions (norms, max) written out term by
#: term by inductor (``unroll_reductions_threshold``): the whole step then runs in one loop over the configurations
#: plus the write-back, instead of a reduction loop per norm (P3, d = 10: the same numbers bit for bit, about 15%
#: less time per step while the state holds no subnormal numbers, which later dominate: benchmarks/dynamics_sweep.py)
UNROLL_MAX = 16


def _compiled(exact: bool, numel: int = 0) -> Any:
    """The compiled :func:`_fused_step` (``exact``) for iterates of ``numel`` entries."""
    unroll = numel if 8 < numel <= UNROLL_MAX and _BACKEND == "inductor" else 0  # inductor unrolls <= 8 already
    key = (exact, _BACKEND, unroll)
    if key not in _COMPILED:
        fn = functools.partial(_fused_step, exact=exact)
        options: dict[str, Any] | None = {"unroll_reductions_threshold": unroll} if unroll else None
        _COMPILED[key] = torch.compile(fn, backend=_BACKEND, dynamic=False, fullgraph=True, options=options)
    return _COMPILED[key]


def _use_fused(fused: bool | None, problem: Problem, work: int) -> bool:
    if fused is None:
        return bool(getattr(problem, "fusable", True)) and work >= AUTO_FUSE_WORK
    if not isinstance(fused, bool):
        raise ValueError(f"fused must be True, False or None (automatic), got {fused!r}")
    return fused


def simulate(
    problem: Problem,
    method: str,
    eta: float | Sequence[float] | Tensor,
    rho: float | Sequence[float] | Tensor = 0.0,
    x0: Tensor | Sequence[float] | None = None,
    steps: int = 1000,
    *,
    lam: float | None = None,
    eps: float = 0.0,
    record_every: int = 1,
    record: Sequence[str] = ("loss", "grad_norm", "x", "path_length", "sharpness"),
    blowup: float = 1e100,
    progress: bool = False,
    fused: bool | None = None,
    device: str | torch.device = "cpu",
) -> SimResult:
    """Run ``method`` for ``steps`` iterations on every configuration at once.

    Args:
        problem: a problem of :mod:`samkit.dynamics.problems`.
        method: ``"gd"``, ``"sam"``, ``"usam"`` or ``"unified"`` (needs ``lam``).
        eta, rho: step size(s) and radius(es): floats, sequences or tensors, broadcast together and with
            ``x0``'s batch axis (grids of more than one dimension are broadcast, then flattened in C order).
            ``rho`` is ignored by ``"gd"``.
        x0: ``(*shape)`` or ``(B, *shape)``; ``None`` uses ``problem.default_x0()``.
        steps: number of updates.
        lam: λ for ``"unified"``.
        eps: added to ‖g‖ in the normalized part (0: exact normalization, the theory's).
        record_every: stride of the recorded steps (0 and the last step are always recorded).
        record: series to record among ``"loss"``, ``"grad_norm"``, ``"x"``, ``"path_length"``, ``"sharpness"``.
            Sharpness may be expensive (power iteration for :class:`MatrixSensing`); ``"x"`` stores every
            recorded iterate (``T·B·numel`` numbers): drop it for big problems.
        blowup: a configuration whose iterate is non-finite or has norm above this is frozen at its last
            finite iterate and recorded as diverged at that step; the others go on.
        progress: show a tqdm progress bar.
        fused: ``True``: the compiled engine (:func:`torch.compile`, see the module docstring; the eager one, with a
            warning, where compilation fails); ``False``: the eager engine; ``None`` (default): compiled when
            ``B · numel · steps >=`` :data:`AUTO_FUSE_WORK` and ``problem.fusable`` (a large sweep of an elementwise
            problem), else eager. Both give the same results to rounding.
        device: where to compute (``"cpu"``, ``"cuda"``, ...): the problem's tensors are copied there
            (:meth:`Problem.to`). The result's tensors are on the CPU whatever the device.

    Returns:
        a :class:`SimResult`.
    """
    lam_v, eps, steps, record_every, record, dev = _checked_options(
        method, lam, eps, steps, record_every, record, blowup, device
    )
    eta_t, rho_t, x = _configurations(problem, eta, rho, x0)
    B = x.shape[0]
    rec_steps = _recorded_steps(steps, record_every)
    T = len(rec_steps)
    numel = x[0].numel()
    if "x" in record and T * B * numel > 2**28:
        warnings.warn(
            f"recording 'x' stores {T * B * numel:,} numbers; drop 'x' from record or raise record_every",
            stacklevel=2,
        )
    use_fused = _use_fused(fused, problem, B * numel * steps)
    x, eta_t, rho_t = x.to(dev), eta_t.to(dev), rho_t.to(dev)
    if dev.type != "cpu":
        problem = problem.to(dev)
    new_run = functools.partial(_Run, problem, lam_v, eps, x, eta_t, rho_t, record, rec_steps, blowup)
    run = _execute(new_run, use_fused, steps, f"{method} x{B}" if progress else None)
    return SimResult(
        method=method,
        eta=eta_t.cpu(),
        rho=rho_t.cpu(),
        diverged=run.diverged_at.cpu() >= 0,
        diverged_at=run.diverged_at.cpu(),
        final=run.x.cpu(),
        steps=torch.tensor(rec_steps, dtype=torch.long),
        series=run.series,
        lam=lam,
        eps=float(eps),
        problem=type(problem).__name__,
    )


def _checked_options(
    method: str,
    lam: float | None,
    eps: float,
    steps: int,
    record_every: int,
    record: Sequence[str],
    blowup: float,
    device: str | torch.device,
) -> tuple[float | None, float, int, int, tuple[str, ...], torch.device]:
    """:func:`simulate`'s options checked: the resolved λ (None for GD), ``eps``, ``steps``, ``record_every``,
    ``record`` and the device."""
    if method not in SIM_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(map(repr, SIM_METHODS))}")
    normalization = SIM_METHODS[method]
    lam_v = None if normalization is None else resolve_lam(normalization, lam)  # "unified" needs lam; others agree
    eps = number(eps, "eps")
    steps = integer(steps, "steps", minimum=0)
    record_every = integer(record_every, "record_every", minimum=1)
    record = tuple(record)
    bad = [r for r in record if r not in RECORDABLE]
    if bad:
        raise ValueError(f"unknown record entries {bad}; allowed: {RECORDABLE}")
    if isinstance(blowup, bool) or not isinstance(blowup, (int, float)) or not blowup > 0:
        raise ValueError(f"blowup must be a number > 0 (inf: only non-finite iterates diverge), got {blowup!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from err
    return lam_v, eps, steps, record_every, record, dev


def _recorded_steps(steps: int, record_every: int) -> list[int]:
    """The recorded step indices: every ``record_every``-th from 0, and the last step."""
    rec_steps = list(range(0, steps + 1, record_every))
    if rec_steps[-1] != steps:
        rec_steps.append(steps)
    return rec_steps


def _execute(new_run: Callable[[], _Run], use_fused: bool, steps: int, desc: str | None) -> _Run:
    """Build a run with ``new_run`` and run it on the chosen engine (the fused one falls back to the eager one, with
    a warning, when compilation fails), with a tqdm bar of ``steps`` labelled ``desc`` (None: no bar)."""
    run = new_run()
    it: Any = None
    if desc is not None:
        from tqdm.auto import tqdm

        it = tqdm(total=steps, desc=desc)
    if use_fused:
        try:
            run.fused(it)
        except Exception as err:  # compilation is not available here (no C++ compiler, unsupported platform, ...)
            if not _is_compile_error(err):
                raise
            warnings.warn(  # stacklevel 3: the caller of simulate
                f"fused=True: torch.compile failed ({type(err).__name__}: {err}); running eagerly", stacklevel=3
            )
            run = new_run()
            run.eager(it)
    else:
        run.eager(it)
    if it is not None:
        it.close()
    return run


def _is_compile_error(err: Exception) -> bool:
    """An error raised by torch.compile itself (tracing, the backend, the C++ / Triton toolchain), not by the maths."""
    module = type(err).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor", "torch.fx", "triton")) or isinstance(
        err, (OSError, ImportError, NotImplementedError)
    )


class _Run:
    """The state of one :func:`simulate` call and its two engines."""

    def __init__(
        self,
        problem: Problem,
        lam: float | None,
        eps: float,
        x: Tensor,
        eta: Tensor,
        rho: Tensor,
        record: tuple[str, ...],
        rec_steps: list[int],
        blowup: float,
    ) -> None:
        B, dev = x.shape[0], x.device
        self.problem, self.lam, self.eps = problem, lam, eps
        self.x, self.eta, self.rho = x.clone(), eta, rho
        self.rec_steps, self.blowup = rec_steps, float(blowup)
        self.quick = self.blowup / math.sqrt(x[0].numel())  # max|x| ≤ this ⇒ ‖x‖ ≤ blowup
        self.scale = _range_scale(self.blowup)
        self.limit = self.scale * self.blowup
        self.path = torch.zeros(B, dtype=DTYPE, device=dev)
        self.diverged_at = torch.full((B,), -1, dtype=torch.long, device=dev)
        self.want_path = "path_length" in record
        shape = tuple(problem.shape)
        T = len(rec_steps)
        self.series = {k: torch.empty((T, B, *shape) if k == "x" else (T, B), dtype=DTYPE) for k in record}
        self._record(0)

    def _record(self, i: int) -> None:
        p, x, series = self.problem, self.x, self.series
        if "x" in series:
            series["x"][i] = x
        if "loss" in series:
            series["loss"][i] = p._loss(x)
        if "grad_norm" in series:
            series["grad_norm"][i] = batched_norm(p._grad(x))
        if "path_length" in series:
            series["path_length"][i] = self.path
        if "sharpness" in series:
            series["sharpness"][i] = p._sharpness(x)

    def eager(self, bar: Any) -> None:
        """One step at a time; diverged rows are dropped from the working copies."""
        x, nd = self.x, self.x.dim()
        idx = torch.arange(x.shape[0], device=x.device)
        xw, ew, rw, pw = x.clone(), batch_view(self.eta, nd), self.rho, self.path.clone()
        steps, next_rec = self.rec_steps[-1], 1
        for t in range(steps):
            if idx.numel() == 0:
                break
            xn = update(self.problem, xw, ew, rw, self.lam, self.eps)
            m = xn.flatten(1).abs().amax(1)
            if not bool((m <= self.quick).all()):  # the exact check only when some row may have left the range
                bad_rows = _inside(xn, self.quick, self.scale, self.limit) < 1
                if bool(bad_rows.any()):
                    gone = idx[bad_rows]
                    self.diverged_at[gone] = t + 1
                    x[gone] = xw[bad_rows]
                    self.path[gone] = pw[bad_rows]
                    keep = ~bad_rows
                    idx, xw, xn, ew, rw, pw = idx[keep], xw[keep], xn[keep], ew[keep], rw[keep], pw[keep]
            if self.want_path:
                pw = pw + batched_norm(xn - xw)
            xw = xn
            if bar is not None:
                bar.update(1)
            if self.rec_steps[next_rec] == t + 1:
                x[idx] = xw
                self.path[idx] = pw
                self._record(next_rec)
                next_rec += 1
        # fill any remaining record slots (all rows diverged early): frozen values
        x[idx] = xw
        self.path[idx] = pw
        while next_rec < len(self.rec_steps):
            self._record(next_rec)
            next_rec += 1

    def fused(self, bar: Any) -> None:
        """One compiled call per step on the ``[*shape, B]`` layout, in place; diverged rows are frozen. A step in
        which some active row needed the exact (scale-safe) path is recomputed with it."""
        dev = self.x.device
        # configurations contiguous: a [B, *shape] view of a [*shape, B] tensor (results do not depend on the layout)
        x = self.x.movedim(0, -1).contiguous().movedim(-1, 0)
        eta = batch_view(self.eta, x.dim())
        alive = torch.ones(x.shape[0], dtype=DTYPE, device=dev)
        diverged_at, path = -alive, (self.path if self.want_path else None)
        consts = [torch.tensor(v, dtype=DTYPE, device=dev) for v in (self.quick, self.scale, self.limit)]
        numel = x[0].numel()
        fast, exact = _compiled(False, numel), _compiled(True, numel)
        t, steps, step = 0, self.rec_steps[-1], torch.zeros((), dtype=DTYPE, device=dev)
        for i, until in enumerate(self.rec_steps[1:], start=1):
            while t < until:
                args = (self.problem, x, eta, self.rho, alive, diverged_at, path, step, *consts, self.lam, self.eps)
                out = fast(*args)
                if out.inexact is not None and out.inexact.item() > 0:
                    out = exact(*args)
                alive, diverged_at, path, step, t = out.alive, out.diverged_at, out.path, out.t, t + 1
                if bar is not None:
                    bar.update(1)
                if t % 64 == 0 and not bool(alive.any()):  # every run diverged: the rest is frozen
                    t = steps
            self.x, self.diverged_at = x, diverged_at.long()
            if path is not None:
                self.path = path
            self._record(i)
        self.x = x.contiguous()
