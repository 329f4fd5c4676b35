"""The fused (compiled) engine of simulate: the eager engine's results to 1e-12, divergence freezing, recording, the
exact fallback where the fast norms leave their range, the automatic choice and the fallback when compiling fails.

Most tests trace through torch.compile with the ``aot_eager`` backend (the traced, branch-free code, compiled in a
second or two); one compiles a tiny problem with inductor, the backend used for real.
"""

import sys
import warnings

import pytest
import torch

from samkit.dynamics import (
    MatrixSensing,
    PLManifold,
    Quadratic,
    ScalarFactorization,
    SingleNeuron,
    SmoothStronglyConvex,
    simulate,
)

SIM = sys.modules["samkit.dynamics.simulate"]
F64 = torch.float64
SERIES = ("loss", "grad_norm", "x", "path_length", "sharpness")


@pytest.fixture
def traced(monkeypatch):
    """Trace the fused step with aot_eager (no C++ compilation), from a clean dynamo cache."""
    monkeypatch.setattr(SIM, "_BACKEND", "aot_eager")
    monkeypatch.setattr(SIM, "_COMPILED", {})
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _rowwise(a, b):
    """max over rows of ‖a − b‖ / ‖a‖ (rows: the configurations)."""
    a, b = a.flatten(1), b.flatten(1)
    return float(((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-300)).max())


def assert_same(eager, fused, rtol=1e-12):
    assert torch.equal(eager.diverged_at, fused.diverged_at), (eager.diverged_at, fused.diverged_at)
    assert torch.equal(eager.steps, fused.steps)
    assert _rowwise(eager.final, fused.final) <= rtol
    assert set(eager.series) == set(fused.series)
    for k, v in eager.series.items():
        w = fused.series[k]
        if k == "x":
            assert _rowwise(v.flatten(0, 1), w.flatten(0, 1)) <= rtol
        else:
            torch.testing.assert_close(w, v, rtol=rtol, atol=0, equal_nan=True)


