"""``sofa train --task mlm`` (``sofa pretrain``): masked-language-model pretraining of the text encoders.

The corpus (``--corpus FILES...``, or ``--data FILE``; default the built-in ``python-docs``) is tokenized once
with ``--tokenizer`` (``bytes``, built in, or a ``tokenizer.json``), split into training and validation
paragraphs (every 20th paragraph is held out, ``--val-fraction`` 0.05) and packed into sequences of
``--seq-len`` ids ``[CLS] … [SEP]`` (:func:`sofa.data.text.pack_corpus`). Every sample is masked as BERT does
(:func:`sofa.data.text.mask_tokens`, ``--mask-prob`` 0.15: 80% ``[MASK]``, 10% random, 10% kept) when it is
drawn, from the generator the loop seeds per sample, so masking differs between steps and repeats exactly on a
``--resume``; the validation split's masking is fixed (seeded by ``--seed`` and the sequence's index), so its
loss is comparable across evaluations and runs.

The loop counts in epochs; as for the LRA tasks (:mod:`sofa.train.lra`), one epoch here is one evaluation
interval: ``--eval-interval`` steps (default 500, at most ``--steps``) of samples drawn uniformly with
replacement from the training sequences, ``--epochs`` = ``--steps`` / ``--eval-interval``. The schedule is the
loop's: linear warm-up from 0 over ``--warmup-steps`` (default 10% of the steps, at most 10,000), then a cosine
decay to 0 (BERT decays linearly: ``--sched poly``). AdamW, lr 5e-4,
weight decay 0.01, batch 32, gradient clipping at 1.0.

Metrics (``metrics.jsonl``, the curves): ``loss`` is the mean cross-entropy (nats) over the predicted tokens of
the validation split with ``loss_se`` its standard error over those tokens, ``acc`` the share of them predicted
right, ``ppl`` = exp(loss); the best checkpoint is the
one of lowest validation loss. The run directory keeps the tokenizer (``tokenizer.json``, a copy of the one
used) beside the weights, so that fine-tuning (:func:`sofa.models.text.load_pretrained_encoder`) finds both.
At start the log shows the unigram entropy of the training tokens: the loss of a model that ignores the
context, the line a pretrained model must fall below.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sofa.errors import UserError
from sofa.train.task import StepOutput, Task, register_task

__all__ = ["MLMTask", "TOKENIZER_FILE", "unigram_entropy"]

#: the tokenizer's file in a run directory
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_STEPS, DEFAULT_INTERVAL, MAX_WARMUP = 10000, 500, 10000


def unigram_entropy(ids: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """The entropy (nats) of the token frequencies of ``ids`` (where ``mask`` is True)."""
    ids = ids[mask] if mask is not None else ids.reshape(-1)
    counts = torch.bincount(ids.reshape(-1)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


class MLMTask(Task):
    """Masked-language-model pretraining of a ``text_*`` model; see the module docstring."""

    primary_metric = "loss"
    sample_unit = "seq"
    higher_is_better = False
    defaults: dict[str, Any] = {"model": "text_mini_set", "data": "python-docs"}

    @classmethod
    def add_args(cls, p: argparse._ActionsContainer) -> None:
        p.add_argument(
            "--corpus",
            nargs="+",
            default=None,
            metavar="FILE",
            help="mlm: UTF-8 text files, or python-docs (built in: the Python documentation's prose); "
            "default --data, else python-docs",
        )
        p.add_argument(
            "--tokenizer",
            default="bytes",
            help="mlm: 'bytes' (built in, 261 ids) or a tokenizer.json (`sofa tokenizer train`); default bytes",
        )
        p.add_argument(
            "--seq-len", type=int, default=128, help="mlm: ids per sequence, [CLS] and [SEP] included (default 128)"
        )
        p.add_argument("--steps", type=int, default=None, help="mlm: optimiser steps (default 10000); sets --epochs")
        p.add_argument(
            "--eval-interval", type=int, default=None, help="mlm: steps between evaluations, one epoch (default 500)"
        )
        p.add_argument(
            "--warmup-steps",
            type=int,
            default=None,
            help="mlm: linear warm-up steps (default 10%% of --steps, at most 10000); sets --warmup-epochs",
        )
        p.add_argument("--mask-prob", type=float, default=0.15, help="mlm: share of tokens predicted (default 0.15)")
        p.add_argument(
            "--val-fraction", type=float, default=0.05, help="mlm: share of paragraphs held out (default 0.05)"
        )

    @classmethod
    def profile(cls, cfg: argparse.Namespace) -> dict[str, Any]:
        """The step-based schedule in the loop's terms."""
        steps = getattr(cfg, "steps", None) or DEFAULT_STEPS
        interval = min(getattr(cfg, "eval_interval", None) or DEFAULT_INTERVAL, steps)
        warmup = getattr(cfg, "warmup_steps", None)
        warmup = min(MAX_WARMUP, steps // 10) if warmup is None else warmup
        return dict(
            steps=steps,
            eval_interval=interval,
            warmup_steps=warmup,
            epochs=math.ceil(steps / interval),
            warmup_epochs=warmup / interval,
            batch_size=32,
            lr=5e-4,
            warmup_lr=0.0,
            min_lr=0.0,
            weight_decay=0.01,
            sched="cosine",
            opt="adamw",
            drop_path=0.0,
            clip_grad=1.0,
            workers=0,
        )

    def __init__(self, cfg, log=None):
        super().__init__(cfg, log)
        # the position table's size, under the name fine-tuning reads from the run's config (--task glue)
        cfg.max_len = int(getattr(cfg, "seq_len", None) or 128)
        self._tokenizer = None
        self._splits = None

    # ---------------------------------------------------------------- tokenizer and data
    def corpus(self) -> list[str]:
        corpus = getattr(self.cfg, "corpus", None)
        if corpus:
            return [str(c) for c in ([corpus] if isinstance(corpus, str) else corpus)]
        data = str(getattr(self.cfg, "data", None) or "python-docs")
        return ["python-docs" if data == "digits" else data]

    @property
    def tokenizer(self):
        """The tokenizer: the run's own copy when there is one (a resumed run), else ``--tokenizer``."""
        if self._tokenizer is None:
            from sofa.data.text import load_tokenizer

            spec = str(getattr(self.cfg, "tokenizer", None) or "bytes")
            own = Path(str(self.cfg.output)) / TOKENIZER_FILE if getattr(self.cfg, "output", None) else None
            if getattr(self.cfg, "resume", None) and own is not None and own.is_file():
                spec = str(own)
            self._tokenizer = load_tokenizer(spec)
        return self._tokenizer

    def splits(self):
        if self._splits is None:
            from sofa.data.text import pack_corpus

            seq_len = int(getattr(self.cfg, "seq_len", None) or 128)
            self._splits = pack_corpus(self.corpus(), self.tokenizer, seq_len, float(self.cfg.val_fraction))
        return self._splits

    def _save_tokenizer(self) -> None:
        """Copy the tokenizer into the run directory (rank 0; the run directory exists)."""
        import os

        from sofa.data.text import save_tokenizer_copy

        if int(os.environ.get("RANK", "0")) != 0 or not getattr(self.cfg, "output", None):
            return
        out = Path(str(self.cfg.output))
        if out.is_dir():
            save_tokenizer_copy(
                self.tokenizer, str(getattr(self.cfg, "tokenizer", None) or "bytes"), out / TOKENIZER_FILE
            )

    def build_datasets(self):
        from sofa.data.sampling import IntervalDraws
        from sofa.data.text import MLMDataset

        train, val = self.splits()
        self._save_tokenizer()
        tok = self.tokenizer
        prob = float(self.cfg.mask_prob)
        interval, batch = int(self.cfg.eval_interval), int(self.cfg.batch_size)
        real = train.attention_mask & (train.ids != tok.cls_id) & (train.ids != tok.sep_id)
        h = unigram_entropy(train.ids, real)
        self.log(
            f"mlm: corpus {' '.join(self.corpus())}, tokenizer {tok.name or 'bytes'} ({tok.vocab_size} ids): "
            f"{len(train)} training / {len(val)} validation sequences of {train.ids.shape[1]}; an epoch is one "
            f"evaluation interval of {interval} steps; unigram entropy of the training tokens {h:.3f} nats "
            f"(the loss of a model that ignores the context)"
        )
        train_ds = IntervalDraws.for_interval(MLMDataset(train, tok, prob), interval, batch)
        val_ds = MLMDataset(val, tok, prob, seed=int(self.cfg.seed)) if len(val) else None
        return train_ds, val_ds

    def build_eval_dataset(self):
        from sofa.data.text import MLMDataset

        _, val = self.splits()
        if len(val) == 0:
            raise UserError(f"corpus {' '.join(self.corpus())} has no validation split (--val-fraction)")
        return MLMDataset(val, self.tokenizer, float(self.cfg.mask_prob), seed=int(self.cfg.seed))

    # ---------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        import sofa
        from sofa.models import family_of

        name = self.cfg.model
        if family_of(name) != "text":
            raise UserError(f"--task mlm pretrains a text encoder (sofa models --family text); got --model {name}")
        tok = self.tokenizer
        return sofa.create_model(
            name,
            vocab_size=tok.vocab_size,
            max_len=int(getattr(self.cfg, "seq_len", None) or 128),
            head="mlm",
            pad_id=tok.pad_id,
        )

    def data_summary(self, n_train: int, n_val: int) -> str:
        seq_len = int(getattr(self.cfg, "seq_len", None) or 128)
        return f"{n_train} sequences drawn per epoch / {n_val} val, {seq_len} ids each"

    # ---------------------------------------------------------------- steps
    def train_step(self, model, batch) -> StepOutput:
        out = model(**batch)
        labels = batch["labels"]
        with torch.no_grad():
            chosen = labels != -100
            acc = (out.logits.argmax(-1)[chosen] == labels[chosen]).float().mean() * 100.0
        return StepOutput(out.loss, {"acc": acc}, int(labels.shape[0]))

    def eval_step(self, model, batch) -> dict[str, torch.Tensor]:
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        chosen = labels != -100
        picked = logits[chosen]
        target = labels[chosen]
        losses = torch.nn.functional.cross_entropy(picked, target, reduction="none").double()
        return {
            "loss_sum": losses.sum(),
            "loss_sq_sum": losses.square().sum(),
            "correct": (picked.argmax(-1) == target).sum(),
            "count": chosen.sum().double(),
        }

    def finalize_eval(self, sums) -> dict[str, float]:
        n = float(sums.get("count", torch.tensor(0.0)))
        if n == 0:
            return {"loss": float("nan"), "loss_se": float("nan"), "acc": 0.0, "ppl": float("nan"), "count": 0}
        loss = float(sums["loss_sum"]) / n
        spread = max(float(sums.get("loss_sq_sum", torch.tensor(0.0))) / n - loss * loss, 0.0)
        return {
            "loss": loss,
            # standard error of the loss over the masked tokens: how far two runs' losses may differ by chance
            "loss_se": math.sqrt(spread / max(n - 1.0, 1.0)),
            "acc": float(sums["correct"]) * 100.0 / n,
            "ppl": math.exp(min(loss, 50.0)),
            "count": int(n),
        }

    def checkpoint_metadata(self) -> dict[str, Any]:
        tok = self.tokenizer
        return {
            "tokenizer": TOKENIZER_FILE,
            "vocab_size": tok.vocab_size,
            "pad_id": tok.pad_id,
            "seq_len": int(getattr(self.cfg, "seq_len", None) or 128),
            "head": "mlm",
        }


register_task("mlm", MLMTask)
