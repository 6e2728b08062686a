"""How one transformer fit runs on its device: the `auto` params resolved per device, and the
device state around a fit (TF32, memory released and its peak read, compiled encoder layers).

What `auto` picks (the fold record's "runtime" says what ran):

| setting                  | CPU                                      | CUDA                                        |
|--------------------------|------------------------------------------|---------------------------------------------|
| embedding update         | lazy row-sparse Adam (sparse_embeddings) | dense, in the fused AdamW                   |
| dropout masks            | 16-bit lanes (fast_dropout)              | torch's fused dropout                       |
| batches                  | collated on the host per step            | token ids on the device, gathered there     |
| loss / non-finite checks | read every step (free on CPU)            | summed on the device, read every SYNC_STEPS |
| fp32 matrix products     | fp32                                     | TF32 (tf32)                                 |
| inference batches        | predict_batch_size rows                  | PREDICT_TOKENS tokens, longest rows first   |
| attention                | the backbone's default: SDPA where it has it, else eager (attention)   |
| eager-only backbones     | eager (MPNet, DeBERTa-v2/v3)             | SDPA through models.sdpa (sdpa_adapter)     |
| compile                  | off                                      | off (compile: true turns it on)             |

The CPU column is what bench.mrpc_vs_hf and bench.profile_transformer measured on the project's CPU
machines (torch.compile there: a long first compile and no training gain). The CUDA column removes
the host's work and waits from each step; it was written without a GPU at hand, and bench/gpu.py
measures it against the Trainer, with compile's modes and gradient checkpointing as levers: compile
stays opt-in until that run shows its one-off cost (a compile of one encoder layer per bucketed
batch shape) pays for itself. Nothing here changes what the CPU path computes.
"""
from __future__ import annotations

import contextlib
import gc
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import PipelineError
from .params import TransformerParams, quiet_set

SYNC_STEPS = 50          # CUDA: optimiser steps between host reads of the running loss
PREDICT_TOKENS = 32768   # CUDA: tokens per inference batch (rows x padded width)
COMPILE_BACKEND = "inductor"   # tests swap in "aot_eager" (same tracing, no code generation)
RECOMPILE_LIMIT = 64     # compiled entries per code object: (train, eval) x bucketed widths x layer kinds
AUTO_COMPILE = {"cpu": False, "cuda": False}


@dataclass(frozen=True)
class Runtime:
    """What one fit runs with; every field resolved (no `auto` left)."""
    device: str                # torch device type
    compile: bool              # encoder layers under torch.compile
    compile_mode: str          # torch.compile's mode ("" when not compiled)
    length_buckets: bool       # batch widths rounded up to BUCKETS
    static_rows: bool          # short batches padded with weight-0 rows to a fixed row count
    attention: Optional[str]   # attn_implementation asked of the backbone (None: its default)
    sdpa_adapter: bool         # a backbone transformers runs eager only (MPNet, DeBERTa-v2) gets SDPA from models.sdpa
    tf32: bool
    sparse_embeddings: bool
    fast_dropout: bool
    device_batches: bool       # token ids on the device, batches gathered there
    sync_steps: int            # steps between host reads of the loss (1: every step)
    predict_tokens: int        # tokens per inference batch (0: predict_batch_size rows)
    grad_checkpointing: bool

    def record(self, attention_used: str) -> dict:
        """The fold record's "runtime": these choices, with the attention the backbone ran."""
        out = asdict(self)
        out["attention"] = attention_used
        out["optimizer"] = "adamw_fused" + ("+sparse_adam" if self.sparse_embeddings else "")
        return out


