"""In-task pre-training (ITPT): masked-language-model training of a backbone on the experiment's
texts, resumable, written as an ordinary backbone folder.

One run: encode the texts once (whole-word indices), then optimiser steps over length-bucketed
shuffled batches (tokens.train_steps, one order per epoch seeded by (seed, epoch)); each batch's
masking is seeded by (seed, step), so a run resumed from a checkpoint draws exactly the batches and
masks an uninterrupted run draws. A checkpoint (MLM weights, AdamW and schedule state, torch's RNG
state, the step) is committed to <out>/resume/ every `save_every` steps and at each epoch's end; a
rerun with the same fingerprint resumes from it. The finished folder holds model.safetensors and
config.json of the plain encoder (AutoModel loads it), the tokenizer files, mlm_head.safetensors,
config.yaml and the record (written last, under the name the caller gives; its fingerprint says
what the weights were made from).

`p` everywhere is the pretrain section of a config (config.PretrainConfig): backbone, seed, epochs,
batch_size, max_length, lr, ... This module reads its fields and calls p.identity(); it does not
import config, so the models package stays below it.
"""
from __future__ import annotations

import functools
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, get_linear_schedule_with_warmup

from .. import faults
from ..fileio import committed, read_json
from .backbone import (autocast, default_device, kept_rng, num_threads, quiet_loading, resolve_backbone,
                       resolve_precision, seeded)
from . import sdpa
from .heads import attention_mask_4d
from .mlm import (MLM_HEAD, Corpus, encode_corpus, masked_batch, masked_lm, mlm_loss, picked_positions,
                  random_token_ids, save_head)
from .runtime import SYNC_STEPS
from .tokens import train_steps

log = logging.getLogger("pipeline.pretrain")
RESUME = "resume"   # <out>/resume/: the latest checkpoint of an unfinished run


@dataclass
class Progress:
    """Where a run stands: optimiser steps done, training seconds so far, the last loss."""
    step: int = 0
    seconds: float = 0.0
    loss: float = math.nan


def total_steps(p, n_texts: int) -> tuple[int, int]:
    """(steps per epoch, steps in all): epochs over the texts, capped by max_steps."""
    per_epoch = max(1, math.ceil(n_texts / p.batch_size))
    total = p.epochs * per_epoch
    return per_epoch, min(total, p.max_steps) if p.max_steps else total


