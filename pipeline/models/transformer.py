"""Fine-tuned transformer classifier: any BERT-family checkpoint through AutoModel/AutoTokenizer.

TransformerModel(params, n_classes, view) follows the interface of base.Model. One fold's fit:
tokenise (once per table, cached across folds), build backbone + head, AdamW with layer-wise LR
decay and warmup + linear decay, gradient accumulation, clipping, mixed precision, and early
stopping on the fold's validation loss or metric (params.early_stop) with the best weights kept in
memory. How it runs on its device (sparse or dense embedding updates, where batches are built, how
often the loss is read back, TF32, compiled layers, inference batch sizes) is models/runtime.py's
Runtime, resolved from the params' `auto` settings per device.

save() writes model.safetensors, the backbone's config.json, the tokenizer files and
head_config.json, flat in one folder; load_checkpoint() rebuilds the model from them with no
network and no code run on load.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel

from ..fileio import safe_load_safetensors
from ..data import Split
from ..errors import PipelineError, first_line
from ..fileio import read_json, write_json, write_with
from ..tasks import CLASSIFICATION, Task, get as get_task
from .backbone import (autocast, default_device, load_config, load_pretrained, load_tokenizer, max_positions,
                       num_threads, resolve_backbone, resolve_precision, seeded)
from . import runtime, sdpa, stability
from .base import FitContext
from .dropout import fast_attention_dropout, swap_dropout
from .heads import Classifier, Head, apply_freezing
from .optim import Optim, build_optim, clip_grad_norm
from .params import TransformerParams, as_dict, sized
from .runtime import Runtime
from .tokens import Encoded, Feed, Micro, concat, encode_split, predict_batches, train_steps

HEAD_CONFIG = "head_config.json"
WEIGHTS = "model.safetensors"
SAVE_TMP = ".save-"  # save_pretrained writes here first, then each file is renamed into place


# ----------------------------------------------------------------------------- backbone + head


def check_compatible(tokenizer, backbone: nn.Module, params: TransformerParams, name: str) -> None:
    """Refuse a tokenizer/checkpoint pair that would index past the embeddings, or a too long max_length."""
    rows = backbone.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise PipelineError(f"backbone {name!r}: the tokenizer has {len(tokenizer)} tokens but the model's "
                            f"embeddings have {rows} rows; tokenizer and checkpoint do not match")
    limit = max_positions(backbone.config, tokenizer)
    if limit is not None and params.max_length > limit:
        raise PipelineError(f"transformer params: max_length={params.max_length} is above the limit of "
                            f"backbone {name!r} ({limit} tokens)")
    layers = backbone.config.num_hidden_layers
    if params.freeze_layers > layers:
        raise PipelineError(f"transformer params: freeze_layers={params.freeze_layers} but backbone {name!r} "
                            f"has {layers} layers")
    if (params.reinit_layers or 0) + params.freeze_layers > layers:   # null: sized later, never overlapping
        raise PipelineError(f"transformer params: reinit_layers={params.reinit_layers} top layers and "
                            f"freeze_layers={params.freeze_layers} bottom layers overlap in backbone {name!r} "
                            f"({layers} layers): a re-initialised layer must train")


def build_classifier(backbone: nn.Module, params: TransformerParams, n_classes: int) -> Classifier:
    """backbone + a fresh head sized from the backbone's config; freezing applied."""
    config = backbone.config
    head = Head(params.head, config.hidden_size, n_classes, params.dropout, params.multi_sample_dropout)
    # token types only where the model has a table for them (RoBERTa's has one row, DeBERTa-v3's none)
    module = Classifier(backbone, head, use_token_types=getattr(config, "type_vocab_size", 0) > 1)
    apply_freezing(module, params.freeze_embeddings, params.freeze_layers)
    return module


