"""SAM inside the Hugging Face Trainer with gradient accumulation and bf16 (``pip install 'samkit[hf]'``).

A tiny GPT-2 built from a config (random weights, nothing downloaded) learns a synthetic next-token task with
:class:`samkit.integrations.hf.SAMTrainer`: the optimizer the Trainer builds from its arguments (AdamW here) wrapped
in ``samkit.SAM``; each optimizer step is a SAM step over the whole accumulation window, and ``max_grad_norm`` clips
the descent gradient (taken at ``w + ε``):

    python examples/hf_trainer_sam.py [--steps 30] [--accumulate 2] [--bf16]
"""

import argparse
import os
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from samkit.integrations.hf import SAMTrainer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--accumulate", type=int, default=2)
parser.add_argument("--bf16", action="store_true")
args = parser.parse_args()
warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()

torch.manual_seed(0)
VOCAB, LENGTH = 16, 12
starts = torch.randint(0, VOCAB, (256, 1))
tokens = (starts + torch.arange(LENGTH)) % VOCAB  # each sequence counts up modulo VOCAB: learnable


class Counting(Dataset):
    def __len__(self):
        return len(tokens)

    def __getitem__(self, i):
        return {"input_ids": tokens[i], "labels": tokens[i]}


config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2)
model = GPT2LMHeadModel(config)
with tempfile.TemporaryDirectory() as out:
    training_args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=args.accumulate,
        max_steps=args.steps,
        learning_rate=3e-3,
        bf16=args.bf16,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=max(1, args.steps // 3),
        disable_tqdm=True,
    )
    trainer = SAMTrainer(model, training_args, train_dataset=Counting(), sam_kwargs={"rho": 0.05})
    result = trainer.train()

model.eval()
with torch.no_grad():
    final = model(input_ids=tokens, labels=tokens).loss.item()
print(f"hf trainer (bf16={args.bf16}, accumulate {args.accumulate}): SAM steps {trainer.sam.steps}")
print(
    f"mean training loss {result.training_loss:.4f}, final loss {final:.4f} (chance: {torch.log(torch.tensor(VOCAB)):.4f})"
)
