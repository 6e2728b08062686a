"""YAML for config files and `key=value` overrides, with the checks yaml.safe_load lacks.

safe_load runs no code, but it still accepts three things a config should never hold:
- a key repeated in one mapping: the last one silently wins, so an edit to the first one is ignored;
- aliases that expand to a huge tree ("billion laughs"): PyYAML shares the aliased objects, so the
  load itself is cheap, but every later walk (json hashing, dataclasses.asdict, yaml.dump of the
  resolved config) expands them to GBs; merge keys (`<<: [*a, *a]`) blow up inside the load itself;
- a value that contains itself (`a: &a [*a]`), which makes every later walk loop or crash.
All three are refused on the composed node graph, before anything is constructed, with one line
naming the source and the line. The result is a plain tree: an alias becomes a copy, so an
override of one model's params never changes another model that shared them through an anchor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import PipelineError, excerpt
from .fileio import read_bytes

MAX_NODES = 100_000   # values in the tree with every alias expanded; a large config has a few hundred
MAX_DEPTH = 100       # nesting: PyYAML's composer recurses and its scanner is quadratic in the flow
                      # depth, so a file of 50k `[` would take minutes to fail
MERGE_TAG = "tag:yaml.org,2002:merge"


class _TooDeep(yaml.MarkedYAMLError):
    """Raised by the composer past MAX_DEPTH; a YAMLError, so it is reported like a syntax error."""


class _Loader(yaml.SafeLoader):
    """SafeLoader whose scanner and composer stop at MAX_DEPTH levels of nesting."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Optional[Node], index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(problem=f"nested more than {MAX_DEPTH} levels deep",
                               problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def fetch_flow_collection_start(self, token_class: type) -> None:
        super().fetch_flow_collection_start(token_class)
        if self.flow_level > MAX_DEPTH:
            raise _TooDeep(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=self.get_mark())


def read_config_text(path: Path) -> str:
    """The text of a config file; a missing file, an unreadable one or one that is not UTF-8 is
    one PipelineError naming it (and the first bad byte). A leading BOM is dropped."""
    data = read_bytes(Path(path), "config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start:e.start + 4]
        raise PipelineError(f"config file {path} is not UTF-8 text: byte {e.start} "
                            f"({bad!r}) cannot be decoded; save it as UTF-8") from None
    return text.removeprefix("\ufeff")


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document (None when empty) into plain dicts, lists and scalars.

    `source` starts every error line, e.g. "config file configs/a.yaml" gives
    "config file configs/a.yaml line 7: key 'lr' repeated (first on line 3)". Syntax errors,
    repeated keys, recursive or over-large aliases and too deep nesting raise PipelineError."""
    try:
        return _load(text, source)
    except yaml.YAMLError as e:
        raise PipelineError(_syntax_line(e, text, source)) from None


def load_yaml_value(text: str, source: str = "override") -> Any:
    """A `key=value` override's value: YAML when it parses ("3" -> 3, "[1, 2]" -> a list), else
    the text itself (so `data.sep=|` stays a string); "" stays "". Alias bombs, recursive aliases
    and repeated keys still raise PipelineError, starting with `source` (e.g. "override
    models.lr.params")."""
    if text == "":
        return ""
    try:
        return _load(text, source)
    except yaml.YAMLError:
        return text


def _load(text: str, source: str) -> Any:
    """Compose, check the node graph, construct, unshare. Raises yaml.YAMLError on syntax errors."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, source)
        return _unshared(loader.construct_document(node))
    finally:
        loader.dispose()


def _check_graph(root: Node, source: str) -> None:
    """Refuse repeated keys, recursive aliases and trees of more than MAX_NODES values.

    Iterative post-order walk over the composed graph, each node visited once; `size` holds the
    number of values under a node with aliases expanded (capped at MAX_NODES + 1), so the cost
    is linear in the document, not in what it expands to."""
    size: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    active: set[int] = set()  # nodes whose children are being walked: meeting one again is a cycle
    while stack:
        node, children_done = stack.pop()
        if children_done:
            active.discard(id(node))
            size[id(node)] = _size(node, size, source)
            continue
        if id(node) in size:
            continue
        if id(node) in active:
            raise PipelineError(f"{source} line {_line(node)}: an alias refers to a value that contains "
                                "it (a recursive structure); configs must be trees")
        if isinstance(node, MappingNode):
            _check_keys(node, source)
        active.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(_children(node)) if id(c) not in size)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _size(node: Node, size: dict[int, int], source: str) -> int:
    total = 1 + sum(size[id(c)] for c in _children(node))
    if total > MAX_NODES:
        raise PipelineError(f"{source} line {_line(node)}: aliases expand this value to more than "
                            f"{MAX_NODES} values; refused (an alias bomb?)")
    return total


def _check_keys(node: MappingNode, source: str) -> None:
    """Scalar keys as written (tag + text, so `lr` and "lr" are one key); merge keys `<<` exempt."""
    first: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, ScalarNode) or key.tag == MERGE_TAG:
            continue
        ident = (key.tag, key.value)
        if ident in first:
            raise PipelineError(f"{source} line {_line(key)}: key {excerpt(key.value)} repeated "
                                f"(first on line {first[ident]})")
        first[ident] = _line(key)


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _unshared(value: Any) -> Any:
    """A copy in which no list or dict appears twice (aliases become copies); bounded by MAX_NODES."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def _syntax_line(e: yaml.YAMLError, text: str, source: str) -> str:
    """One line: where (line number) and what PyYAML found."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        return f"{source} is not valid YAML{where}: {_flat(what)}"
    if isinstance(e, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(e.position, 0)) + 1
        code = ord(e.character) if isinstance(e.character, str) else e.character
        return f"{source} is not valid YAML (line {line}): control character U+{code:04X} is not allowed"
    return f"{source} is not valid YAML: {_flat(str(e))}"


def _flat(s: str, limit: int = 200) -> str:
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