def load_backbone(params: TransformerParams, n_classes: int,
                  rt: Optional[Runtime] = None) -> tuple[object, Classifier, str]:
    """(tokenizer, Classifier with pretrained backbone, resolved source) for params.backbone, its
    attention as rt says (None: as on the CPU). The params' own ranges were checked when they were
    built (TransformerParams.__post_init__)."""
    rt = rt or runtime.resolve(params, torch.device("cpu"))
    source, local_only = resolve_backbone(params.backbone)
    config = load_config(source, local_only, params.backbone, params)
    tokenizer = load_tokenizer(source, local_only, params.backbone)
    attention, adapt = sdpa.plan(config, rt.attention, rt.sdpa_adapter)
    backbone = load_pretrained(source, local_only, params.backbone, config, attention)
    if adapt:
        sdpa.use_sdpa(backbone)
    check_compatible(tokenizer, backbone, params, params.backbone)
    return tokenizer, build_classifier(backbone, params, n_classes), source


# ----------------------------------------------------------------------------- training pieces


def batch_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, task: Task = CLASSIFICATION) -> torch.Tensor:
    """logits (B, n_outputs) float32, y the task's targets (B,) or (B, L), w (B,) float32 -> the
    weighted SUM of the task's loss (cross-entropy, squared error, binary cross-entropy); the
    caller divides by the effective batch's weight, so accumulation equals one big batch."""
    return task.loss(logits, y, w)


@dataclass
class Best:
    """Early stopping: the best validation score so far, its epoch and a CPU copy of its weights."""
    patience: int
    score: float = -math.inf
    epoch: int = 0
    state: Optional[dict] = None
    bad: int = 0

    def update(self, score: float, epoch: int, module: nn.Module) -> bool:
        """Record this epoch; True when `patience` epochs in a row brought no improvement."""
        if score > self.score:  # a NaN score never counts as an improvement
            self.score, self.epoch, self.state, self.bad = score, epoch, snapshot(module), 0
            return False
        self.bad += 1
        return self.patience > 0 and self.bad >= self.patience

    def rounded_score(self) -> Optional[float]:
        return None if self.state is None else round(self.score, 6)


