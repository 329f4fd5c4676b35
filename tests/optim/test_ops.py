"""The optimizer's list operations (samkit.optim.ops): foreach and single-tensor paths agree, non-finite checks."""

import pytest
import torch

from samkit.optim.ops import ForeachOps, ListCache, ListOps, grouped, list_ops, nonfinite, unscale_


def _tensors():
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(3, 4, generator=g),
        torch.randn(5, generator=g, dtype=torch.float64),
        torch.randn(2, generator=g).half(),
        torch.randn((), generator=g),
    ]


def test_the_ops_are_chosen_once_by_foreach():
    assert type(list_ops(True)) is ForeachOps and type(list_ops(False)) is ListOps
    assert list_ops(True) is list_ops(1) and list_ops(False).foreach is False


@pytest.mark.parametrize("op", ["copy_", "add_", "mul_", "unscale_"])
def test_foreach_and_single_tensor_ops_give_the_same_bits(op):
    results = []
    for ops in (list_ops(True), list_ops(False)):
        ts, other = _tensors(), [t.flip(0) if t.dim() else t * 3 for t in _tensors()]
        if op == "copy_":
            ops.copy_(ts, other)
        elif op == "add_":
            ops.add_(ts, other, 0.3)
        elif op == "mul_":
            ops.mul_(ts, 1 / 3)
        else:
            assert ops.unscale_(ts, 0.125) is False
        results.append(ts)
    for a, b in zip(*results):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("foreach", [True, False])
def test_nonfinite_and_unscale_find_inf_and_nan_in_any_dtype(foreach):
    ts = _tensors()
    assert not nonfinite(ts, foreach=foreach)
    for bad in (float("inf"), float("nan")):
        worse = [*_tensors(), torch.tensor([bad], dtype=torch.float16)]
        assert nonfinite(worse, foreach=foreach)
        assert unscale_(worse, 0.5, foreach=foreach, groups=grouped(worse))


def test_nonfinite_check_works_under_a_float64_default_dtype():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert nonfinite([torch.tensor([1.0, float("inf")])])
        assert not nonfinite([torch.ones(3)])
    finally:
        torch.set_default_dtype(old)


def test_the_cache_recognises_a_list_by_the_identity_of_its_tensors():
    cache = ListCache()
    a, b, c = torch.ones(2), torch.ones(3), torch.ones(2, dtype=torch.float64)
    first = cache.backups([a, b])
    assert cache.backups([a, b]) is first  # a new list object, the same tensors
    assert cache.backups([a, c])[0] is first[0]  # another list: a's buffer is reused
    assert cache.backups([a.clone(), b]) is not first
    assert cache.layout([a, b, c]) == grouped([a, b, c])
    assert cache.layout([]) == {} and cache.backups([]) == []
