"""Exact, batched GD / SAM / USAM / unified-SAM simulation on the analytic problems (float64).

One update for every configuration at once::

    g = ∇L(x);  ε = c(‖g‖, ρ)·g  (samkit.core.perturb_batched);  x ← x − η ∇L(x + ε)

with ``c = ρ/‖g‖`` (SAM, ``"l2"``), ``ρ`` (USAM, ``"none"``), ``ρ((1−λ) + λ/‖g‖)`` (``"unified"``), and no
perturbation for GD. Normalization is exact by default (``eps=0``): a zero gradient is a fixed point. ε comes from
:mod:`samkit.core`, the code behind :class:`samkit.SAM`: for the same gradient, the same ε bit for bit.

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

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from samkit._checks import batch_view, integer, number
from samkit.core import batched_norm, perturb_batched, resolve_lam
from samkit.dynamics.problems import DTYPE, Problem

__all__ = ["SIM_METHODS", "SimResult", "simulate", "update"]

#: method name -> ``normalization`` of the perturbation rule (:func:`samkit.core.resolve_lam`; None: GD, no
#: perturbation)
SIM_METHODS: dict[str, str | None] = {"gd": None, "sam": "l2", "usam": "none", "unified": "unified"}
RECORDABLE = ("loss", "grad_norm", "x", "path_length", "sharpness")


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
                for k, v in cols.items():
                    row[k] = v[i][b]
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
    g = problem._grad(x)
    if lam is not None:
        g = problem._grad(perturb_batched(g, rho, lam, eps).add_(x))
    return torch.addcmul(x, eta, g, value=-1.0)


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

    Returns:
        a :class:`SimResult`.
    """
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

    eta_t, rho_t, x = _configurations(problem, eta, rho, x0)
    B, shape, nd = x.shape[0], tuple(problem.shape), x.dim()
    rec_steps = list(range(0, steps + 1, record_every))
    if rec_steps[-1] != steps:
        rec_steps.append(steps)
    T = len(rec_steps)
    if "x" in record and T * B * x[0].numel() > 2**28:
        warnings.warn(
            f"recording 'x' stores {T * B * x[0].numel():,} numbers; drop 'x' from record or raise record_every",
            stacklevel=2,
        )
    series: dict[str, Tensor] = {}
    for k in record:
        series[k] = torch.empty((T, B, *shape) if k == "x" else (T, B), dtype=DTYPE)

    path = torch.zeros(B, dtype=DTYPE)
    diverged_at = torch.full((B,), -1, dtype=torch.long)
    numel = x[0].numel()
    quick_thresh = blowup / math.sqrt(numel)  # max|x| ≤ this ⇒ ‖x‖ ≤ blowup

    def do_record(i: int) -> None:
        if "x" in series:
            series["x"][i] = x
        if "loss" in series:
            series["loss"][i] = problem._loss(x)
        if "grad_norm" in series:
            series["grad_norm"][i] = batched_norm(problem._grad(x))
        if "path_length" in series:
            series["path_length"][i] = path
        if "sharpness" in series:
            series["sharpness"][i] = problem._sharpness(x)

    do_record(0)
    # working (active) copies: diverged rows are dropped from the computation
    idx = torch.arange(B)
    xw, ew, rw = x.clone(), batch_view(eta_t, nd), rho_t
    want_path = "path_length" in series
    pw = path.clone()
    next_rec = 1
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"{method} x{B}")
    for t in it:
        if idx.numel() == 0:
            break
        xn = update(problem, xw, ew, rw, lam_v, eps)
        m = xn.flatten(1).abs().amax(1)
        suspect = ~(m <= quick_thresh)
        if bool(suspect.any()):
            nrm = batched_norm(xn)
            bad_rows = ~(torch.isfinite(xn).flatten(1).all(1) & (nrm <= blowup))
            if bool(bad_rows.any()):
                gone = idx[bad_rows]
                diverged_at[gone] = t + 1
                x[gone] = xw[bad_rows]
                path[gone] = pw[bad_rows]
                keep = ~bad_rows
                idx, xw, xn, ew, rw, pw = idx[keep], xw[keep], xn[keep], ew[keep], rw[keep], pw[keep]
        if want_path:
            pw = pw + batched_norm(xn - xw)
        xw = xn
        if next_rec < T and rec_steps[next_rec] == t + 1:
            x[idx] = xw
            path[idx] = pw
            do_record(next_rec)
            next_rec += 1
    # fill any remaining record slots (all rows diverged early): frozen values
    x[idx] = xw
    path[idx] = pw
    while next_rec < T:
        do_record(next_rec)
        next_rec += 1

    return SimResult(
        method=method,
        eta=eta_t,
        rho=rho_t,
        diverged=diverged_at >= 0,
        diverged_at=diverged_at,
        final=x,
        steps=torch.tensor(rec_steps, dtype=torch.long),
        series=series,
        lam=lam,
        eps=float(eps),
        problem=type(problem).__name__,
    )
