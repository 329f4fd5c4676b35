"""samkit._compat: every torch internal samkit uses resolves on this torch, and each fallback gives the same results.

When a torch upgrade moves one of these names, ``test_every_torch_internal_samkit_uses_resolves`` fails and names it;
samkit keeps working on the fallback, which the other tests check against the internal, bit for bit.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

import samkit
from samkit import _compat


def test_every_torch_internal_samkit_uses_resolves():
    status = _compat.check()
    missing = [name for name, ok in status.items() if not ok]
    assert not missing, (
        f"torch {torch.__version__} lacks these internals samkit uses (samkit runs on their fallbacks, see "
        f"samkit/_compat.py): {', '.join(missing)}"
    )
    assert len(status) >= 5


def _tensor_lists():
    g = torch.Generator().manual_seed(0)
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float32, torch.float64]
    yield [torch.randn(3, generator=g).to(dt) for dt in dtypes]
    yield [torch.randn(4, 2, generator=g)]
    yield [torch.randn((), generator=g, dtype=torch.float64), torch.randn(1, generator=g)]


def test_the_python_grouping_equals_torchs():
    for ts in _tensor_lists():
        assert _compat.py_group_by_device_and_dtype(ts) == _compat.group_by_device_and_dtype(ts)
    assert _compat.group_by_device_and_dtype([]) == {}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("inv", [1.0, 0.5, 2.0**-16, 1 / 3, 7.77])
@pytest.mark.parametrize("bad", [None, float("inf"), float("nan")])
def test_the_python_unscale_equals_the_kernel_bit_for_bit(dtype, inv, bad):
    g = torch.Generator().manual_seed(1)
    ts = [(torch.randn(257, generator=g) * 300).to(dtype), torch.randn(3, 4, generator=g).to(dtype)]
    if bad is not None:
        ts[1][1, 2] = bad
    results = []
    for fn in (torch._amp_foreach_non_finite_check_and_unscale_, _compat.py_non_finite_check_and_unscale_):
        out, found = [t.clone() for t in ts], torch.zeros(1)
        fn(out, found, torch.full((1,), inv))
        results.append((out, found))
    (a, fa), (b, fb) = results
    assert torch.equal(fa, fb) and fa.item() == (bad is not None)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and torch.equal(x.isnan(), y.isnan())
        assert torch.equal(x.nan_to_num(0.0), y.nan_to_num(0.0))


def _modules():
    return [
        nn.BatchNorm1d(2),
        nn.BatchNorm2d(2),
        nn.BatchNorm3d(2),
        nn.SyncBatchNorm(2),
        nn.LazyBatchNorm1d(),
        nn.InstanceNorm1d(2),
        nn.InstanceNorm2d(2, track_running_stats=True),
        nn.LazyInstanceNorm3d(),
        nn.LayerNorm(2),
        nn.GroupNorm(1, 2),
        nn.Linear(2, 2),
    ]


def test_the_public_norm_classes_classify_like_the_internal_base_classes():
    for m in _modules():
        assert isinstance(m, _compat.PUBLIC_BATCHNORM_TYPES) == isinstance(m, _compat.BATCHNORM_TYPES), m
        assert isinstance(m, _compat.PUBLIC_NORM_TYPES) == isinstance(m, _compat.NORM_TYPES), m


def test_mark_stepped_is_what_lr_schedulers_read():
    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    _compat.mark_stepped(opt)  # a step taken outside opt.step(), as SAM.second_step does
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.step()


def _train(steps=4, foreach=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()
    model[3].float()  # two (device, dtype) groups
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    opt = samkit.GSAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.05, model=model, foreach=foreach)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    opt.zero_grad()

    def closure():
        opt.zero_grad()
        h = model[:3](x)
        loss = nn.functional.mse_loss(model[3](h.float()).double(), y)
        scaler.scale(loss).backward()
        return loss

    for _ in range(steps):
        opt.step(closure, scaler=scaler)
        scaler.update()
    return [copy.deepcopy(t.detach()) for t in [*model.parameters(), *model.buffers()]]


@pytest.mark.parametrize("foreach", [True, False])
def test_samkit_on_the_fallbacks_trains_bit_for_bit_as_on_the_internals(monkeypatch, foreach):
    internal = _train(foreach=foreach)
    monkeypatch.setattr(_compat, "_GROUP", None)
    monkeypatch.setattr(_compat, "_UNSCALE", None)
    monkeypatch.setattr(samkit.optim.integrations, "BATCHNORM_TYPES", _compat.PUBLIC_BATCHNORM_TYPES)
    fallback = _train(foreach=foreach)
    assert len(internal) == len(fallback)
    for a, b in zip(internal, fallback):
        assert a.dtype == b.dtype and torch.equal(a, b)