CASES = [
    # problem, method, eta, rho, x0, steps, kwargs; each mixes converging and diverging configurations
    (
        Quadratic([20.0, 5.0, 1.0], rotate=True, seed=1),
        "sam",
        [0.01, 0.08, 0.099, 0.15],
        [0.0, 0.1, 1.0, 2.0],
        None,
        60,
        {"blowup": 1e10},
    ),
    (Quadratic([10.0, 1.0]), "usam", [0.05, 0.09, 0.105, 0.2], 0.1, None, 80, {"blowup": 1e6}),
    (SmoothStronglyConvex([5.0, 1.0], c=0.5), "unified", [0.1, 0.3, 0.5], [0.1, 0.3, 1.0], None, 50, {"lam": 0.4}),
    (SingleNeuron("sqrt"), "gd", [0.1, 0.5, 3.0], 0.0, None, 40, {"blowup": 1e8}),
    (PLManifold(), "sam", [0.05, 0.2], [0.1, 0.5], None, 40, {}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{type(c[0]).__name__}-{c[1]}")
def test_fused_engine_matches_the_eager_one(traced, case):
    problem, method, eta, rho, x0, steps, kw = case
    args = dict(eta=eta, rho=rho, x0=x0, steps=steps, record_every=7, **kw)
    eager = simulate(problem, method, fused=False, **args)
    fused = simulate(problem, method, fused=True, **args)
    assert_same(eager, fused)
    if method != "gd" and problem.shape == (3,):  # the case meant to mix both outcomes does
        assert eager.diverged.any() and not eager.diverged.all()


def test_divergence_is_frozen_at_the_last_finite_iterate(traced):
    q = Quadratic([10.0, 1.0])
    res = simulate(q, "gd", [0.1, 0.3], x0=torch.ones(2), steps=200, blowup=1e10, fused=True)
    # |1 − 0.3·10| = 2 per step from 1: the norm passes 1e10 at step 34; the run stays at step 33's iterate
    assert res.diverged_at.tolist() == [-1, 34]
    x = res.series["x"][:, 1]
    assert torch.equal(x[33], x[-1]) and not torch.equal(x[32], x[33])
    torch.testing.assert_close(x[33, 0], torch.tensor(-(2.0**33), dtype=F64))
    assert res.series["path_length"][-1, 1] == res.series["path_length"][33, 1]
    # non-finite in one step (overflow): diverged at step 1, frozen at x0
    r2 = simulate(
        ScalarFactorization(), "usam", 0.1, 10.0, x0=torch.tensor([1e60, 1e60], dtype=F64), steps=3, fused=True
    )
    assert r2.diverged_at.tolist() == [1] and torch.equal(r2.final[0], torch.tensor([1e60, 1e60], dtype=F64))
    # every run diverged: the rest of the record repeats the frozen values
    r3 = simulate(q, "gd", [0.3, 0.4], x0=torch.ones(2), steps=300, blowup=1e3, record=("x",), fused=True)
    assert r3.diverged.all() and torch.equal(r3.series["x"][-1], r3.final)


def test_the_fast_norms_fall_back_to_the_exact_ones_out_of_range(traced, monkeypatch):
    # SAM on ½(xy)² reaches gradients far below 1e-160 (subnormal ‖g‖, where ρ/‖g‖ overflows): there the fused
    # engine redoes the step with the scale-safe norms, and matches the eager engine
    exact_steps = []
    compiled = SIM._compiled

    def spy(exact, numel=0):
        fn = compiled(exact, numel)
        if not exact:
            return fn

        def counted(*args):
            exact_steps.append(1)
            return fn(*args)

        return counted

    monkeypatch.setattr(SIM, "_compiled", spy)
    x0 = torch.tensor([1.3e-56, 6.8e-28], dtype=F64)  # SAM's iterate after 1200 steps from (1, 3): ‖g‖ ≈ 6e-111
    args = dict(eta=[0.05, 0.05], rho=[1.0, 0.5], x0=x0, steps=600, record_every=100)
    eager = simulate(ScalarFactorization(), "sam", fused=False, **args)
    fused = simulate(ScalarFactorization(), "sam", fused=True, **args)
    assert eager.series["grad_norm"][0, 0] > 1e-120 and eager.series["grad_norm"][-1, 0] < 1e-150  # left the range
    assert 0 < len(exact_steps) < 600, "the exact step ran where the plain norm underflowed, and only there"
    assert not fused.diverged.any()
    assert_same(eager, fused)


def test_inductor_compiles_a_tiny_problem_to_the_same_results():
    """The real backend (C++ through inductor): one small problem, SAM with divergence, recording everything."""
    torch._dynamo.reset()
    q = Quadratic([10.0, 3.0, 1.0], rotate=True, seed=0)
    args = dict(eta=[0.05, 0.15, 0.3], rho=[0.1, 0.5, 0.05], x0=torch.ones(3), steps=40, record_every=9, blowup=1e8)
    eager = simulate(q, "sam", fused=False, **args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused = simulate(q, "sam", fused=True, **args)
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]  # it compiled, no eager fallback
    assert eager.diverged.any() and not eager.diverged.all()
    assert_same(eager, fused)


def test_fused_choice_is_automatic_for_large_sweeps_only(monkeypatch):
    runs = []
    monkeypatch.setattr(SIM._Run, "fused", lambda self, bar: runs.append("fused") or self.eager(bar))
    q = Quadratic([2.0, 1.0])
    simulate(q, "sam", 0.1, 0.1, steps=10, record=())
    assert runs == []  # small: eager
    monkeypatch.setattr(SIM, "AUTO_FUSE_WORK", 100)
    simulate(q, "sam", [0.1] * 5, 0.1, steps=10, record=())  # 5 configurations × 2 × 10 steps = 100
    assert runs == ["fused"]
    simulate(MatrixSensing(d=3, r=1), "sam", [0.1] * 5, 0.1, steps=10, record=())  # not elementwise: eager
    simulate(q, "sam", [0.1] * 5, 0.1, steps=10, record=(), fused=False)
    assert runs == ["fused"]
    with pytest.raises(ValueError, match="fused must be True, False or None"):
        simulate(q, "sam", 0.1, fused="yes")


def test_a_failed_compilation_warns_and_runs_eagerly(monkeypatch):
    def broken(exact, numel=0):
        def fail(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler")

        return fail

    monkeypatch.setattr(SIM, "_compiled", broken)
    q = Quadratic([4.0, 1.0])
    with pytest.warns(UserWarning, match="torch.compile failed"):
        res = simulate(q, "usam", [0.1, 0.6], 0.1, steps=30, fused=True)
    ref = simulate(q, "usam", [0.1, 0.6], 0.1, steps=30, fused=False)
    assert torch.equal(res.final, ref.final) and torch.equal(res.diverged_at, ref.diverged_at)

    def wrong(exact, numel=0):  # an error of the computation itself is not swallowed
        def fail(*args):
            raise ZeroDivisionError("a bug")

        return fail

    monkeypatch.setattr(SIM, "_compiled", wrong)
    with pytest.raises(ZeroDivisionError):
        simulate(q, "usam", 0.1, 0.1, steps=3, fused=True)


def test_device_argument_and_problem_copies():
    q = Quadratic([3.0, 1.0])
    moved = q.to("cpu")
    assert moved is not q and torch.equal(moved.eigenvalues, q.eigenvalues) and moved.beta == q.beta
    res = simulate(q, "sam", 0.1, 0.1, steps=5, device="cpu", record=("loss",))
    assert res.final.device.type == "cpu"
    with pytest.raises(ValueError, match="device"):
        simulate(q, "sam", 0.1, 0.1, steps=5, device="no-such-device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_gives_the_cpu_results(fused):
    q = Quadratic([10.0, 3.0, 1.0], rotate=True, seed=0)
    args = dict(eta=[0.05, 0.15, 0.3], rho=[0.1, 0.5, 0.05], x0=torch.ones(3), steps=40, record_every=9, blowup=1e8)
    cpu = simulate(q, "sam", fused=False, **args)
    gpu = simulate(q, "sam", fused=fused, device="cuda", **args)
    assert gpu.final.device.type == "cpu"
    assert_same(cpu, gpu)


FUSABLE = [
    Quadratic([20.0, 5.0, 1.0]),
    Quadratic([9.0, 4.0, 1.0, 0.5], rotate=True, seed=3),
    SmoothStronglyConvex([5.0, 1.0], c=0.5),
    ScalarFactorization(),
    SingleNeuron("logcosh"),
    SingleNeuron("sqrt"),
    PLManifold(),
]


@pytest.mark.parametrize("problem", FUSABLE, ids=lambda p: f"{type(p).__name__}-{p.shape[0]}")
def test_every_fusable_problem_and_method_matches_the_eager_engine(traced, problem):
    """The fused engine (configurations contiguous, ``[*shape, B]`` inside) against the eager one: every method,
    converging and diverging configurations (a growing run is stopped at 1e4 before it amplifies rounding), every
    series; divergence steps identical, shapes unchanged."""
    assert problem.fusable
    eta, rho = [0.01, 0.1, 0.3, 0.6, 1.5], [0.05, 0.3, 0.1, 1.0, 0.2]
    for method in ("gd", "sam", "usam", "unified"):
        args = dict(eta=eta, rho=rho, steps=45, record_every=8, blowup=1e4, lam=0.5 if method == "unified" else None)
        eager = simulate(problem, method, fused=False, **args)
        fused = simulate(problem, method, fused=True, **args)
        assert_same(eager, fused)
        B, T = len(eta), len(eager.steps)
        assert fused.final.shape == (B, *problem.shape) and fused.final.is_contiguous()
        assert {k: tuple(v.shape) for k, v in fused.series.items()} == {
            k: (T, B, *problem.shape) if k == "x" else (T, B) for k in SERIES
        }


def test_inductor_unrolls_the_norms_of_a_d10_problem_to_the_same_results():
    """d = 10 (the phase-diagram problem): inductor writes the per-configuration norms out term by term
    (``UNROLL_MAX``); SAM and USAM match the eager engine, divergence steps included."""
    torch._dynamo.reset()
    q = Quadratic(torch.logspace(0, 1, 10, dtype=F64))
    assert 8 < q.shape[0] <= SIM.UNROLL_MAX
    eta = torch.linspace(0.02, 0.25, 12, dtype=F64)
    rho = torch.logspace(-3, 1, 12, dtype=F64)
    for method in ("sam", "usam"):
        args = dict(eta=eta, rho=rho, x0=torch.ones(10), steps=120, record_every=40, blowup=1e8)
        eager = simulate(q, method, fused=False, **args)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fused = simulate(q, method, fused=True, **args)
        assert not [w for w in caught if "torch.compile failed" in str(w.message)]
        assert eager.diverged.any() and not eager.diverged.all()
        assert_same(eager, fused)
