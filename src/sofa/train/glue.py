"""``sofa train --task glue`` and ``--task text-classification``: fine-tuning text encoders on labelled text.

``--task glue --glue-task cola|sst2|mrpc|stsb|qqp|mnli|qnli|rte|wnli --data GLUE_DIR [--init PRETRAIN_RUN]``
fine-tunes a text model (``text_{tiny,mini,small,medium}_{softmax,soft,soft_norm,set,pool}``, a classification
head, or a regression head for STS-B) on the task's training file and scores it on the development file(s)
(:mod:`sofa.data.glue`), with the task's metric (:mod:`sofa.train.text_metrics`): Matthews correlation (CoLA),
F1 and accuracy (MRPC, QQP), Spearman and Pearson (STS-B), matched and mismatched accuracy (MNLI), accuracy
(the rest), all × 100. ``--glue-task all`` runs the nine in turn, each in its own folder of the run
(``RUN/cola/``, ...), and writes one table (``RUN/glue_results.md`` and ``.json``); a task whose folder already
holds ``results.json`` is not run again, and one stopped half-way is resumed, so the same command continues a
suite.

``--task text-classification --data FILE_OR_DIR`` does the same for a user's own TSV/CSV/JSON(L) data
(:mod:`sofa.data.labelled_text`: ``--text-column``, ``--text-pair-column``, ``--label-column``, a seeded
``--val-fraction`` split where there is no development file), scored by accuracy and macro-F1.

One global setting for every task, after the cramming protocol (Geiping & Goldstein 2022, "Cramming: training
a language model on a single GPU in one day", GLUE with one hyper-parameter setting for all tasks):

===========================  =======================================================================
epochs                       5
batch size                   32 (per process)
peak learning rate           1e-4, AdamW, weight decay 0.01 (none on norms and biases)
warm-up                      10% of the steps (``--warmup-epochs 0.5``), linear, then cosine to 0
max tokens per example       128 (``--max-len``; both texts of a pair, truncated longest-first by the
                             tokenizer)
loss                         cross-entropy; mean squared error for STS-B
reported                     the final weights' development metrics (``metrics``) and, apart, the
                             best epoch's (``best``: selecting on the development set flatters it)
===========================  =======================================================================

Cramming's own setting is batch 16, learning rate 4e-5, 5 epochs, cosine decay, for a BERT-base-sized
encoder; the encoders here are smaller, which tolerates the larger rate, and batch 32 halves the steps.

The weights of a pretraining run (``sofa train --task mlm``) come in through ``--init RUN`` (or a checkpoint
file): the encoder's weights are loaded, the head is new. The run's tokenizer is found by
:func:`find_run_tokenizer` (``RUN/tokenizer.json``, else the ``tokenizer`` of ``RUN/config.yaml``) unless
``--tokenizer`` names one; without either, the byte-level tokenizer. Without ``--model`` the pretraining run's
model is taken. ``sofa eval RUN`` scores a fine-tuned run on its development data again.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sofa.errors import UserError
from sofa.models import family_of
from sofa.train.task import FinishedRun, StepOutput, Task, TrainingClock, register_task

__all__ = [
    "GlueTask",
    "TextClassificationTask",
    "PROTOCOL",
    "find_run_tokenizer",
    "run_config",
    "glue_table",
    "glue_score",
]

#: the one fine-tuning setting of every task (the loop's options); the command line and --config still win
PROTOCOL: dict[str, Any] = dict(
    model="text_mini_soft",
    epochs=5,
    batch_size=32,
    lr=1e-4,
    warmup_epochs=0.5,
    warmup_lr=1e-7,
    min_lr=0.0,
    weight_decay=0.01,
    sched="cosine",
    opt="adamw",
    drop_path=0.0,
    clip_grad=None,
    max_len=128,
    val_fraction=0.1,
    split_seed=0,
)
#: the options results.json repeats under "settings"
RESULT_SETTINGS = ("epochs", "batch_size", "lr", "warmup_epochs", "weight_decay", "max_len", "seed", "amp")
#: GLUE tasks averaged into the suite's score (WNLI left out, as BERT and cramming report)
AVERAGED = ("mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte")


# ---------------------------------------------------------------------------------------------- seams
# The text tokenizer, the text models and the pretrained-encoder loader live in sofa.data.text and
# sofa.models.text; they are reached through these three functions only, so a test can put stand-ins in.
def load_text_tokenizer(spec: str):
    """The tokenizer named by ``spec`` (a tokenizer file, or ``"bytes"``)."""
    from sofa.data.text import load_tokenizer

    return load_tokenizer(spec)


def create_text_model(name: str, **kwargs) -> nn.Module:
    """``sofa.create_model(name, vocab_size=, max_len=, head=, num_labels=, pad_id=)``."""
    import sofa

    return sofa.create_model(name, **kwargs)


def load_encoder(model: nn.Module, init: str):
    """Load a pretraining run's (or checkpoint's) encoder weights into ``model``; its head stays new."""
    from sofa.models.text import load_pretrained_encoder

    return load_pretrained_encoder(model, init)


# ---------------------------------------------------------------------------------------------- runs
def run_config(run: str | Path | None) -> dict[str, Any]:
    """The saved options of a run directory (or of the run holding a checkpoint file): ``config.yaml``, else
    ``config.json``; ``{}`` where there is none."""
    if not run:
        return {}
    p = Path(run)
    d = p if p.is_dir() else p.parent
    for name in ("config.yaml", "config.json"):
        f = d / name
        if f.is_file():
            try:
                if name.endswith(".json"):
                    data = json.loads(f.read_text())
                else:
                    import yaml

                    data = yaml.safe_load(f.read_text())
            except Exception:
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def find_run_tokenizer(run: str | Path | None) -> str | None:
    """The tokenizer a pretraining run was trained with: ``RUN/tokenizer.json`` where it exists, else the
    ``tokenizer`` option of the run's config (``"bytes"``, or a path — relative ones are tried against the run
    directory first). ``run`` may be the run directory or a checkpoint file inside it. None if neither says."""
    if not run:
        return None
    p = Path(run)
    d = p if p.is_dir() else p.parent
    if (d / "tokenizer.json").is_file():
        return str(d / "tokenizer.json")
    tok = run_config(d).get("tokenizer")
    if not tok:
        return None
    tok = str(tok)
    if tok == "bytes":
        return tok
    t = Path(tok)
    if not t.is_absolute() and (d / t).exists():
        return str(d / t)
    return tok


def glue_score(glue_task: str, metrics: dict[str, float]) -> float:
    """A GLUE task's score: the mean of its metrics (MRPC and QQP: F1 and accuracy; STS-B: Spearman and
    Pearson; MNLI: matched and mismatched accuracy)."""
    from sofa.data.glue import glue_spec

    names = glue_spec(glue_task).metrics
    return float(sum(metrics[n] for n in names) / len(names))


def glue_table(results: dict[str, dict[str, Any] | None]) -> tuple[str, dict[str, Any]]:
    """The markdown table and JSON record of a suite: ``results[task]`` is a task's ``results.json`` (None for a
    task not run). The average is over :data:`AVERAGED` tasks that were run."""
    from sofa.data.glue import GLUE_TASKS

    head = "| task | metric | dev | score | train / dev examples | skipped rows |\n|---|---|---|---|---|---|\n"
    lines, scores, record = [], {}, {"tasks": {}}
    for name, spec in GLUE_TASKS.items():
        r = results.get(name)
        if r is None:
            lines.append(f"| {name} | {'/'.join(spec.metrics)} | not run | | | |")
            record["tasks"][name] = None
            continue
        m = r["metrics"]
        shown = "/".join(f"{m[k]:.1f}" for k in spec.metrics)
        skipped = sum(r.get("skipped_rows", {}).values())
        lines.append(
            f"| {name} | {'/'.join(spec.metrics)} | {shown} | {r['score']:.1f} | "
            f"{r['train_examples']} / {r['dev_examples']} | {skipped} |"
        )
        scores[name] = r["score"]
        record["tasks"][name] = {"metrics": {k: m[k] for k in spec.metrics}, "score": r["score"]}
    averaged = [scores[t] for t in AVERAGED if t in scores]
    avg = sum(averaged) / len(averaged) if averaged else None
    record["average"] = avg
    record["averaged_tasks"] = [t for t in AVERAGED if t in scores]
    missing = [t for t in AVERAGED if t not in scores]
    foot = (
        f"\nAverage over {len(averaged)} task(s) (WNLI left out{'; missing: ' + ', '.join(missing) if missing else ''})"
        f": {avg:.1f}\n"
        if avg is not None
        else "\nNo task was run.\n"
    )
    return head + "\n".join(lines) + "\n" + foot, record


# ---------------------------------------------------------------------------------------------- tasks
class TextTask(Task):
    """What GLUE and text classification share: tokenizer, model, steps, evaluation over all predictions."""

    higher_is_better = True
    sample_unit = "seq"
    defaults: dict[str, Any] = dict(PROTOCOL)

    @classmethod
    def add_args(cls, p: argparse._ActionsContainer) -> None:
        p.add_argument(
            "--init",
            default=None,
            metavar="RUN",
            help="text: a pretraining run (or checkpoint) whose encoder weights start the fine-tuning",
        )
        p.add_argument(
            "--tokenizer",
            default=None,
            help="text: a tokenizer file or 'bytes' (default: the --init run's, else bytes)",
        )
        p.add_argument(
            "--max-len",
            type=int,
            default=None,
            help="tokens per example, longer ones are cut: glue and text-classification 128 (both texts of a "
            "pair); LRA text tasks LRA's own (2000 ListOps, 4000 text and retrieval, per document)",
        )
        p.add_argument(
            "--glue-task",
            default=None,
            help="glue: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, or all (each in RUN/<task>/)",
        )
        p.add_argument("--text-column", default=None, help="text-classification: column of the text")
        p.add_argument("--text-pair-column", default=None, help="text-classification: column of a second text")
        p.add_argument("--label-column", default=None, help="text-classification: column of the label")
        p.add_argument(
            "--split-seed",
            type=int,
            default=None,
            help="text-classification: seed of the development split of a single file (default 0, whatever --seed)",
        )
        p.add_argument(
            "--val-fraction",
            type=float,
            default=None,
            help="text-classification: share of a single file held out for development (default 0.1, seeded)",
        )

    @classmethod
    def profile(cls, cfg: argparse.Namespace) -> dict[str, Any]:
        """The pretraining run's model, where ``--init`` names one."""
        model = run_config(getattr(cfg, "init", None)).get("model")
        return {"model": model} if model else {}

    def __init__(self, cfg, log=None):
        super().__init__(cfg, log)
        self._tokenizer = None
        self._data: dict[str, Any] = {}
        self.clock = TrainingClock()

    # ---------------------------------------------------------------- to override
    @property
    def regression(self) -> bool:
        return False

    @property
    def num_labels(self) -> int:
        raise NotImplementedError

    def metric_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def compute_metrics(self, preds: list, labels: list, groups: list) -> dict[str, float]:
        raise NotImplementedError

    # ---------------------------------------------------------------- tokenizer and model
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            spec = getattr(self.cfg, "tokenizer", None) or find_run_tokenizer(getattr(self.cfg, "init", None))
            if not spec:
                spec = "bytes"
                if getattr(self.cfg, "init", None):
                    self.log(
                        f"warning: no tokenizer found with the --init run {self.cfg.init} (no tokenizer.json, no "
                        f"'tokenizer' in its config): using bytes; name one with --tokenizer"
                    )
            self.cfg.tokenizer = str(spec)  # recorded in the run's config, so that sofa eval finds it again
            self._tokenizer = load_text_tokenizer(str(spec))
        return self._tokenizer

    def data_summary(self, n_train: int, n_val: int) -> str:
        return f"{n_train} train / {n_val} val texts, at most {self._seq_len()} tokens"

    def _positions(self) -> int:
        """Positions of the model: the pretraining run's (its encoder's position table must fit), else --max-len."""
        pre = run_config(getattr(self.cfg, "init", None)).get("max_len")
        return int(pre or self.cfg.max_len or PROTOCOL["max_len"])

    def _seq_len(self) -> int:
        return min(int(self.cfg.max_len or PROTOCOL["max_len"]), self._positions())

    @classmethod
    def check_options(cls, cfg: argparse.Namespace) -> None:
        """Refuse options that cannot work before anything is written (a run directory, a suite)."""
        name = str(cfg.model)
        if family_of(name) != "text":
            raise UserError(
                f"--task {cls.name} fine-tunes a text model (text_{{tiny,mini,small,medium}}_"
                f"{{softmax,soft,soft_norm,set,pool}}); got --model {name}"
            )
        init = getattr(cfg, "init", None)
        if init and not Path(init).exists():
            raise UserError(f"--init {init} does not exist: expected a pretraining run directory or checkpoint")

    @classmethod
    def run_instead(cls, cfg: argparse.Namespace, callbacks=()) -> int | None:
        cls.check_options(cfg)
        return None

    def build_model(self) -> nn.Module:
        name = str(self.cfg.model)
        if family_of(name) != "text":
            raise UserError(f"--task {self.name} fine-tunes a text model; got --model {name}")
        tok = self.tokenizer
        model = create_text_model(
            name,
            vocab_size=int(tok.vocab_size),
            max_len=self._positions(),
            head="regression" if self.regression else "classification",
            num_labels=self.num_labels,
            pad_id=int(tok.pad_id),
        )
        init = getattr(self.cfg, "init", None)
        evaluating = hasattr(self.cfg, "split")  # sofa eval: the evaluated weights replace everything
        if init and not evaluating:
            load_encoder(model, str(init))
            self.log(f"encoder weights from {init}; new {'regression' if self.regression else 'classification'} head")
        elif not init and not evaluating:
            self.log("note: no --init: the encoder starts from random weights")
        return model

    # ---------------------------------------------------------------- data
    def collate_fn(self, split: str):
        from sofa.data.labelled_text import PadCollate

        return PadCollate(int(self.tokenizer.pad_id), self.regression)

    # ---------------------------------------------------------------- steps
    @staticmethod
    def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"])
        return out if isinstance(out, torch.Tensor) else out.logits

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.regression:
            return F.mse_loss(logits.float().reshape(-1), labels.float(), reduction=reduction)
        return F.cross_entropy(logits.float(), labels, reduction=reduction)

    def train_step(self, model, batch) -> StepOutput:
        logits = self._logits(model, batch)
        loss = self._loss(logits, batch["labels"])
        logs = {}
        if not self.regression:
            with torch.no_grad():
                logs["acc"] = (logits.argmax(-1) == batch["labels"]).float().mean() * 100.0
        return StepOutput(loss, logs, int(batch["labels"].shape[0]))

    def evaluate(self, model, loader, ctx) -> dict[str, float]:
        """Every prediction of every rank, then the task's metrics over all of them (MCC, F1 and Spearman are
        no sums of per-batch parts)."""
        preds: list = []
        labels: list = []
        groups: list = []
        loss_sum = 0.0
        for batch, logits in self.eval_outputs(model, loader, ctx, self._logits):
            logits = logits.float()
            loss_sum += float(self._loss(logits, batch["labels"], reduction="sum"))
            p = logits.reshape(-1) if self.regression else logits.argmax(-1)
            preds += p.cpu().tolist()
            labels += batch["labels"].cpu().tolist()
            groups += batch["groups"].cpu().tolist()
        parts = ctx.all_gather_object((preds, labels, groups, loss_sum))
        preds = [x for p in parts for x in p[0]]
        labels = [x for p in parts for x in p[1]]
        groups = [x for p in parts for x in p[2]]
        n = len(labels)
        if n == 0:
            return {**dict.fromkeys(self.metric_names(), 0.0), "loss": float("nan"), "count": 0}
        out = self.compute_metrics(preds, labels, groups)
        out["loss"] = sum(p[3] for p in parts) / n
        out["count"] = n
        return out

    # ---------------------------------------------------------------- bookkeeping
    def state_dict(self) -> dict[str, Any]:
        return self.clock.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clock.load_state_dict(state)

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {
            "num_labels": self.num_labels,
            "regression": self.regression,
            "tokenizer": getattr(self.cfg, "tokenizer", None),
            "vocab_size": int(self.tokenizer.vocab_size),
            "positions": self._positions(),
        }

    def _write_results(self, run: FinishedRun, results: dict[str, Any]) -> None:
        if run.ctx.rank == 0:
            from sofa.checkpoint import atomic_write_text

            atomic_write_text(run.run_dir / "results.json", json.dumps(results, indent=2) + "\n")

    def _common_results(self, model: nn.Module, run: FinishedRun) -> dict[str, Any]:
        return {
            "model": self.cfg.model,
            "init": getattr(self.cfg, "init", None),
            "tokenizer": getattr(self.cfg, "tokenizer", None),
            "data": str(self.cfg.data),
            "best": run.best,
            "steps": run.global_step,
            "wall_time_s": round(self.clock.seconds(), 3),
            "params": sum(p.numel() for p in model.parameters()),
            "device": str(run.ctx.device),
            "processes": run.ctx.world_size,
            "settings": {k: getattr(self.cfg, k, None) for k in RESULT_SETTINGS},
        }


