"""The registry of optimizers: a variant registered in one call is one of ``samkit train``'s optimizers."""

from __future__ import annotations

import pytest
import torch

import samkit
from samkit.optim import registry
from samkit.train import OPTIMIZERS, TrainConfig, TrainError, build_optimizer, train
from samkit.train.config import ONLY_FOR

TINY = dict(
    dataset="synthetic",
    model="mlp",
    epochs=1,
    batch_size=32,
    synthetic_train=64,
    synthetic_test=32,
    image_size=8,
    progress=False,
    quiet=True,
    threads=1,
)


class HalfStepSAM(samkit.SAM):
    """A toy variant, written as a user would: it halves the descent gradient and counts the hooks' calls."""

    def __init__(self, *args, **kwargs):
        self.calls = {"after_perturb": 0, "before_base_step": 0}
        super().__init__(*args, **kwargs)

    def after_perturb(self, groups):
        assert all(isinstance(g, samkit.optim.SAMGroup) and len(g.params) == len(g.grads) for g in groups)
        self.calls["after_perturb"] += 1

    def before_base_step(self):
        self.ops.mul_([p.grad for g in self.param_groups for p in g["params"] if p.grad is not None], 0.5)
        self.calls["before_base_step"] += 1


@pytest.fixture
def toy():
    built = []

    def build(b: registry.Build):
        opt = b.sam(HalfStepSAM, normalization="unified", lam=b.options["lam"])
        built.append(opt)
        return opt

    registry.register("halfsam", build, takes=("lam",), defaults={"lam": 0.25}, doc="a test variant")
    try:
        yield built
    finally:
        registry.unregister("halfsam")


def test_a_registered_variant_trains_through_samkit_train_with_no_other_change(toy):
    assert "halfsam" in OPTIMIZERS and list(OPTIMIZERS)[-1] == "halfsam"
    assert "lam" not in ONLY_FOR  # two optimizers take it now
    summary = train(TrainConfig(optimizer="halfsam", **TINY))
    assert summary["status"] == "completed" and len(summary["history"]) == 1
    (opt,) = toy
    assert type(opt) is HalfStepSAM and opt.lam == 0.25 and opt.steps == 2  # 64 examples / 32
    assert opt.calls == {"after_perturb": 2, "before_base_step": 2}
    assert summary["history"][0]["eps_norm"] > 0
    # the option it takes is passed on, and checked like unified's
    train(TrainConfig(optimizer="halfsam", lam=0.75, **TINY))
    assert toy[-1].lam == 0.75
    with pytest.raises(TrainError, match="--lam must be"):
        train(TrainConfig(optimizer="halfsam", lam=2.0, **TINY))
    with pytest.raises(TrainError, match="--gsam-alpha is only used with --optimizer gsam"):
        TrainConfig(optimizer="halfsam", gsam_alpha=0.1).validate()


def test_after_unregister_the_variant_is_gone(toy):
    registry.unregister("halfsam")
    try:
        assert "halfsam" not in OPTIMIZERS and ONLY_FOR["lam"] == "unified"
        with pytest.raises(TrainError, match="unknown optimizer 'halfsam'"):
            TrainConfig(optimizer="halfsam").validate()
    finally:
        registry.register("halfsam", lambda b: b.sam(), takes=("lam",))  # for the fixture's unregister


def test_the_registry_serves_the_six_optimizers_of_samkit_train():
    assert registry.names() == ("sgd", "sam", "usam", "unified", "asam", "gsam")
    assert dict(ONLY_FOR) == {"lam": "unified", "gsam_alpha": "gsam"}
    assert registry.takers("gsam_alpha") == ("gsam",)
    assert all(registry.get(name).doc for name in registry.names())


def test_bad_registrations_are_clear_errors():
    with pytest.raises(ValueError, match="already registered"):
        registry.register("sam", lambda b: b.sam())
    with pytest.raises(ValueError, match="not in takes"):
        registry.register("x", lambda b: b.sam(), needs=("lam",))
    with pytest.raises(TypeError, match="build must be callable"):
        registry.register("x", "SAM")
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register(" x", lambda b: b.sam())
    with pytest.raises(KeyError, match="no optimizer named 'x'; registered: sgd, sam"):
        registry.get("x")
    assert "x" not in registry.names()


def test_an_option_samkit_train_does_not_have_is_refused():
    registry.register("odd", lambda b: b.sam(), takes=("beta",))
    try:
        with pytest.raises(TrainError, match="--optimizer odd takes beta, which samkit train does not have"):
            TrainConfig(optimizer="odd").validate()
    finally:
        registry.unregister("odd")


def test_build_optimizer_reads_the_registry():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(TrainConfig(optimizer="gsam", rho=0.2, lr=0.3, momentum=0.5), model)
    assert type(opt) is samkit.GSAM and opt.alpha == registry.get("gsam").defaults["gsam_alpha"]
    assert opt.param_groups[0]["rho"] == 0.2 and opt.param_groups[0]["momentum"] == 0.5 and opt.model is model
