"""Small-data fine-tuning levers of the transformer trainer (TransformerParams; each off by default).

- reinit_layers N: the top N encoder layers start from fresh weights (the few-sample fine-tuning
  studies: the top layers' pre-training specialisation hurts more than it helps on small tasks).
- ema D: an exponential moving average of the trainable weights, decay D (warmed up as
  min(D, (1 + t) / (10 + t)) after t updates), which validation, early stopping, the kept weights
  and so every prediction use.
- swa_epochs N: the uniform average of the weights at the end of the last N epochs, offered as one
  more candidate to the best-epoch rule (kept where it validates better).
- adversarial fgm / awp from adv_start_epoch: a second forward/backward per micro-batch on
  perturbed inputs (FGM: the word-embedding output moved by adv_eps along its gradient, per row)
  or perturbed weights (AWP: every matrix moved by adv_lr times its gradient direction, scaled by
  its norm, within adv_eps of each weight, relative), whose gradient is added to the clean one.
- rdrop A: every micro-batch runs twice through dropout (one forward of 2B rows); loss = the mean
  of the two task losses + A x the task's consistency between the two outputs (Task.consistency).

Shapes: B rows of a micro-batch, T tokens, H hidden size.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from ..errors import PipelineError
from .runtime import encoder_layers

INIT_STD = 0.02   # BERT's initializer_range, where a config has none


# ----------------------------------------------------------------------------- re-initialisation


@torch.no_grad()
def reinit_top_layers(backbone: nn.Module, n: int, name: str) -> int:
    """Fresh weights for the top `n` encoder layers, drawn from torch's global RNG (seeded by the
    fit): Linear and Embedding weights N(0, initializer_range), biases 0, LayerNorm 1 and 0. Done
    here rather than by the backbone's _init_weights, which skips tensors marked as loaded.
    Returns the number of tensors re-drawn."""
    if n == 0:
        return 0
    layers = encoder_layers(backbone)
    if layers is None:
        raise PipelineError(f"transformer params: reinit_layers needs a list of encoder layers, and backbone "
                            f"{name!r} ({type(backbone).__name__}) shares its layers")
    std = getattr(backbone.config, "initializer_range", INIT_STD)
    count = 0
    for layer in list(layers)[len(layers) - n:]:
        for module in layer.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                count += 1
            elif isinstance(module, nn.LayerNorm) and module.weight is not None:
                module.weight.fill_(1.0)
                count += 1
            else:
                continue
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
                count += 1
    return count


# ----------------------------------------------------------------------------- weight averages


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class Ema:
    """A moving average of the trainable parameters, kept float32 on their device."""

    def __init__(self, module: nn.Module, decay: float):
        self.params = _trainable(module)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        """After an optimiser step: shadow += (1 - d) (param - shadow)."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @contextlib.contextmanager
    def applied(self):
        """The averaged weights in the module inside the block; the trained ones back on exit."""
        with _swapped(self.params, self.shadow):
            yield

    @torch.no_grad()
    def commit(self) -> None:
        """The averaged weights into the module for good (training is over)."""
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


class Swa:
    """The uniform average of the trainable parameters at the end of the last `epochs` epochs."""

    def __init__(self, module: nn.Module, epochs: int, total_epochs: int):
        self.params = _trainable(module)
        self.first = total_epochs - epochs + 1   # the first epoch of the window
        self.sum: Optional[list[torch.Tensor]] = None
        self.count = 0

    @torch.no_grad()
    def collect(self, epoch: int) -> None:
        if epoch < self.first:
            return
        if self.sum is None:
            self.sum = [p.detach().double() for p in self.params]   # float64: no drift over epochs
        else:
            torch._foreach_add_(self.sum, [p.detach().double() for p in self.params])
        self.count += 1

    @contextlib.contextmanager
    def applied(self):
        """The average in the module inside the block (nothing changes when no epoch was collected)."""
        if not self.count:
            yield False
            return
        mean = [(s / self.count).to(p.dtype) for s, p in zip(self.sum, self.params)]
        with _swapped(self.params, mean):
            yield True