def _scaled(values: dict[str, float]) -> dict[str, float]:
    return {k: 100.0 * float(v) for k, v in values.items()}


class GlueTask(TextTask):
    """One GLUE task (``--glue-task``), or the suite (``--glue-task all``, see :meth:`run_instead`)."""

    def __init__(self, cfg, log=None):
        super().__init__(cfg, log)
        from sofa.data.glue import glue_spec

        name = getattr(cfg, "glue_task", None)
        if not name or name == "all":
            raise UserError(
                "--task glue needs --glue-task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (or all)"
            )
        self.spec = glue_spec(name)
        cfg.glue_task = self.spec.name
        self.primary_metric = self.spec.metrics[0]

    @classmethod
    def run_instead(cls, cfg: argparse.Namespace, callbacks=()) -> int | None:
        """``--glue-task all``: every task in turn, then the table. None for a single task (the loop runs it)."""
        cls.check_options(cfg)
        name = str(getattr(cfg, "glue_task", None) or "").lower()
        if not name:
            raise UserError(
                "--task glue needs --glue-task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (or all)"
            )
        if name != "all":
            from sofa.data.glue import glue_spec

            glue_spec(name)  # an unknown name is refused here
            return None
        return run_glue_suite(cfg, callbacks)

    @property
    def regression(self) -> bool:
        return self.spec.regression

    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    def metric_names(self) -> tuple[str, ...]:
        return self.spec.metrics

    def compute_metrics(self, preds, labels, groups) -> dict[str, float]:
        from sofa.train.text_metrics import METRICS, accuracy

        out: dict[str, float] = {}
        for name in self.spec.metrics:
            if name in ("acc_m", "acc_mm"):
                g = 0 if name == "acc_m" else 1
                sel = [i for i, x in enumerate(groups) if x == g]
                out[name] = accuracy([preds[i] for i in sel], [labels[i] for i in sel]) if sel else 0.0
            else:
                out[name] = METRICS[name](preds, labels)
        return _scaled(out)

    # ---------------------------------------------------------------- data
    def _split(self, split: str):
        from sofa.data.glue import read_glue_split

        if split not in self._data:
            data = str(self.cfg.data or "")
            if not data or data == "digits" or not Path(data).exists():
                raise UserError(
                    f"--task glue needs --data DIR: a GLUE root (as GLUE's download_glue_data.py writes it, with "
                    f"{self.spec.folder}/) or the {self.spec.folder} folder itself"
                    + (f"; {data} does not exist" if data and data != "digits" else "")
                )
            s = read_glue_split(data, self.spec, split)
            if s.skipped:
                self.log(f"warning: {s.describe_skipped()}")
            self._data[split] = s
        return self._data[split]

    def _dev_dataset(self):
        from sofa.data.labelled_text import TextPairDataset

        names = [s for s in self.spec.splits if s != "train"]
        examples, groups = [], []
        for g, s in enumerate(names):
            ex = self._split(s).examples
            examples += ex
            groups += [g] * len(ex)
        return TextPairDataset(examples, self.tokenizer, self._seq_len(), groups)

    def build_datasets(self):
        from sofa.data.labelled_text import TextPairDataset

        train = TextPairDataset(self._split("train").examples, self.tokenizer, self._seq_len())
        val = self._dev_dataset()
        self.log(f"glue {self.spec.name}: {len(train)} training / {len(val)} development examples")
        return train, val

    def build_eval_dataset(self):
        return self._dev_dataset()

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {**super().checkpoint_metadata(), "glue_task": self.spec.name, "labels": list(self.spec.labels or [])}

    def after_training(self, model: nn.Module, run: FinishedRun) -> dict[str, str]:
        """The final weights on the development set(s): ``results.json``."""
        metrics = self.evaluate(model, run.loader(self._dev_dataset(), "val"), run.ctx)
        skipped = {s: dict(self._split(s).skipped) for s in self.spec.splits}
        results = {
            "task": "glue",
            "glue_task": self.spec.name,
            "metrics": metrics,
            "metric_names": list(self.spec.metrics),
            "score": glue_score(self.spec.name, metrics),
            **self._common_results(model, run),
            "train_examples": len(self._split("train")),
            "dev_examples": sum(len(self._split(s)) for s in self.spec.splits if s != "train"),
            "skipped_rows": {s: sum(c.values()) for s, c in skipped.items()},
            "skipped_why": skipped,
        }
        self._write_results(run, results)
        shown = ", ".join(f"{k} {metrics[k]:.2f}" for k in self.spec.metrics)
        self.log(f"glue {self.spec.name} development (final weights): {shown}")
        return {"results.json": "development metrics of the final weights, the best epoch, settings"}


