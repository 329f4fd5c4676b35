"""samkit inside the Hugging Face Trainer (:mod:`samkit.integrations.hf`): a ``SAMTrainer`` run equals the manual loop.

Same initial weights, same batches (``train_sampling_strategy="sequential"``), same number of optimizer steps; the
measure is ``max over parameters of max|w_fit − w_manual| / max|w_manual|``. ``SAMTrainer`` runs the operations of
the manual loop in the same order, so the measured difference is 0; the float32 tolerance 1e-6 leaves room for a
reordered reduction, the bf16 one (1e-2) a few bf16 ulps, with a precondition that autocast took effect. Models are
built from code or from a tiny config (no download); ``HF_HUB_OFFLINE`` is set.
"""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from torch.nn.functional import mse_loss
from torch.utils.data import Dataset

import samkit

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from samkit.integrations import hf  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

FP32_TOL = 1e-6
LOW_TOL = 1e-2
STEPS, BATCH = 3, 4

torch.manual_seed(0)
X, Y = torch.randn(32, 4), torch.randn(32, 1)


class Pairs(Dataset):
    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        return {"x": X[i], "labels": Y[i]}


class Net(torch.nn.Module):
    """A plain module the Trainer accepts: it returns its loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, x, labels=None):
        out = self.net(x).float()
        return {"loss": mse_loss(out, labels), "logits": out}


@pytest.fixture(scope="module")
def initial():
    torch.manual_seed(1)
    return Net()


def _sam(model):
    return samkit.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)


def _args(tmp_path, **kwargs):
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        use_cpu=True,
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
        disable_tqdm=True,
    )
    base.update(kwargs)
    return transformers.TrainingArguments(**base)


def _train(trainer_cls, model, tmp_path, dataset=None, **kwargs):
    trainer = trainer_cls(
        model=model, args=_args(tmp_path, **kwargs), train_dataset=dataset or Pairs(), optimizers=(_sam(model), None)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert trainer.state.global_step == STEPS
    return trainer


def _manual(initial, k=1, dtype=None):
    model = copy.deepcopy(initial)
    opt = _sam(model)
    batches = [(X[i : i + BATCH], Y[i : i + BATCH]) for i in range(0, len(X), BATCH)]

    def loss_fn(batch):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return model(*batch)["loss"]

    for s in range(STEPS):
        opt.step_accumulated(loss_fn, batches[s * k : (s + 1) * k])
    return model


def _rel_diff(a, b) -> float:
    return max(((p - q).abs().max() / q.abs().max()).item() for p, q in zip(a.parameters(), b.parameters()))


def test_sam_trainer_equals_the_manual_samkit_loop(initial, tmp_path):
    model = copy.deepcopy(initial)
    trainer = _train(hf.SAMTrainer, model, tmp_path)
    assert trainer.sam.steps == STEPS
    assert _rel_diff(model, _manual(initial)) <= FP32_TOL  # measured: 0.0
    assert _rel_diff(model, initial) > 1e-3  # it trained


def test_accumulation_equals_step_accumulated_over_the_same_micro_batches(initial, tmp_path):
    model = copy.deepcopy(initial)
    _train(hf.SAMTrainer, model, tmp_path, gradient_accumulation_steps=2)
    assert _rel_diff(model, _manual(initial, k=2)) <= FP32_TOL  # measured: 0.0


def test_max_grad_norm_clips_the_second_pass_gradient_only(initial, tmp_path):
    model = copy.deepcopy(initial)
    _train(hf.SAMTrainer, model, tmp_path, max_grad_norm=0.1)
    ref = copy.deepcopy(initial)
    opt = _sam(ref)
    for i in range(STEPS):
        x, y = X[BATCH * i : BATCH * (i + 1)], Y[BATCH * i : BATCH * (i + 1)]
        ref(x, y)["loss"].backward()
        opt.first_step(zero_grad=True)  # ε from the unclipped gradient
        ref(x, y)["loss"].backward()
        assert torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1) > 0.1  # the clipping bites
        opt.second_step(zero_grad=True)
    assert _rel_diff(model, ref) <= FP32_TOL  # measured: 0.0


def test_bf16_equals_the_manual_loop_under_bf16_autocast(initial, tmp_path):
    model = copy.deepcopy(initial)
    _train(hf.SAMTrainer, model, tmp_path, gradient_accumulation_steps=2, bf16=True)
    assert _rel_diff(model, _manual(initial, k=2, dtype=torch.bfloat16)) <= LOW_TOL  # measured: 0.0
    assert _rel_diff(model, _manual(initial, k=2)) > 1e-5  # precondition: bf16 autocast was in effect (2.4e-3)


def test_a_tiny_gpt2_with_bf16_and_accumulation_equals_the_manual_loop(tmp_path):
    config = transformers.GPT2Config(
        vocab_size=32, n_positions=8, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    torch.manual_seed(0)
    initial = transformers.GPT2LMHeadModel(config)  # randomly initialised from the config: nothing downloaded
    ids = torch.randint(0, 32, (4 * BATCH, 8))
    labels = ids.clone()
    # The Trainer normalises a causal-LM loss by num_items_in_batch, which transformers 5.25 counts over the
    # unshifted labels (8 per row) while the loss has 7 per row: masking position 0 makes the two agree, so the
    # Trainer's loss is the mean token loss that the manual loop uses.
    labels[:, 0] = -100

    class Tokens(Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": labels[i]}

    model = copy.deepcopy(initial)
    trainer = hf.SAMTrainer(
        model=model,
        args=_args(tmp_path, gradient_accumulation_steps=2, bf16=True, max_steps=2),
        train_dataset=Tokens(),
        optimizers=(samkit.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1), None),
    )
    trainer.train()
    ref = copy.deepcopy(initial)
    opt = samkit.SAM(ref.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)

    def loss_fn(rows):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ref(input_ids=ids[rows], labels=labels[rows]).loss

    for s in range(2):
        opt.step_accumulated(loss_fn, [slice(8 * s, 8 * s + 4), slice(8 * s + 4, 8 * s + 8)], weights=[1, 1])
    assert trainer.sam.steps == 2
    assert _rel_diff(model, ref) <= LOW_TOL  # measured: 0.0


def test_the_trainer_optimizer_is_wrapped_with_sam_kwargs(initial, tmp_path):
    model = copy.deepcopy(initial)
    trainer = hf.SAMTrainer(
        model=model,
        args=_args(tmp_path, gradient_accumulation_steps=2, max_steps=2, learning_rate=1e-2, weight_decay=0.1),
        train_dataset=Pairs(),
        sam_kwargs={"rho": 0.1, "normalization": "none"},
    )
    trainer.train()
    sam = trainer.sam
    assert isinstance(sam, samkit.SAM) and sam.normalization == "none" and sam.steps == 2
    assert isinstance(sam.base_optimizer, torch.optim.AdamW)  # the optimizer the Trainer builds from its args
    assert {g["rho"] for g in sam.param_groups} == {0.1}
    assert sorted(g["weight_decay"] for g in sam.param_groups) == [0.0, 0.1]  # its weight-decay groups are kept
    assert isinstance(trainer.optimizer.optimizer, hf.SAMStepper)  # the accelerate wrapper steps the SAMStepper


def test_contrary_a_plain_trainer_cannot_step_sam(initial, tmp_path):
    with pytest.raises(RuntimeError, match="needs a closure"):  # Trainer calls optimizer.step() without a closure
        _train(transformers.Trainer, copy.deepcopy(initial), tmp_path)


def test_contrary_a_second_pass_over_the_last_micro_batch_only_is_wrong(initial, tmp_path):
    # What a per-micro-batch SAM training_step does with accumulation: the second pass sees 1 of the k micro-batches.
    class LastOnly(hf.SAMTrainer):
        def _sam_rerun(self, model, window):
            super()._sam_rerun(model, window[-1:])

    model = copy.deepcopy(initial)
    _train(LastOnly, model, tmp_path, gradient_accumulation_steps=2)
    assert _rel_diff(model, _manual(initial, k=2)) > 0.05  # measured: 0.36


def test_fp16_is_a_clear_error(initial, tmp_path):
    with pytest.raises(ValueError, match="fp16"):
        _train(hf.SAMTrainer, copy.deepcopy(initial), tmp_path, fp16=True)


def test_the_stepper_refuses_a_step_without_the_first_step():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(RuntimeError, match="without SAM's first step"):
        hf.SAMStepper(_sam(model)).step()


def test_the_module_imports_without_transformers_and_names_the_extra(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    fresh = importlib.import_module("samkit.integrations.hf")
    monkeypatch.delitem(fresh.__dict__, "SAMTrainer", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'samkit\[hf\]'"):
        fresh.SAMTrainer  # noqa: B018
