"""The optimizers ``samkit train`` offers, in one registry: a name, how to build it and the options it takes.

``samkit train``'s config checks (:mod:`samkit.train.config`: the ``--optimizer`` choices and which optimizer takes
``--lam`` or ``--gsam-alpha``) and its optimizer construction (:func:`samkit.train.build_optimizer`) read this
registry, so a new variant is its class and one :func:`register` call::

    register("mysam", lambda b: b.sam(MySAM, normalization="l2"), doc="my variant")

A builder gets a :class:`Build` (the model and the run's hyperparameters) and returns the optimizer; ``b.sam``
builds a :class:`~samkit.SAM` (or a subclass) around SGD with the run's ``rho``, learning rate, momentum, weight
decay, ``model=`` and ``perturbation``, and with the two options every SAM built that way understands when its entry
takes them: ``sam_start`` (late SAM: a number of steps, or a fraction in (0, 1) of ``Build.total_steps``) and
``sam_on`` (``"norm"``: SAM-ON, only the normalization layers perturbed, :func:`~samkit.sam_on_param_groups`; ``"all"``:
every parameter). An option a variant takes (``takes``) is a field of :class:`~samkit.train.TrainConfig` that is
``None`` unless given (``lam``, ``gsam_alpha``, ``sam_start``, ``sam_on``); ``needs`` must be given, ``defaults``
fill in the others. A config that gives an option its optimizer does not take is refused.

>>> sorted(names())
['asam', 'gsam', 'sam', 'sgd', 'unified', 'usam']
>>> get("unified").needs, get("gsam").defaults
(('lam',), {'gsam_alpha': 0.1})
>>> takers("sam_on"), takers("sam_start")
(('sam', 'usam', 'unified'), ('sam', 'usam', 'unified', 'asam', 'gsam'))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from samkit.optim.groups import asam_param_groups, sam_on_param_groups
from samkit.optim.gsam import DEFAULT_ALPHA, GSAM
from samkit.optim.sam import SAM
from samkit.optim.schedule import resolve_start

__all__ = ["Build", "Entry", "register", "unregister", "get", "names", "takers"]


@dataclass(frozen=True)
class Build:
    """What a builder gets: the model and the run's hyperparameters (``samkit train`` fills it from its config)."""

    #: the model whose parameters are optimized
    model: nn.Module
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    rho: float = 0.05
    #: SAM's ``perturbation`` (``"local"`` or ``"global"``)
    perturbation: str = "local"
    #: the model as SAM sees it (``model=``: its DDP wrapper under DDP); None: ``model``
    net: nn.Module | None = None
    #: the options the entry takes, given or defaulted (e.g. ``{"lam": 0.5}``)
    options: Mapping[str, Any] = field(default_factory=dict)
    #: the run's number of optimizer steps (what a ``sam_start`` fraction is a fraction of); None: unknown
    total_steps: int | None = None

    def sgd_kwargs(self) -> dict[str, Any]:
        """The base SGD's options: ``lr``, ``momentum``, ``weight_decay``."""
        return dict(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def sam(self, cls: type[SAM] = SAM, params: Iterable[Any] | None = None, **kwargs: Any) -> SAM:
        """``cls(params, torch.optim.SGD, ...)`` with this run's ρ, ``model=``, ``perturbation`` and SGD options;
        ``params`` defaults to the model's parameters, ``kwargs`` go to ``cls`` (``normalization=``, ...).

        The options ``sam_start`` (``start=``, a fraction resolved against :attr:`total_steps`) and ``sam_on``
        (``"norm"``: the groups of :func:`~samkit.sam_on_param_groups`), when given, are applied here."""
        start = resolve_start(self.options.get("sam_start"), self.total_steps)
        if start:
            kwargs.setdefault("start", start)
        if self.options.get("sam_on") == "norm":
            if params is not None:
                raise ValueError(f"sam_on='norm' builds its own parameter groups; {cls.__name__} was given params")
            params = sam_on_param_groups(self.model)
        params = self.model.parameters() if params is None else params
        net = self.model if self.net is None else self.net
        common: dict[str, Any] = dict(rho=self.rho, model=net, perturbation=self.perturbation, **self.sgd_kwargs())
        return cls(params, torch.optim.SGD, **common, **kwargs)


@dataclass(frozen=True)
class Entry:
    """One registered optimizer (see :func:`register`)."""

    name: str
    build: Callable[[Build], torch.optim.Optimizer]
    takes: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""

    def options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The options of a :class:`Build`: each one this entry takes, given (not None) or defaulted."""
        out = {key: given.get(key) for key in self.takes}
        return {key: self.defaults.get(key) if value is None else value for key, value in out.items()}


_REGISTRY: dict[str, Entry] = {}


def register(
    name: str,
    build: Callable[[Build], torch.optim.Optimizer],
    *,
    takes: Iterable[str] = (),
    needs: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    doc: str = "",
) -> Entry:
    """Register the optimizer ``name``: ``build(Build) -> Optimizer``; ``takes``: the options it reads from
    ``Build.options``, of which ``needs`` must be given and ``defaults`` fill in the others. A name is registered
    once (:func:`unregister` it first to replace it).
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"an optimizer name must be a non-empty string without spaces around it, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"an optimizer named {name!r} is already registered; unregister({name!r}) first")
    if not callable(build):
        raise TypeError(f"build must be callable (Build -> Optimizer), got {build!r}")
    takes, needs, defaults = tuple(takes), tuple(needs), dict(defaults or {})
    stray = sorted(set(needs) - set(takes)) + sorted(set(defaults) - set(takes))
    if stray:
        raise ValueError(f"{name!r}: options in needs or defaults but not in takes: {', '.join(stray)}")
    entry = _REGISTRY[name] = Entry(name, build, takes, needs, defaults, doc)
    return entry


def unregister(name: str) -> None:
    """Remove the optimizer ``name`` (a KeyError if there is none)."""
    del _REGISTRY[get(name).name]


def get(name: str) -> Entry:
    """The entry of ``name``; a KeyError that lists the registered names if there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError(f"no optimizer named {name!r}; registered: {', '.join(_REGISTRY)}") from None


def names() -> tuple[str, ...]:
    """The registered names, in the order of registration."""
    return tuple(_REGISTRY)


def takers(option: str) -> tuple[str, ...]:
    """The registered optimizers that take ``option``.

    >>> takers("lam")
    ('unified',)
    """
    return tuple(name for name, entry in _REGISTRY.items() if option in entry.takes)


def _sgd(b: Build) -> torch.optim.Optimizer:
    return torch.optim.SGD(b.model.parameters(), **b.sgd_kwargs())


register("sgd", _sgd, doc="plain SGD with momentum (no perturbation)")
# the options of Build.sam: late SAM for every SAM entry; SAM-ON for the entries whose perturbation is the plain rule
# on every parameter (ASAM's norm layers are in its non-adaptive group anyway, and GSAM's correction on a subset is
# untested: both refuse --sam-on)
_LATE, _ON = ("sam_start",), ("sam_start", "sam_on")
register("sam", lambda b: b.sam(SAM, normalization="l2"), takes=_ON, doc="SAM (Foret et al. 2021): ε = ρ g / ‖g‖")
register(
    "usam",
    lambda b: b.sam(SAM, normalization="none"),
    takes=_ON,
    doc="USAM (Andriushchenko & Flammarion 2022): ε = ρ g",
)
register(
    "unified",
    lambda b: b.sam(SAM, normalization="unified", lam=b.options["lam"]),
    takes=("lam", *_ON),
    needs=("lam",),
    doc="unified SAM (Oikonomou & Loizou 2025): ε = ρ ((1 − λ) g + λ g / ‖g‖)",
)
register(
    "asam",
    lambda b: b.sam(SAM, params=asam_param_groups(b.model), normalization="l2", adaptive=True),
    takes=_LATE,
    doc="ASAM (Kwon et al. 2021), biases and normalization layers not rescaled",
)
register(
    "gsam",
    lambda b: b.sam(GSAM, alpha=b.options["gsam_alpha"], normalization="l2"),
    takes=("gsam_alpha", *_LATE),
    defaults={"gsam_alpha": DEFAULT_ALPHA},
    doc="GSAM (Zhuang et al. 2022): descent along g_p − α g_⊥",
)