def run_glue_suite(cfg: argparse.Namespace, callbacks=()) -> int:
    """Fine-tune on every GLUE task whose data is under ``cfg.data``, each in ``RUN/<task>/``; then write
    ``RUN/glue_results.md`` and ``RUN/glue_results.json``. Returns the exit code."""
    import os

    from sofa.checkpoint import atomic_write_text
    from sofa.data.glue import GLUE_TASKS, glue_task_dir
    from sofa.train.loop import default_run_dir, train
    from sofa.train.stopping import exit_code

    data = str(cfg.data or "")
    if not data or not Path(data).is_dir():
        raise UserError(f"--glue-task all needs --data DIR, a GLUE root with CoLA/, SST-2/, ...; got {data or 'none'}")
    if getattr(cfg, "resume", None):
        raise UserError("--glue-task all continues a suite by running it again with the same --output")
    present = [n for n, s in GLUE_TASKS.items() if (glue_task_dir(data, s) / s.splits["train"]).is_file()]
    if not present:
        raise UserError(f"{data} holds no GLUE task folder (CoLA/train.tsv, SST-2/train.tsv, ...)")
    root = Path(cfg.output) if cfg.output else default_run_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    main = int(os.environ.get("RANK", "0")) == 0
    results: dict[str, dict[str, Any] | None] = {}
    for name in GLUE_TASKS:
        if name not in present:
            if main:
                print(f"glue {name}: no {GLUE_TASKS[name].folder}/ under {data}, not run", flush=True)
            results[name] = None
            continue
        sub = root / name
        if (sub / "results.json").is_file():
            if main:
                print(f"glue {name}: {sub / 'results.json'} exists, not run again", flush=True)
        else:
            c = copy.copy(cfg)
            c.glue_task, c.output, c.resume = name, str(sub), None
            if (sub / "last.pt").is_file():
                c.resume = str(sub)
            if main:
                print(f"glue {name}: fine-tuning in {sub}", flush=True)
            result = train(c, callbacks)
            if result.stopped_by:
                return exit_code(result.stopped_by)
        if main:  # rank 0 wrote it; the other ranks need not wait for it
            results[name] = json.loads((sub / "results.json").read_text())
    if main:
        table, record = glue_table(results)
        record.update(model=cfg.model, init=getattr(cfg, "init", None), data=data)
        atomic_write_text(root / "glue_results.md", table)
        atomic_write_text(root / "glue_results.json", json.dumps(record, indent=2) + "\n")
        print(table, flush=True)
        print(f"wrote {root / 'glue_results.md'} and {root / 'glue_results.json'}", flush=True)
    return 0


