"""USAM: SAM without the normalization, ``ε = ρ ∇L(w)`` (Andriushchenko & Flammarion 2022)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch.optim import Optimizer

from samkit.optim.sam import SAM

__all__ = ["USAM"]


class USAM(SAM):
    """Unnormalized SAM: ``ε = ρ ∇L(w)`` (no normalization, no projection).

    The same as ``SAM(..., normalization="none")``; see :class:`~samkit.SAM` for every argument.

    >>> import torch, samkit
    >>> opt = samkit.USAM(torch.nn.Linear(2, 1).parameters(), torch.optim.SGD, rho=0.01, lr=0.1)
    >>> opt.normalization
    'none'
    """

    def __init__(
        self,
        params: Iterable[Any] | None,
        base_optimizer: type[Optimizer] | Optimizer,
        rho: float = 0.05,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("normalization", "none") != "none" or kwargs.get("lam") not in (None, 0, 0.0):
            raise ValueError("USAM is SAM with normalization='none'; use samkit.SAM for other normalizations")
        kwargs["normalization"] = "none"
        kwargs.pop("lam", None)
        super().__init__(params, base_optimizer, rho, **kwargs)