def build_optimizer(model: torch.nn.Module, p, total: int):
    """AdamW (no decay on biases and norm weights) + warmup then linear decay to 0."""
    params = [q for q in model.parameters() if q.requires_grad]
    groups = [{"params": [q for q in params if q.ndim >= 2], "weight_decay": p.weight_decay},
              {"params": [q for q in params if q.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=p.lr)
    return opt, get_linear_schedule_with_warmup(opt, int(p.warmup * total), total)


def drop_checkpoint(out: Path) -> None:
    """Forget an unfinished run's checkpoint (the next run starts from the base backbone)."""
    shutil.rmtree(Path(out) / RESUME, ignore_errors=True)


def run(p, texts: list[str], out: Path, fingerprint: str, config_yaml: str, *, record_name: str,
        progress: bool = False) -> dict:
    """Pretrain p.backbone (p: the pretrain section of a config, config.PretrainConfig) on `texts`
    into `out` (resuming from out/resume/ when it holds a checkpoint of this fingerprint); returns the
    record, written last as out/<record_name>."""
    with num_threads(p.num_threads), kept_rng():
        torch.manual_seed(p.seed)
        tokenizer, model = masked_lm(p.backbone, p.seed)
        device = default_device()
        if device_loop(device):
            sdpa.use_sdpa(model.base_model)   # MPNet, DeBERTa-v2/v3: SDPA, as fine-tuning runs them on CUDA
        # no fp16 grad scaler here: a GPU without bf16 trains in fp32
        precision = resolve_precision(p.precision, device).replace("fp16", "fp32")
        model.to(device)
        corpus = encode_corpus(tokenizer, texts, p.max_length, p.whole_word)
        per_epoch, total = total_steps(p, len(texts))
        opt, sched = build_optimizer(model, p, total)
        state = resume(Path(out) / RESUME, fingerprint, model, opt, sched)
        log.info("pretrain %s on %d texts: %d steps (%d per epoch)%s", p.backbone, len(texts), total, per_epoch,
                 f", resumed at step {state.step}" if state.step else "")
        random_ids = random_token_ids(tokenizer)
        save = functools.partial(checkpoint, Path(out) / RESUME, fingerprint, model, opt, sched)
        with tqdm(total=total, initial=state.step, desc=f"pretrain {p.name}", disable=not progress, leave=False,
                  dynamic_ncols=True, mininterval=1.0) as bar:
            state = train(p, model, tokenizer, corpus, random_ids, opt, sched, state, per_epoch, total, save,
                          precision, device, bar)
        return finish(p, model, tokenizer, texts, corpus, Path(out), fingerprint, config_yaml, state, precision,
                      record_name)


def train(p, model, tokenizer, corpus: Corpus, random_ids: np.ndarray, opt, sched, state: Progress,
          per_epoch: int, total: int, save, precision: str, device: torch.device, bar) -> Progress:
    """Optimiser steps state.step..total (or until the time budget is spent); checkpoints through
    `save(state)` every p.save_every steps and at each epoch's end."""
    model.train()
    budget = p.max_minutes * 60 if p.max_minutes else math.inf
    lengths = corpus.lengths
    order, order_epoch = None, -1
    sync_steps = SYNC_STEPS if device_loop(device) else 1
    loss = None
    start = time.perf_counter() - state.seconds
    while state.step < total and time.perf_counter() - start < budget:
        epoch, i = divmod(state.step, per_epoch)
        if epoch != order_epoch:
            order, order_epoch = train_steps(lengths, p.batch_size, 1, np.random.default_rng([p.seed, epoch])), epoch
        batch = masked_batch(corpus, order[i][0], p.mlm_probability, np.random.default_rng([p.seed, 1, state.step]),
                             tokenizer, random_ids)
        loss = step(model, on_device(batch, model, device), opt, sched, p.max_grad_norm, precision, device)
        state.step += 1
        state.seconds = time.perf_counter() - start
        bar.update(1)
        faults.point(f"pretrain:step{state.step}")
        saving = (p.save_every and state.step % p.save_every == 0) or state.step % per_epoch == 0
        if saving or state.step % sync_steps == 0:
            state.loss = read_loss(loss)
            bar.set_postfix(loss=f"{state.loss:.4f}", refresh=False)
        if saving and state.step < total:
            save(state)
    if loss is not None:
        state.loss = read_loss(loss)
    return state


def device_loop(device: torch.device) -> bool:
    """Whether the steps run without waiting on the host (CUDA): the predicted tokens' positions and
    the 4D attention mask built before the batch is copied (non-blocking, from pinned memory), and
    the loss read every SYNC_STEPS steps and at checkpoints. On the CPU these waits cost nothing and
    the steps run as before."""
    return device.type == "cuda"


def on_device(batch: dict[str, torch.Tensor], model, device: torch.device) -> dict[str, torch.Tensor]:
    """A masked batch (each (B, T), on the host) on `device`; on the device loop with "picked" (N,)
    added and attention_mask made the backbone's 4D mask, so the step reads nothing back."""
    if not device_loop(device):
        return {k: v.to(device) for k, v in batch.items()}
    cuda = device.type == "cuda"
    host = {**batch, "picked": picked_positions(batch["labels"])}
    out = {k: (v.pin_memory() if cuda else v).to(device, non_blocking=cuda) for k, v in host.items()}
    out["attention_mask"] = attention_mask_4d(out["attention_mask"], model.base_model)
    return out


def read_loss(loss: torch.Tensor) -> float:
    """The loss on the host: on CUDA this waits for the step that made it."""
    return float(loss)


def step(model, batch: dict[str, torch.Tensor], opt, sched, max_grad_norm: float, precision: str,
         device: torch.device) -> float:
    """One optimiser step on one masked batch; returns its loss, left on the device (a 0-d tensor)."""
    with autocast(precision, device):
        loss = mlm_loss(model, batch)
    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


# ----------------------------------------------------------------------------- resume


def checkpoint(directory: Path, fingerprint: str, model, opt, sched, state: Progress) -> None:
    """The MLM weights, optimiser + schedule state and torch's RNG states (the CPU's; each GPU's
    too where CUDA runs, whose generators draw the dropout masks there), committed together."""
    from safetensors.torch import save_model

    directory.mkdir(parents=True, exist_ok=True)
    extra = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        extra["cuda_rng"] = torch.cuda.get_rng_state_all()
    with committed() as c:
        c.write_with(directory / "mlm.safetensors", lambda t: save_model(model, str(t)))
        c.write_with(directory / "state.pt", lambda t: torch.save(extra, t))
        c.write_json(directory / "resume.json", {"fingerprint": fingerprint, "step": state.step,
                                                 "seconds": round(state.seconds, 3), "loss": state.loss})
    log.info("pretrain: checkpoint at step %d (loss %.4f)", state.step, state.loss)


def resume(directory: Path, fingerprint: str, model, opt, sched) -> Progress:
    """The progress of the checkpoint in `directory` (its state loaded into model, opt, sched and
    torch's RNG), or a fresh start when there is none of this fingerprint (an old one is removed)."""
    from safetensors.torch import load_model

    info_path = directory / "resume.json"
    info = read_json(info_path) if info_path.is_file() else None
    if not isinstance(info, dict) or info.get("fingerprint") != fingerprint:
        shutil.rmtree(directory, ignore_errors=True)
        return Progress()
    load_model(model, str(directory / "mlm.safetensors"))   # in place: a tied decoder stays tied
    extra = torch.load(directory / "state.pt", weights_only=True)
    opt.load_state_dict(extra["optimizer"])
    sched.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"])
    cuda_rng = extra.get("cuda_rng")
    if cuda_rng and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_rng):
        torch.cuda.set_rng_state_all(cuda_rng)
    return Progress(int(info["step"]), float(info["seconds"]), float(info["loss"]))


# ----------------------------------------------------------------------------- the output


def encoder_of(p, model) -> torch.nn.Module:
    """The base checkpoint's AutoModel (pooler included) carrying the MLM model's trained encoder."""
    path, local_only = resolve_backbone(p.backbone)
    with seeded(p.seed), quiet_loading():
        encoder = AutoModel.from_pretrained(path, local_files_only=local_only, dtype=torch.float32)
    missing, unexpected = encoder.load_state_dict(model.base_model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"MLM encoder does not match {p.backbone}: missing {missing}, unexpected {unexpected}")
    return encoder


def finish(p, model, tokenizer, texts: list[str], corpus: Corpus, out: Path, fingerprint: str,
           config_yaml: str, state: Progress, precision: str, record_name: str) -> dict:
    """Write the backbone folder (the record, out/<record_name>, last) and drop the resume checkpoint."""
    old = read_json(out / record_name) if (out / record_name).is_file() else {}
    encoder = encoder_of(p, model.cpu())
    sentences = state.step * p.batch_size
    record = {"format": "pipeline-pretrain/1", "fingerprint": fingerprint, "base_backbone": p.backbone,
              "settings": p.identity(), "n_texts": len(texts), "n_tokens": int(corpus.lengths.sum()),
              "steps": state.step, "epochs": round(state.step / max(1, math.ceil(len(texts) / p.batch_size)), 3),
              "train_seconds": round(state.seconds, 3), "final_loss": round(state.loss, 5),
              "sentences_per_s": round(sentences / max(state.seconds, 1e-9), 1), "precision": precision}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".save-") as tmp, committed() as c, quiet_loading():
        encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_head(model, Path(tmp) / MLM_HEAD)
        names = sorted(f.name for f in Path(tmp).iterdir() if f.is_file())
        for name in names:
            c.write_bytes(out / name, (Path(tmp) / name).read_bytes())
        c.write_text(out / "config.yaml", config_yaml)
        record["files"] = {n: c.sha256(out / n) for n in names + ["config.yaml"]}
        c.write_json(out / record_name, record)
    for name in set(old.get("files", {})) - set(record["files"]):  # a file of an earlier base backbone
        (out / name).unlink(missing_ok=True)
    drop_checkpoint(out)
    return record