def resolve(p: TransformerParams, device: torch.device, fitting: bool = True) -> Runtime:
    """params + device -> Runtime (see the table above). fitting=False: a loaded checkpoint, which
    predicts uncompiled."""
    cuda = device.type == "cuda"
    compiled = fitting and (AUTO_COMPILE.get(device.type, False) if p.compile == "auto" else bool(p.compile))
    return Runtime(
        device=device.type, compile=compiled,
        compile_mode=("default" if p.compile_mode == "auto" else p.compile_mode) if compiled else "",
        length_buckets=compiled if p.length_buckets == "auto" else bool(p.length_buckets),
        static_rows=compiled, attention=None if p.attention == "auto" else p.attention,
        sdpa_adapter=p.attention == "sdpa" or (p.attention == "auto" and cuda),
        tf32=p.tf32 and cuda, sparse_embeddings=p.sparse_embeddings and device.type == "cpu",
        fast_dropout=p.fast_dropout and device.type == "cpu", device_batches=cuda,
        sync_steps=SYNC_STEPS if cuda else 1,
        predict_tokens=(PREDICT_TOKENS if cuda else 0) if p.predict_tokens is None else p.predict_tokens,
        grad_checkpointing=p.grad_checkpointing)


def plain_cpu(p: TransformerParams, rt: Runtime) -> bool:
    """Whether this is the CPU path as it ran before these settings existed (no run setting set):
    its fold records stay as they were, without a "runtime" entry."""
    return rt.device == "cpu" and not set(quiet_set(p)) & set(p.RUNTIME)


# ----------------------------------------------------------------------------- device state


@contextlib.contextmanager
def device_state(rt: Runtime):
    """TF32 for float32 matrix products on CUDA inside the block (process-wide state, restored on
    exit), and room for the compiled layers' shapes while they run."""
    with contextlib.ExitStack() as stack:
        if rt.tf32:
            stack.enter_context(cuda_tf32())
        if rt.compile:
            stack.enter_context(_recompile_room())
        yield


@contextlib.contextmanager
def cuda_tf32():
    """torch's own switch: it sets the matmul precision of every backend consistently (setting
    cuBLAS's flags one by one mixes torch's legacy and new TF32 APIs, which recent torch refuses)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _recompile_room():
    import torch._dynamo

    config = torch._dynamo.config
    key = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch(**{key: max(getattr(config, key), RECOMPILE_LIMIT)})


def release_memory(device: torch.device) -> None:
    """Before a fold: what earlier folds left unreferenced goes back to the device (cycles
    collected, the caching allocator emptied) and the peak counter restarts, so a K-fold run's
    peak is one fold's and each fold's record holds its own."""
    if device.type != "cuda":
        return
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> Optional[float]:
    """The device memory allocated at most since release_memory, MiB (None off CUDA)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- model changes


def encoder_layers(backbone: nn.Module) -> Optional[nn.ModuleList]:
    """The backbone's list of encoder layers (num_hidden_layers modules of one class), or None
    (ALBERT shares its layers in groups)."""
    n = backbone.config.num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and len({type(m) for m in module}) == 1:
            return module
    return None


def compile_layers(backbone: nn.Module, mode: str) -> int:
    """torch.compile every encoder layer (the whole backbone where no layer list is found); returns
    how many modules were compiled. One layer's code serves every layer: torch caches compiled code
    on the layer class's code with guards on shapes and flags, not on the module object, so every
    layer, fold and seed of the process reuses it. Shapes are static (length buckets)."""
    layers = encoder_layers(backbone)
    targets = list(layers) if layers is not None else [backbone]
    kwargs = {"mode": mode} if COMPILE_BACKEND == "inductor" else {}
    for module in targets:
        module.compile(backend=COMPILE_BACKEND, dynamic=False, **kwargs)
    return len(targets)


def mark_step(rt: Runtime) -> None:
    """CUDA graphs (mode reduce-overhead): a new step begins, so the previous step's graph outputs
    may be overwritten."""
    if rt.compile and "reduce-overhead" in rt.compile_mode:
        torch.compiler.cudagraph_mark_step_begin()


def enable_checkpointing(backbone: nn.Module, name: str) -> None:
    """Activations of each layer recomputed in backward instead of kept (non-reentrant)."""
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise PipelineError(f"transformer params: grad_checkpointing is not supported by backbone {name!r} "
                            f"({type(backbone).__name__})")
    if hasattr(backbone.config, "use_cache"):
        backbone.config.use_cache = False   # an encoder caches nothing; transformers warns otherwise
    kwargs = {"use_reentrant": False}
    enable = getattr(backbone, "activation_checkpointing_enable", None)   # transformers >= 5.2x
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