def criterion(early_stop: str, ctx: FitContext, y: np.ndarray, pred: np.ndarray) -> float:
    """An epoch's early-stopping value, higher is better: the negated validation loss (`loss`), the
    experiment metric (`metric`, ctx.score) or the metric at the decisions tuned on these rows
    (`tuned`). pred: (n, C) validation predictions."""
    task = ctx.task or CLASSIFICATION
    if early_stop == "loss":
        return task.loss_score(y, pred)
    if early_stop == "tuned" and ctx.metric:
        return task.tuned_score(ctx.metric, y, pred)
    return float(ctx.score(y, pred))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every tensor of the state dict (the best epoch's weights)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class LossTally:
    """An epoch's training loss and gradient norms summed on the device, in float64: the same value,
    bit for bit, as summing each micro-batch's float32 loss on the host, without reading every
    step back (on CUDA a read waits for the queued work). A non-finite loss or norm leaves its sum
    non-finite, so a check finds every one since the epoch began."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.norm = torch.zeros((), dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, loss: torch.Tensor, rows: int) -> None:
        self.loss += loss.detach().double()
        self.rows += rows

    def add_norm(self, norm: torch.Tensor) -> None:
        self.norm += norm.detach().double()

    def check_loss(self, where: str) -> None:
        value = float(self.loss)
        if not math.isfinite(value):
            raise PipelineError(f"{where}: training loss is {value}; this fold was stopped "
                                "(try a lower lr or precision=fp32)")

    def check_norm(self, where: str) -> None:
        value = float(self.norm)
        if not math.isfinite(value):
            raise PipelineError(f"{where}: gradient norm is {value}; this fold was stopped "
                                "(try a lower lr or precision=fp32)")

    def mean(self) -> float:
        return float(self.loss) / max(self.rows, 1)


class ShapeClock:
    """Compiled layers compile once per batch variant (shape, and whether it runs without a mask:
    tokens.Feed.variant): the first step or batch of each variant is
    timed on its own (the device synchronised around it) and counted as compile time, so steady
    speed leaves it out while wall-clock figures keep it. Uncompiled, it does nothing."""

    def __init__(self, rt: Runtime, device: torch.device):
        self.on, self.device = rt.compile, device
        self.seen: set = set()
        self.seconds = 0.0        # every cold step and batch
        self.train_seconds = 0.0  # cold training steps only, and the rows they trained on
        self.train_rows = 0

    @contextlib.contextmanager
    def step(self, feed: Feed, micro: list[Micro], training: bool):
        """Around one training step or one prediction batch (micro: its batches). The batches'
        variants are only looked at when compiled (nothing added to an eager step)."""
        shapes = {(training, feed.variant(m)) for m in micro} if self.on else set()
        if not self.on or shapes <= self.seen:
            yield
            return
        train_rows = sum(len(m.rows) for m in micro) if training else 0
        runtime.synchronize(self.device)
        start = time.perf_counter()
        yield
        runtime.synchronize(self.device)
        took = time.perf_counter() - start
        self.seconds += took
        if train_rows:
            self.train_seconds += took
            self.train_rows += train_rows
        self.seen |= shapes


# ----------------------------------------------------------------------------- the model


class TransformerModel:
    """params: TransformerParams; n_classes: C; view: which text view of the tables to read.

    Learned state: tokenizer_, module_ (backbone + head), precision_, device_, info_.
    """

    def __init__(self, params: TransformerParams, n_classes: int, view: str):
        self.params = params
        self.n_classes = n_classes
        self.view = view
        self.info_: dict = {}
        self.task_: Task = CLASSIFICATION
        self.target_stats_: tuple[float, float] = (0.0, 1.0)   # Task.target_stats of the training rows
        self.tokenizer_ = None
        self.module_: Optional[Classifier] = None
        self.runtime_: Optional[Runtime] = None
        self._clock: Optional[ShapeClock] = None
        self._attention = ""
        self._cache: dict = {}
        self._source = ""
        self._sized: dict = {}   # what params.sized filled in for this fit (the fold record's "sized")

    # -- data

    def _encode(self, split: Split, swapped: bool = False) -> Encoded:
        key = f"{self._source}|{type(self.tokenizer_).__name__}"
        return encode_split(self._cache, key, self.tokenizer_, split, self.view,
                            self.params.max_length, self.params.truncation, swapped)

    def _training_rows(self, train: Split) -> tuple[Encoded, torch.Tensor, torch.Tensor]:
        """(encoded rows, (n,) labels, (n,) weights); with swap_augment on pairs, every pair a second
        time in the other order (b, a), so n = 2 * len(train)."""
        enc = self._encode(train)
        y, w = self._targets(train)
        if self.params.swap_augment and train.is_pair:
            return concat(enc, self._encode(train, swapped=True)), torch.cat([y, y]), torch.cat([w, w])
        return enc, y, w

    def _feed(self, enc: Encoded, y: Optional[torch.Tensor] = None, w: Optional[torch.Tensor] = None) -> Feed:
        rt, pad = self.runtime_, self.tokenizer_.pad_token_id
        return Feed(enc, 0 if pad is None else pad, self.device_, self.params.max_length, rt.length_buckets,
                    rt.static_rows, rt.device_batches, y, w)

    # -- fit

    def fit(self, train: Split, valid: Split, ctx: FitContext) -> "TransformerModel":
        """Fit one fold under params.num_threads and torch's global RNG seeded with ctx.seed; both
        are put back on return, so what runs next in this process sees the state it had before."""
        if train.y is None:
            raise PipelineError(f"{ctx.label or 'transformer'}: training rows have no labels")
        with num_threads(self.params.num_threads), seeded(ctx.seed):  # head init and dropout masks
            self._fit(train, valid, ctx)
        return self

    def _fit(self, train: Split, valid: Split, ctx: FitContext) -> None:
        p = self.params
        self.device_ = default_device()
        runtime.release_memory(self.device_)  # what earlier folds left goes back first
        self.runtime_ = rt = runtime.resolve(p, self.device_)
        self._clock = ShapeClock(rt, self.device_)
        self.precision_ = resolve_precision(p.precision, self.device_)
        self.task_ = ctx.task or CLASSIFICATION
        self.tokenizer_, self.module_, self._source = load_backbone(p, self.n_classes, rt)
        self.module_.device_masks = rt.device_batches   # no host read of the mask per forward
        # the recipe's unset fields, from this fold's rows and the backbone's width
        layers = runtime.encoder_layers(self.module_.backbone)
        self.params, self._sized = sized(p, len(train), self.module_.backbone.config.hidden_size,
                                         None if layers is None else len(layers))
        p = self.params
        self._attention = sdpa.attention_used(self.module_.backbone)  # before training swaps it
        stability.reinit_top_layers(self.module_.backbone, p.reinit_layers, p.backbone)
        if rt.fast_dropout:
            swap_dropout(self.module_)
        if rt.grad_checkpointing:
            runtime.enable_checkpointing(self.module_.backbone, p.backbone)
        self.module_.to(self.device_)
        if rt.compile:
            runtime.compile_layers(self.module_.backbone, rt.compile_mode)
        self._cache = ctx.cache
        with self.training_attention(), runtime.device_state(rt):
            self._train_loop(train, valid, ctx)

    def training_attention(self) -> contextlib.AbstractContextManager:
        """The attention the training steps run under: fast attention-dropout masks with fast_dropout
        on CPU (see models/dropout.py; CUDA's fused dropout is already cheap), else the backbone's own."""
        fast = self.runtime_.fast_dropout
        return fast_attention_dropout(self.module_.backbone) if fast else contextlib.nullcontext()

    def _targets(self, train: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's targets ((n,) int64 classes, (n,) float32 values or (n, L) float32 0/1) and (n,)
        float32 sample weights (1 where none are given)."""
        self.target_stats_ = self.task_.target_stats(train.y)
        y = self.task_.targets(train.y, self.n_classes, self.target_stats_)
        w = np.ones(len(y), np.float32) if train.sample_weight is None else np.asarray(train.sample_weight, np.float32)
        return torch.from_numpy(y), torch.from_numpy(w)

    def _train_loop(self, train: Split, valid: Split, ctx: FitContext) -> None:
        p, rt = self.params, self.runtime_
        enc, y, w = self._training_rows(train)
        rng = np.random.default_rng(ctx.seed)  # batch order: same seed, same batches
        steps_per_epoch = math.ceil(len(enc) / (p.batch_size * p.grad_accum))
        optim = build_optim(self.module_, p, p.epochs * steps_per_epoch, self.precision_, self.device_,
                            sparse=rt.sparse_embeddings)
        feed = self._feed(enc, y, w)
        can_stop = valid is not None and len(valid) > 0 and valid.y is not None
        best = Best(p.patience)
        ema = stability.Ema(self.module_, p.ema) if p.ema is not None else None
        swa = stability.Swa(self.module_, p.swa_epochs, p.epochs) if p.swa_epochs else None
        adversary = stability.adversary(self.module_, p.adversarial, p.adv_eps, p.adv_lr)
        averaged = ema.applied if ema is not None else contextlib.nullcontext
        label = ctx.label or "transformer"
        train_s = valid_s = 0.0
        scores: list[float] = []
        values: list[float] = []  # the early-stopping criterion per epoch
        bar = tqdm(total=p.epochs * steps_per_epoch, desc=label, disable=not ctx.progress, leave=False,
                   dynamic_ncols=True, mininterval=1.0)
        try:
            for epoch in range(1, p.epochs + 1):
                start = time.perf_counter()
                steps = feed.plan(train_steps(enc.lengths, p.batch_size, p.grad_accum, rng), lambda m: p.batch_size)
                loss = self._train_epoch(steps, feed, w, optim, bar, f"{label} epoch {epoch}",
                                         adversary if epoch >= p.adv_start_epoch else None, ema)
                train_s += time.perf_counter() - start
                if swa is not None:
                    swa.collect(epoch)
                if not can_stop:
                    continue
                start = time.perf_counter()
                with averaged():
                    score, value = self._validate(valid, ctx)
                    stop = best.update(value, epoch, self.module_)
                valid_s += time.perf_counter() - start
                scores.append(round(score, 5))
                values.append(round(value, 5))
                bar.set_postfix(loss=f"{loss:.4f}", score=f"{score:.4f}", epoch=epoch)
                if stop:
                    break
        finally:
            bar.close()
        levers = self._averages(ema, swa, best, valid if can_stop else None, ctx)
        if best.state is not None:
            self.module_.load_state_dict(best.state)
        self.info_ = {**({"sized": self._sized} if self._sized else {}), **levers,
                      "best_epoch": best.epoch or epoch, "best_score": best.rounded_score(), "epochs_run": epoch,
                      "epoch_scores": scores, "early_stop": p.early_stop,
                      **({"epoch_criterion": values} if p.early_stop != "metric" else {}),
                      "train_seconds": round(train_s, 3), "valid_seconds": round(valid_s, 3),
                      "samples_per_s": round(epoch * len(enc) / max(train_s, 1e-9), 1),
                      "train_tokens": int(enc.lengths.sum()) * epoch,
                      "precision": self.precision_, "device": self.device_.type, "max_length": p.max_length,
                      "trainable_params": sum(q.numel() for q in optim.params),
                      **self._runtime_record(epoch * len(enc), train_s)}

    def _validate(self, valid: Split, ctx: FitContext) -> tuple[float, float]:
        """(the experiment metric, the early-stopping criterion) of the module on the validation rows."""
        pred = self._predict_split(valid)
        score = float(ctx.score(valid.y, pred))
        return score, (score if self.params.early_stop == "metric" else criterion(self.params.early_stop, ctx, valid.y, pred))

    def _averages(self, ema: Optional[stability.Ema], swa: Optional[stability.Swa], best: Best,
                  valid: Optional[Split], ctx: FitContext) -> dict:
        """After the last epoch: the SWA average competes with the best epoch on the validation rows
        (kept where its criterion is higher); without validation rows the average (SWA or EMA) is
        the final model. Returns what the fold record says of them ({} when both are off)."""
        out: dict = {}
        if swa is not None:
            with swa.applied() as on:
                if on and valid is not None:
                    score, value = self._validate(valid, ctx)
                    out = {"swa_score": round(score, 5), "swa_criterion": round(value, 5),
                           "swa_epochs_averaged": swa.count, "kept": "epoch"}
                    if value > best.score:
                        best.score, best.state, out["kept"] = value, snapshot(self.module_), "swa"
                elif on:
                    best.state = snapshot(self.module_)
                    out = {"swa_epochs_averaged": swa.count, "kept": "swa"}
        if ema is not None and best.state is None:
            ema.commit()
        return out

    def _runtime_record(self, samples: int, train_s: float) -> dict:
        """What ran (the resolved runtime), compile time apart from steady speed, and the device's peak
        memory; left out on the plain CPU path, whose records stay as they were."""
        rt = self.runtime_
        if runtime.plain_cpu(self.params, rt):
            return {}
        out = {"runtime": rt.record(self._attention)}
        if rt.compile:
            clock = self._clock
            steady = samples - clock.train_rows   # rows of steps whose shapes were compiled before
            out.update(compile_seconds=round(clock.seconds, 3), train_compile_seconds=round(clock.train_seconds, 3),
                       steady_samples_per_s=round(steady / max(train_s - clock.train_seconds, 1e-9), 1) if steady else None)
        peak = runtime.peak_memory_mb(self.device_)
        if peak is not None:
            out["peak_memory_mb"] = peak
        return out

    def _train_epoch(self, steps: list[list[Micro]], feed: Feed, w: torch.Tensor, optim: Optim, bar,
                     where: str, adversary=None, ema: Optional[stability.Ema] = None) -> float:
        """One pass over `steps` (each a list of micro-batches); returns the epoch's mean training loss.
        The loss is read back every runtime.sync_steps steps (each step on CPU, where a read is free).
        adversary: this epoch's stability.Fgm / Awp (or None); ema: updated after every step."""
        self.module_.train()
        rt, tally = self.runtime_, LossTally(self.device_)
        every = rt.sync_steps
        for i, micro in enumerate(steps):
            at = f"{where} step {i + 1}" if every == 1 else f"{where} by step {i + 1}"
            runtime.mark_step(rt)
            with self._clock.step(feed, micro, training=True):
                self._accumulate(micro, feed, w, optim.scaler, at, tally, adversary)
                self._step(optim, at, tally)
                if ema is not None:
                    ema.update()
            bar.update(1)
            if every == 1 or (i + 1) % every == 0 or i + 1 == len(steps):
                tally.check_loss(at)
                tally.check_norm(at)
                bar.set_postfix(loss=f"{tally.mean():.4f}", refresh=False)
        return tally.mean()

    def _accumulate(self, micro: list[Micro], feed: Feed, w: torch.Tensor, scaler: Optional[torch.amp.GradScaler],
                    where: str, tally: LossTally, adversary=None) -> None:
        """Backward over the micro-batches of one step, each loss divided by the whole step's weight
        (so the gradient is the mean over the effective batch; w: the rows' host-side weights); the
        task losses go to `tally`, checked after each micro-batch where reads are free. With an
        adversary, each micro-batch's adversarial loss is backpropagated after its clean one."""
        denom = float(sum(w[torch.from_numpy(m.rows)].sum() for m in micro)) or 1.0

        def backward(loss: torch.Tensor) -> None:
            scaled = loss / denom
            (scaler.scale(scaled) if scaler is not None else scaled).backward()

        recording = adversary.record if adversary is not None else contextlib.nullcontext
        for m in micro:
            batch, targets = feed.inputs(m), feed.targets(m)
            with recording():
                loss, total = self._losses(batch, targets, self.params.rdrop)
            tally.add(loss, len(m.rows))
            if self.runtime_.sync_steps == 1:
                tally.check_loss(where)
            backward(total)
            if adversary is not None:
                with adversary.perturbed(len(batch["input_ids"])) as on:
                    if on:
                        backward(self._losses(batch, targets, 0.0)[1])

    def _losses(self, batch: dict, targets: tuple, rdrop: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(the task's loss, the loss to backpropagate) of one micro-batch: the same tensor, or with
        R-Drop (rdrop > 0) the mean task loss of two dropout passes and rdrop x their consistency added."""
        with autocast(self.precision_, self.device_):
            logits = self.module_(**(stability.doubled(batch) if rdrop else batch)).float()
        if not rdrop:
            loss = batch_loss(logits, *targets, self.task_)
            return loss, loss
        a, b = logits.chunk(2)
        loss = (batch_loss(a, *targets, self.task_) + batch_loss(b, *targets, self.task_)) / 2
        return loss, loss + rdrop * self.task_.consistency(a, b, targets[1])

    def _step(self, optim: Optim, where: str, tally: LossTally) -> None:
        """Clip, step, schedule, clear. With an fp16 scaler, non-finite gradients skip the step."""
        optim.unscale()
        if self.params.max_grad_norm and self.params.max_grad_norm > 0:
            norm = clip_grad_norm(optim.params, self.params.max_grad_norm)
            if optim.scaler is None:
                tally.add_norm(norm)
                if self.runtime_.sync_steps == 1:
                    tally.check_norm(where)
        optim.step()

    # -- predict

    def predict_proba(self, split: Split) -> np.ndarray:
        """(len(split), n_outputs) float32 predictions of the task, rows in the split's order.

        Rows run sorted by length (little padding) in batches of predict_batch_size, and are put
        back in the split's order. With swap_tta on pairs: the mean over both orders (a, b), (b, a).
        """
        if self.module_ is None:
            raise PipelineError("transformer: predict_proba before fit (or load_checkpoint)")
        with num_threads(self.params.num_threads), runtime.device_state(self.runtime_):
            out = self._predict_split(split)
        if self.info_ and self._clock.on:  # compiles of later prediction shapes count too
            self.info_["compile_seconds"] = round(self._clock.seconds, 3)
        peak = runtime.peak_memory_mb(self.device_)
        if self.info_ and peak is not None:
            self.info_["peak_memory_mb"] = max(self.info_.get("peak_memory_mb", 0.0), peak)
        return out

    def _predict_split(self, split: Split) -> np.ndarray:
        module, precision = self._inference_module()
        module.eval()
        orders = (False, True) if self.params.swap_tta and len(split) and split.is_pair else (False,)
        out = sum(self._predict(module, precision, self._encode(split, swapped)) for swapped in orders)
        return (out / len(orders)).astype(np.float32)

    def _predict(self, module: nn.Module, precision: str, enc: Encoded) -> np.ndarray:
        """(len(enc), n_classes) probabilities of `module` run under autocast to `precision`, rows
        longest first in batches of predict_batch_size rows or runtime.predict_tokens tokens; the
        probabilities stay on the device until the last batch."""
        p, rt, feed = self.params, self.runtime_, self._feed(enc)
        rows_at = (lambda m: max(1, rt.predict_tokens // m.width)) if rt.predict_tokens else (lambda m: p.predict_batch_size)
        plan = feed.plan([predict_batches(enc.lengths, p.predict_batch_size, rt.predict_tokens, feed.width)], rows_at)[0]
        out = torch.zeros((len(enc), self.n_classes), dtype=torch.float32, device=self.device_)
        with torch.inference_mode(), autocast(precision, self.device_):
            for m in plan:
                runtime.mark_step(rt)
                with self._clock.step(feed, [m], training=False):
                    logits = module(**feed.inputs(m)).float()
                out[feed.rows(m)] = self.task_.activate(logits[:len(m.rows)], self.target_stats_)
        return out.cpu().numpy()

    def _inference_module(self) -> tuple[nn.Module, str]:
        """(module, autocast precision) for prediction. bf16 on CPU: a bf16 copy of the backbone and
        no autocast, which re-casts activations around every op (the copy predicts 1.3x faster on
        MRPC, bench.profile_transformer); the head and pooling stay float32."""
        if self.precision_ != "bf16" or self.device_.type != "cpu" or self.runtime_.compile:
            return self.module_, self.precision_
        module = copy.deepcopy(self.module_)
        module.backbone.to(torch.bfloat16)
        return module, "fp32"

    # -- save / load

    def save(self, directory: Path) -> list[Path]:
        """The fitted (best) weights as model.safetensors, config.json, the tokenizer files and
        head_config.json, all directly in `directory`, each renamed into place whole. Returns them."""
        if not self.params.save_checkpoint or self.module_ is None:
            return []
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(SAVE_TMP + "*"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        state = {k: v.contiguous() for k, v in snapshot(self.module_).items()}
        written = [write_with(directory / WEIGHTS, lambda t: save_file(state, str(t), metadata={"format": "pt"}))]
        with tempfile.TemporaryDirectory(dir=directory, prefix=SAVE_TMP) as tmp:
            self.module_.backbone.config.save_pretrained(tmp)
            self.tokenizer_.save_pretrained(tmp)
            for f in sorted(Path(tmp).iterdir()):
                if f.is_file() and f.name not in (WEIGHTS, HEAD_CONFIG):
                    os.replace(f, directory / f.name)
                    written.append(directory / f.name)
        written.append(write_json(directory / HEAD_CONFIG, self._head_config()))
        return written

    def _head_config(self) -> dict:
        return {"format": "pipeline-transformer/1", "n_classes": self.n_classes, "task": self.task_.name,
                "target_stats": list(self.target_stats_),
                "view": self.view,
                "precision": self.precision_, "params": as_dict(self.params),
                "hidden_size": self.module_.backbone.config.hidden_size,
                "use_token_types": self.module_.use_token_types}

    @classmethod
    def load_checkpoint(cls, directory: Path) -> "TransformerModel":
        return load_checkpoint(directory)

    @classmethod
    def load(cls, directory: Path, params: TransformerParams, n_classes: int, view: str,
             task: Task) -> "TransformerModel":
        """The fold model saved in `directory`, ready to serve (registry.Kind.load): its inference
        copy made once (see for_inference). The checkpoint's own params are used; it must have
        n_classes outputs and read `view`."""
        model = load_checkpoint(directory)
        if model.n_classes != n_classes or model.view != view or model.task_.name != task.name:
            raise PipelineError(f"{directory}: a checkpoint of {model.n_classes} {model.task_.name} outputs on view "
                                f"{model.view!r}, the model has {n_classes} on {view!r}; retrain it")
        return model.for_inference()

    def for_inference(self) -> "TransformerModel":
        """Replace the module by its inference copy (bf16 backbone where training ran bf16 on CPU)
        once, so predictions run what training's predictions ran without a copy per call."""
        self.module_, self.precision_ = self._inference_module()
        self.module_.eval()
        return self

    def use_cache(self, cache: dict) -> None:
        """The cache of token ids the next predictions read and fill."""
        self._cache = cache


def _read_head_config(directory: Path) -> tuple[dict, TransformerParams]:
    path = directory / HEAD_CONFIG
    if not path.is_file() or not (directory / WEIGHTS).is_file():
        raise PipelineError(f"{directory}: not a transformer checkpoint ({HEAD_CONFIG} or {WEIGHTS} missing)")
    head = read_json(path)
    try:
        return head, TransformerParams(**head["params"])
    except (KeyError, TypeError) as e:
        raise PipelineError(f"{path}: unreadable head config ({first_line(e)})") from None


def load_checkpoint(directory: Path, device: Optional[torch.device] = None) -> TransformerModel:
    """A fitted TransformerModel from save()'s files: JSON + safetensors only, nothing downloaded,
    no code run (trust_remote_code stays off)."""
    directory = Path(directory)
    head, params = _read_head_config(directory)
    name = str(directory)
    tokenizer = load_tokenizer(name, True, name)
    device = device or default_device()
    rt = runtime.resolve(params, device, fitting=False)
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
        attention, adapt = sdpa.plan(config, rt.attention, rt.sdpa_adapter)
        backbone = AutoModel.from_config(config, **({} if attention is None else {"attn_implementation": attention}))
    except (OSError, ValueError, KeyError) as e:
        raise PipelineError(f"{directory}: cannot rebuild the backbone: {first_line(e)}") from None
    if adapt:
        sdpa.use_sdpa(backbone)
    check_compatible(tokenizer, backbone, params, name)
    module = build_classifier(backbone, params, head["n_classes"])
    state = safe_load_safetensors(directory / WEIGHTS)  # a damaged file is one line naming it
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PipelineError(f"{directory / WEIGHTS}: does not match {HEAD_CONFIG}: {first_line(e)}") from None
    model = TransformerModel(params, head["n_classes"], head["view"])
    model.task_ = get_task(head.get("task"))  # a checkpoint from before task types: classification
    model.target_stats_ = tuple(head.get("target_stats", (0.0, 1.0)))
    model.device_, model.runtime_ = device, rt
    model._clock = ShapeClock(model.runtime_, model.device_)
    model.precision_ = head["precision"] if model.device_.type == "cuda" or head["precision"] != "fp16" else "fp32"
    model.tokenizer_, model.module_, model._source = tokenizer, module.to(model.device_), name
    module.device_masks = model.runtime_.device_batches
    return model
