"""Shared vocabularies that several layers check names against: identifiers that become parts of
paths (experiments, models, pretrain outputs), the folders of the layout a model may not be named
after, the ensemble method names, and the `pretrained:<name>` backbone references."""
from __future__ import annotations

import re
from typing import Any, Optional

from .errors import PipelineError, excerpt

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
NAME_RULE = "1-64 characters: letters, digits, '_' and '-', starting with a letter or digit"
# Folders of models/<exp>/ that are not models: a model of that name would share them.
RESERVED_MODEL_NAMES = ("ensembles", "rounds")
METHODS = ("stack", "blend", "vote", "best", "select", "rank")

PRETRAINED = "pretrained:"   # a backbone named pretrained:<name> is the pretrain stage's output
BACKBONE_KEYS = ("backbone", "embed")  # params naming a backbone (transformer, embed_lr; pair_lgbm)


def check_name(key: str, value: object) -> str:
    """`value` if it is a valid experiment or model name, else one line naming `key`."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise PipelineError(f"config: {key}={excerpt(value)} is not a valid name ({NAME_RULE})")
    return value


def check_experiment_name(key: str, value: object) -> str:
    """An experiment name, which may not end in _<method>: submissions/<exp>_<method>.csv of
    experiment <exp> would be the submission of experiment <exp>_<method>."""
    name = check_name(key, value)
    for method in METHODS:
        if name.endswith(f"_{method}"):
            raise PipelineError(f"config: {key}={name!r} ends in '_{method}', the name of experiment "
                                f"{name[:-len(method) - 1]!r}'s {method} submission (submissions/<exp>_<method>.csv); "
                                "choose another name")
    return name


def check_model_name(key: str, value: object) -> str:
    name = check_name(key, value)
    if name.lower() in RESERVED_MODEL_NAMES:
        raise PipelineError(f"config: {key}={name!r} is reserved for the layout of models/<exp>/ "
                            f"(reserved: {', '.join(RESERVED_MODEL_NAMES)})")
    return name


def pretrained_name(backbone: Any) -> Optional[str]:
    """<name> of a backbone `pretrained:<name>`, else None."""
    return backbone[len(PRETRAINED):] if isinstance(backbone, str) and backbone.startswith(PRETRAINED) else None