@contextlib.contextmanager
def _swapped(params: list[nn.Parameter], values: list[torch.Tensor]):
    with torch.no_grad():
        backup = [p.detach().clone() for p in params]
        for p, v in zip(params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)


# ----------------------------------------------------------------------------- adversarial training


class Fgm:
    """Fast gradient method on the word-embedding output (B, T, H): record() before the clean
    forward keeps that output's gradient; perturbed() around the second forward adds
    eps * g / ||g|| per row (the norm over that row's T x H values)."""

    def __init__(self, module: nn.Module, eps: float):
        self.embeddings = module.backbone.get_input_embeddings()
        self.eps = eps
        self.output: Optional[torch.Tensor] = None

    @contextlib.contextmanager
    def record(self):
        def keep(_module, _inputs, output):
            if output.requires_grad:
                output.retain_grad()
            self.output = output
        handle = self.embeddings.register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def perturbed(self, rows: int):
        """Around the adversarial forward of `rows` rows. The clean pass may have run them k times
        (R-Drop: k = 2): their gradients are summed. Yields False (and changes nothing) when the
        clean pass left no gradient to follow."""
        grad = None if self.output is None else self.output.grad
        self.output = None
        if grad is None:
            yield False
            return
        g = grad.detach().float()
        g = g.reshape(-1, rows, *g.shape[1:]).sum(0)
        norm = g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (g.dim() - 1)))
        delta = (self.eps * g / norm).to(grad.dtype)
        handle = self.embeddings.register_forward_hook(lambda _m, _i, output: output + delta)
        try:
            yield True
        finally:
            handle.remove()


class Awp:
    """Adversarial weight perturbation of every trainable matrix but the word embeddings (whose
    gradient is row-sparse on CPU): w += adv_lr * ||w|| * g / ||g||, clipped to
    [w0 - eps |w0|, w0 + eps |w0|], undone after the adversarial backward."""

    def __init__(self, module: nn.Module, eps: float, lr: float):
        skip = module.backbone.get_input_embeddings().weight
        self.params = [p for p in _trainable(module) if p.ndim >= 2 and p is not skip]
        self.eps, self.lr = eps, lr

    def record(self) -> contextlib.AbstractContextManager:
        """Around the clean forward: nothing to record (the weights' gradients are what AWP follows)."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def perturbed(self, rows: int):
        """Around the adversarial forward (`rows`: unused; the weights are the same for every row).
        A matrix whose gradient is zero or not finite stays where it is; that is decided on the
        device (a Python test of each norm would wait for the GPU once per matrix per step), so it
        yields True whenever some matrix has a gradient, even one that moved nothing (the
        adversarial pass then adds the clean loss's gradient again)."""
        backup: list[tuple[nn.Parameter, torch.Tensor]] = []
        with torch.no_grad():
            for p in self.params:
                if p.grad is None or p.grad.is_sparse:
                    continue
                g_norm = p.grad.norm()
                w0 = p.detach().clone()
                backup.append((p, w0))
                step = self.lr * p.detach().norm() * p.grad / g_norm
                p.add_(step.masked_fill_(~(torch.isfinite(g_norm) & (g_norm > 0)), 0.0))
                bound = self.eps * w0.abs()
                p.copy_(torch.minimum(torch.maximum(p, w0 - bound), w0 + bound))
        try:
            yield bool(backup)
        finally:
            with torch.no_grad():
                for p, w0 in backup:
                    p.copy_(w0)


ADV_EPS = {"fgm": 0.2, "awp": 0.01}   # adv_eps where the params leave it null (see TransformerParams)


def adversary(module: nn.Module, kind: str, eps: Optional[float], lr: float):
    """The adversary of TransformerParams.adversarial, or None."""
    if kind == "none":
        return None
    eps = ADV_EPS[kind] if eps is None else eps
    return Fgm(module, eps) if kind == "fgm" else Awp(module, eps, lr)


# ----------------------------------------------------------------------------- R-Drop


def doubled(batch: dict) -> dict:
    """Every input tensor (B, ...) stacked on itself -> (2B, ...): one forward, two dropout draws."""
    return {k: (None if v is None else torch.cat([v, v])) for k, v in batch.items()}