class TextClassificationTask(TextTask):
    """A user's labelled text (:mod:`sofa.data.labelled_text`): accuracy (selects the best epoch) and macro-F1."""

    primary_metric = "acc"

    @property
    def data(self):
        if "all" not in self._data:
            from sofa.data.labelled_text import open_labelled_text

            data = str(self.cfg.data or "")
            if not data or data == "digits":
                raise UserError(
                    "--task text-classification needs --data FILE_OR_DIR: a .tsv/.csv/.jsonl/.json file of "
                    "labelled text, or a folder with train.* and dev.*"
                )
            d = open_labelled_text(
                data,
                getattr(self.cfg, "text_column", None),
                getattr(self.cfg, "label_column", None),
                getattr(self.cfg, "text_pair_column", None),
                float(getattr(self.cfg, "val_fraction", None) or PROTOCOL["val_fraction"]),
                int(getattr(self.cfg, "split_seed", None) or 0),
            )
            for line in d.describe_skipped():
                self.log(f"warning: {line}")
            self._data["all"] = d
        return self._data["all"]

    @property
    def num_labels(self) -> int:
        labels = getattr(self.cfg, "labels", None)  # sofa eval: the checkpoint's classes
        return len(labels) if labels else len(self.data.labels)

    def metric_names(self) -> tuple[str, ...]:
        return ("acc", "macro_f1")

    def compute_metrics(self, preds, labels, groups) -> dict[str, float]:
        from sofa.train.text_metrics import accuracy, macro_f1

        return _scaled({"acc": accuracy(preds, labels), "macro_f1": macro_f1(preds, labels)})

    def _dataset(self, split: str):
        from sofa.data.labelled_text import TextPairDataset

        return TextPairDataset(self.data.splits[split], self.tokenizer, self._seq_len())

    def build_datasets(self):
        d = self.data
        self.cfg.labels = list(d.labels)
        train, val = self._dataset("train"), self._dataset("val")
        self.log(
            f"text-classification: {len(train)} training / {len(val)} development examples, {len(d.labels)} "
            f"classes ({', '.join(d.labels[:10])}{' ...' if len(d.labels) > 10 else ''}); text column "
            f"{d.text_column!r}, label column {d.label_column!r}"
        )
        return train, val

    def build_eval_dataset(self):
        return self._dataset("val")

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {**super().checkpoint_metadata(), "labels": list(self.data.labels)}

    def after_training(self, model: nn.Module, run: FinishedRun) -> dict[str, str]:
        d = self.data
        metrics = self.evaluate(model, run.loader(self._dataset("val"), "val"), run.ctx)
        results = {
            "task": "text-classification",
            "metrics": metrics,
            **self._common_results(model, run),
            "labels": list(d.labels),
            "train_examples": len(d.splits["train"]),
            "dev_examples": len(d.splits["val"]),
            "sources": d.sources,
            "skipped_rows": {s: sum(c.values()) for s, c in d.skipped.items()},
            "skipped_why": {s: dict(c) for s, c in d.skipped.items()},
        }
        if "test" in d.splits and d.splits["test"]:
            results["test_metrics"] = self.evaluate(model, run.loader(self._dataset("test"), "val"), run.ctx)
            results["test_examples"] = len(d.splits["test"])
        self._write_results(run, results)
        self.log(f"text-classification development (final weights): acc {metrics['acc']:.2f}")
        return {"results.json": "development (and test) metrics of the final weights, the best epoch, settings"}


register_task("glue", GlueTask)
register_task("text-classification", TextClassificationTask)
