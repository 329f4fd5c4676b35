"""samkit inside PyTorch Lightning (:mod:`samkit.integrations.lightning`): a fit equals the manual samkit loop.

Every comparison runs the same initial weights over the same batches (``shuffle=False``) for the same number of
optimizer steps, and measures ``max over parameters of max|w_fit − w_manual| / max|w_manual|``. The integration runs
exactly the operations of the manual loop in the same order, so the measured difference is 0; the tolerance 1e-6
(float32) leaves room for a reordered reduction. bf16 / fp16 runs equal their manual autocast loop the same way; their
tolerance is a few ulps of the low precision (1e-2 relative), and a precondition checks that autocast took effect
(the low-precision run differs from the float32 one). The contrary tests show what plain automatic optimization does.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.functional import mse_loss
from torch.utils.data import DataLoader, TensorDataset

import samkit

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from samkit.integrations.lightning import SAMMixin  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

FP32_TOL = 1e-6  # float32: identical operations; room for a reordered reduction
LOW_TOL = 1e-2  # bf16 (8-bit mantissa, ulp 2^-8 ≈ 4e-3) and fp16: a few ulps of the parameters
STEPS, BATCH = 3, 4

torch.manual_seed(0)
X, Y = torch.randn(32, 4), torch.randn(32, 1)


class Plain(pl.LightningModule):
    """A LightningModule with SAM and Lightning's default automatic optimization (no samkit integration)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.calls: list[tuple[bool, float]] = []  # (second pass?, loss) of every training_step

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = mse_loss(self.net(x).float(), y)
        self.calls.append((bool(getattr(self, "sam_second_pass", False)), loss.item()))
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return samkit.SAM(self.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)


class WithSAM(SAMMixin, Plain):
    """The same module with the integration."""


@pytest.fixture(scope="module")
def initial():
    torch.manual_seed(1)
    return WithSAM().state_dict()


def _loader():
    return DataLoader(TensorDataset(X, Y), batch_size=BATCH, shuffle=False)


def _fit(cls, state, tmp_path, k=1, precision="32-true", plugins=None, **trainer_kwargs):
    model = cls()
    model.load_state_dict(state)
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        accumulate_grad_batches=k,
        precision=None if plugins else precision,
        plugins=plugins,
        **trainer_kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, _loader())
    assert trainer.global_step == STEPS
    return model, trainer


def _manual(state, k=1, dtype=None):
    """The reference: :meth:`SAM.step_accumulated` over the same micro-batches, autocast to ``dtype`` if given."""
    model = WithSAM()
    model.load_state_dict(state)
    opt = model.configure_optimizers()
    batches = list(_loader())

    def loss_fn(batch):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return mse_loss(model.net(batch[0]).float(), batch[1])

    for s in range(STEPS):
        opt.step_accumulated(loss_fn, batches[s * k : (s + 1) * k])
    return model


def _rel_diff(a, b) -> float:
    return max(((p - q).abs().max() / q.abs().max()).item() for p, q in zip(a.parameters(), b.parameters()))


def test_fit_with_sam_equals_the_manual_samkit_loop(initial, tmp_path):
    model, _ = _fit(WithSAM, initial, tmp_path)
    assert _rel_diff(model, _manual(initial)) <= FP32_TOL  # measured: 0.0
    assert _rel_diff(model, WithSAM()) > 1e-3  # it trained


def test_accumulation_equals_step_accumulated_over_the_same_micro_batches(initial, tmp_path):
    model, _ = _fit(WithSAM, initial, tmp_path, k=2)
    assert _rel_diff(model, _manual(initial, k=2)) <= FP32_TOL  # measured: 0.0
    assert [second for second, _ in model.calls] == [False, False, True, True] * STEPS  # both passes see 2 batches


def test_bf16_mixed_equals_the_manual_loop_under_bf16_autocast(initial, tmp_path):
    model, _ = _fit(WithSAM, initial, tmp_path, k=2, precision="bf16-mixed")
    assert _rel_diff(model, _manual(initial, k=2, dtype=torch.bfloat16)) <= LOW_TOL  # measured: 0.0
    assert _rel_diff(model, _manual(initial, k=2)) > 1e-5  # precondition: bf16 autocast was in effect (2.4e-3)


