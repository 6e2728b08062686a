"""Kind name -> (params dataclass, builder, what scheduling needs to know). Builders import their
heavy libraries lazily, so validating a config never imports torch.

What differs between kinds beyond the model class (expected seconds per fold, the accelerator a
job takes) is a field of its Kind here, so nothing outside the registry branches on a kind's name."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import PipelineError
from . import params as P


ACCELERATORS = ("cpu", "gpu")


@dataclass(frozen=True)
class Kind:
    params: type
    builder: str  # "module:Class", imported when a model is built
    # the version of what the kind's save() writes; bumped when a file is added or changed, so
    # folds saved the old way get another fingerprint and retrain (1: the fingerprint leaves it out)
    save_format: int = 1
    # a rough fit time of one fold, seconds: the scheduler starts the longest jobs first
    expected_seconds: float = 60.0
    # "gpu": the kind's jobs take a GPU where the machine or cluster has one; "cpu": they never do
    accelerator: Literal["cpu", "gpu"] = "cpu"

    def __post_init__(self) -> None:
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"Kind {self.builder}: accelerator must be one of {ACCELERATORS}, got {self.accelerator!r}")
        if not self.expected_seconds > 0:
            raise ValueError(f"Kind {self.builder}: expected_seconds must be positive, got {self.expected_seconds!r}")

    def model_class(self) -> type:
        module, cls = self.builder.split(":")
        return getattr(importlib.import_module(module, __package__), cls)

    def build(self, params: Any, n_classes: int, view: str) -> Any:
        """A fresh, unfitted model: Class(params, n_classes, view)."""
        return self.model_class()(params, n_classes, view)

    def load(self, directory: Path, params: Any, n_classes: int, view: str, task: Any) -> Any:
        """A fitted model rebuilt from the files its save() wrote in `directory` (formats that run
        no code): Class.load(directory, params, n_classes, view, task)."""
        return self.model_class().load(directory, params, n_classes, view, task)


KINDS: dict[str, Kind] = {
    # save_format 2: predictor.json (and pair_lgbm's tfidf.json), which serving loads
    "tfidf_lr": Kind(P.TfidfLRParams, ".classical:TfidfLR", save_format=2, expected_seconds=3.0),
    "tfidf_lgbm": Kind(P.TfidfLGBMParams, ".classical:TfidfLGBM", save_format=2, expected_seconds=30.0),
    "pair_lgbm": Kind(P.PairLGBMParams, ".classical:PairLGBM", save_format=2, expected_seconds=10.0),
    "embed_lr": Kind(P.EmbedLRParams, ".embed:EmbedLR", save_format=2, expected_seconds=5.0),
    "transformer": Kind(P.TransformerParams, ".transformer:TransformerModel", expected_seconds=600.0,
                        accelerator="gpu"),
}


def kind(name: str, where: str = "kind") -> Kind:
    if name not in KINDS:
        raise PipelineError(f"config: {where}={name!r} is not a model kind (known: {', '.join(sorted(KINDS))})")
    return KINDS[name]


def params_class(name: str, where: str = "kind") -> type:
    return kind(name, where).params
