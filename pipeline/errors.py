"""The one exception type that stage scripts turn into a single-line message and exit 2."""
from __future__ import annotations

from typing import Any

EXCERPT_CHARS = 80


class PipelineError(Exception):
    """Bad input or a broken contract between stages; the message is shown to the user as is."""


class InvalidValue(PipelineError):
    """A config value of the right type but out of range, raised from a config or params class's
    __post_init__ with the key relative to that class; config.build names the full dotted key."""

    _UNSET = object()

    def __init__(self, key: str, problem: str, value: Any = _UNSET):
        self.key, self.problem, self.value = key, problem, value
        super().__init__(self.where(""))

    def where(self, prefix: str) -> str:
        """`prefix.key=value problem` (or without `=value` when none was given)."""
        key = f"{prefix}.{self.key}" if prefix else self.key
        return f"{key} {self.problem}" if self.value is self._UNSET else f"{key}={excerpt(self.value)} {self.problem}"


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """repr() of a user-given value, cut to about `limit` characters, for one-line errors.

    A huge value (a YAML alias bomb, a whole file pasted into a key) must not become a huge error
    line: the repr is built piecewise for containers, so it never materialises past the limit."""
    out: list[str] = []
    _walk(value, out, [0], limit)
    text = "".join(out)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _walk(value: Any, out: list[str], used: list[int], limit: int) -> None:
    def put(s: str) -> bool:
        out.append(s)
        used[0] += len(s)
        return used[0] <= limit

    if isinstance(value, (list, tuple)):
        put("[")
        for i, v in enumerate(value):
            if (i and not put(", ")) or used[0] > limit:
                return
            _walk(v, out, used, limit)
        put("]")
    elif isinstance(value, dict):
        put("{")
        for i, (k, v) in enumerate(value.items()):
            if (i and not put(", ")) or not put(f"{str(k)[:limit]!r}: ") or used[0] > limit:
                return
            _walk(v, out, used, limit)
        put("}")
    else:
        s = value[: limit + 1] if isinstance(value, str) else value
        put(repr(s)[: limit + 1])


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), cut to
    `limit` characters: library tracebacks become one line of a PipelineError."""
    lines = str(e).strip().splitlines()
    return (lines[0].rstrip(" :") if lines else type(e).__name__)[:limit]
