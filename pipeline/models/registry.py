"""Kind name -> (params dataclass, builder). Builders import their heavy libraries lazily, so
validating a config never imports torch."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..errors import PipelineError
from . import params as P


@dataclass(frozen=True)
class Kind:
    params: type
    builder: str  # "module:Class", imported when a model is built

    def build(self, params: Any, n_classes: int, view: str) -> Any:
        """A fresh, unfitted model: Class(params, n_classes, view)."""
        module, cls = self.builder.split(":")
        return getattr(importlib.import_module(module, __package__), cls)(params, n_classes, view)


KINDS: dict[str, Kind] = {
    "tfidf_lr": Kind(P.TfidfLRParams, ".classical:TfidfLR"),
    "tfidf_lgbm": Kind(P.TfidfLGBMParams, ".classical:TfidfLGBM"),
    "pair_lgbm": Kind(P.PairLGBMParams, ".classical:PairLGBM"),
    "embed_lr": Kind(P.EmbedLRParams, ".embed:EmbedLR"),
    "transformer": Kind(P.TransformerParams, ".transformer:TransformerModel"),
}


def kind(name: str, where: str = "kind") -> Kind:
    if name not in KINDS:
        raise PipelineError(f"config: {where}={name!r} is not a model kind (known: {', '.join(sorted(KINDS))})")
    return KINDS[name]


def params_class(name: str, where: str = "kind") -> type:
    return kind(name, where).params