def test_16_mixed_with_a_grad_scaler_equals_the_manual_scaled_loop(initial, tmp_path):
    # Trainer(precision="16-mixed") on a CPU silently becomes bf16-mixed (Lightning 2.6), so the fp16 path with its
    # GradScaler is exercised with the plugin passed explicitly; on a GPU the flag gives the same plugin.
    plugin = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))
    model, _ = _fit(WithSAM, initial, tmp_path, k=2, plugins=[plugin])
    ref = WithSAM()
    ref.load_state_dict(initial)
    opt, scaler, batches = ref.configure_optimizers(), torch.amp.GradScaler("cpu"), list(_loader())
    for s in range(STEPS):
        window = batches[2 * s : 2 * s + 2]

        def closure():
            opt.zero_grad()
            for x, y in window:
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = mse_loss(ref.net(x).float(), y)
                scaler.scale(loss / 2).backward()

        opt.step(closure, scaler=scaler)
        scaler.update()
    assert plugin.scaler.get_scale() == scaler.get_scale() > 1  # the scaler was in use, in step with the reference
    assert _rel_diff(model, ref) <= LOW_TOL  # measured: 0.0
    assert _rel_diff(model, _manual(initial, k=2)) > 1e-6  # precondition: fp16 autocast was in effect


def test_gradient_clipping_clips_the_second_pass_gradient_only(initial, tmp_path):
    model, _ = _fit(WithSAM, initial, tmp_path, gradient_clip_val=0.1)
    ref = WithSAM()
    ref.load_state_dict(initial)
    opt = ref.configure_optimizers()
    for x, y in list(_loader())[:STEPS]:
        mse_loss(ref.net(x), y).backward()
        opt.first_step(zero_grad=True)  # ε from the unclipped gradient
        mse_loss(ref.net(x), y).backward()
        assert torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1) > 0.1  # the clipping bites
        opt.second_step(zero_grad=True)
    assert _rel_diff(model, ref) <= FP32_TOL  # measured: 0.0


def test_the_logged_loss_is_the_first_pass_loss(initial, tmp_path):
    model, trainer = _fit(WithSAM, initial, tmp_path)
    first = [loss for second, loss in model.calls if not second]
    second = [loss for second, loss in model.calls if second]
    assert len(first) == len(second) == STEPS and first[-1] != second[-1]
    assert trainer.callback_metrics["train_loss"].item() == pytest.approx(first[-1], rel=1e-6)


def test_contrary_plain_automatic_optimization_with_accumulation_is_wrong(initial, tmp_path):
    # Without the mixin, Lightning's closure re-runs only the last micro-batch at w + ε (weighted 1/k).
    model, _ = _fit(Plain, initial, tmp_path, k=2)
    assert _rel_diff(model, _manual(initial, k=2)) > 0.05  # measured: 0.36
    assert [second for second, _ in model.calls] == [False, False, False] * STEPS  # 3 training_steps per step, not 4


def test_contrary_plain_automatic_optimization_is_right_only_for_one_batch_per_step(initial, tmp_path):
    # SAM.step(closure) works as is with k=1, no scaler (but logs the loss at w + ε): what the mixin must keep.
    model, trainer = _fit(Plain, initial, tmp_path)
    assert _rel_diff(model, _manual(initial)) <= FP32_TOL
    assert trainer.callback_metrics["train_loss"].item() == pytest.approx(model.calls[-1][1], rel=1e-6)
    assert model.calls[-1][1] != model.calls[-2][1]  # the logged loss is the second pass's


def test_contrary_plain_16_mixed_crashes(initial, tmp_path):
    plugin = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))
    with pytest.raises(RuntimeError, match="needs a closure"):  # scaler.step(optimizer) calls SAM.step()
        _fit(Plain, initial, tmp_path, plugins=[plugin])


def test_another_optimizer_steps_as_lightning_does(tmp_path):
    class SGDModule(WithSAM):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model, _ = _fit(SGDModule, SGDModule().state_dict(), tmp_path, k=2)
    assert [second for second, _ in model.calls] == [False] * 2 * STEPS


def test_gradient_clipping_with_a_grad_scaler_is_a_clear_error(initial, tmp_path):
    plugin = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))
    with pytest.raises(NotImplementedError, match="gradient_clip_val with a GradScaler"):
        _fit(WithSAM, initial, tmp_path, plugins=[plugin], gradient_clip_val=1.0)


def test_the_module_imports_without_lightning_and_names_the_extra(monkeypatch):
    import sys

    from samkit.integrations import lightning as integration

    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    with pytest.raises(ImportError, match=r"pip install 'samkit\[lightning\]'"):
        integration.require_lightning()
