"""The README and docs/ stay true.

Every fenced block is run: `bash` blocks command by command (`bash run_all.sh` and
`python -m pipeline.<stage>` in-process through cli.run, a few shell tools as processes), `python`
blocks executed, `yaml` blocks loaded as a config (over configs/default.yaml where they are a part
of one). They run in order, page after page, in one sandbox project: the shipped configs with their
models made tiny (a tiny random BERT for every backbone, one epoch, ten trees), small synthetic
demos, and a small MRPC-shaped stand-in at ../shared/data/mrpc. A block that cannot run here says
why in a comment right above it, `<!-- not run: gpu|cluster|server|hours -->`; a block that needs
an earlier run names it, `<!-- run first: <command> -->`. Commands in text blocks and inline code
name modules and options that exist; dotted config keys name keys that exist. The config reference
is the code's, and the code layout page's table is tests/test_layout.py's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import random
import re
import shlex
import subprocess
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import yaml

from conftest import ROOT, stage_main, tiny_bert
from pipeline import cli
from pipeline.config import ExperimentConfig, load_config
from pipeline.reference import PAGE, config_reference
from pipeline.synthetic import make_pairs, write_demo, write_multilabel_demo, write_regression_demo
from test_layout import LAYERS

# pages in the order their blocks run (a later page may use what an earlier one made)
PAGES = ["README.md", "docs/getting-started.md", "docs/stages.md", "docs/input-files.md", "docs/tasks.md",
         "docs/models.md", "docs/gpu.md", "docs/ensembles.md", "docs/artifacts.md", "docs/serving.md",
         "docs/cluster.md", "docs/benchmarks.md", "docs/troubleshooting.md", "docs/code-layout.md", PAGE]
NOT_RUN = ("gpu", "cluster", "server", "hours")
RUN = ("bash", "python", "yaml")
TOOLS = ("head", "cat", "ls")          # shell tools a block may use to show a result


def _section(tp) -> Optional[type]:
    """The dataclass of a config section (pretrain is Optional), None for a plain key or a list."""
    if typing.get_origin(tp) is list:
        return None
    return next((a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)), None)


# config sections ({name: dataclass}) whose keys the pages write dotted: data.label, pseudo.retrain
SECTIONS = {name: _section(tp) for name, tp in typing.get_type_hints(ExperimentConfig).items() if _section(tp)}


@dataclass
class Block:
    page: str
    line: int
    lang: str
    text: str
    mark: Optional[str]      # the comment above the fence: "not run: gpu", "run first: bash run_all.sh ..."

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced blocks of a page, each with the `<!-- ... -->` comment right above its fence."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.fullmatch(r"```(\w*)", lines[i].strip())
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        above = re.fullmatch(r"<!--\s*(.*?)\s*-->", lines[i - 1].strip()) if i else None
        out.append(Block(page, i + 1, m.group(1), "\n".join(lines[i + 1:end]), above.group(1) if above else None))
        i = end + 1
    return out


def commands(text: str) -> list[list[str]]:
    """The commands of a bash block: lines joined over `\\`, comments dropped, split at `&&`."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words:
                out.append(words)
    return out


def runnable(words: list[str]) -> bool:
    stage = words[:2] == ["python", "-m"] and words[2].startswith("pipeline.")
    return (words[:3] == ["pip", "install", "-r"] or words[:3] == ["python", "-m", "pytest"]
            or words[:2] == ["bash", "run_all.sh"] or stage or words[0] in TOOLS)


# ----------------------------------------------------------------------------- static checks


def test_every_page_is_run_and_linked_from_the_readme():
    assert sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")) == sorted(PAGES[1:])
    readme = (ROOT / "README.md").read_text()
    assert [p for p in PAGES[1:] if f"({p})" not in readme] == []


def test_the_readme_is_short_and_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "```bash\npip install -r requirements.txt && bash run_all.sh\n```" in readme
    assert "```bash\npip install -r requirements.txt && python -m pytest -q\n```" in readme
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("pip install -r requirements.txt && python -m pytest -q")


def test_what_counts_as_runnable():
    """The checker itself: commands split at && and over continued lines; shell syntax it cannot
    run in-process (arrays, loops, background jobs, curl) needs a mark."""
    assert commands("pip install -r requirements.txt && bash run_all.sh  # the demo\npython -m pipeline.train \\\n"
                    "  configs/x.yaml --force") == [["pip", "install", "-r", "requirements.txt"], ["bash", "run_all.sh"],
                                                   ["python", "-m", "pipeline.train", "configs/x.yaml", "--force"]]
    assert all(map(runnable, commands("python -m pipeline.init a b\nhead -3 submissions/x.csv\npython -m pytest -q")))
    for line in ("o=(experiment=x)", "for s in a b; do python -m pipeline.$s; done", "curl -s localhost:8000/ready",
                 "python -m bench.mrpc_ensemble", "ray start --head"):
        assert not all(map(runnable, commands(line))), line

@pytest.mark.parametrize("page", PAGES)
def test_every_block_runs_here_or_says_why_not(page):
    for b in blocks(page):
        if b.mark and b.mark.startswith("not run:"):
            assert b.mark.split(":", 1)[1].split()[0] in NOT_RUN, f"{b.where}: {b.mark}"
            continue
        if b.lang == "bash":
            bad = [w for w in commands(b.text) if not runnable(w)]
            assert bad == [], f"{b.where}: cannot run {bad[0]}: mark the block <!-- not run: {'|'.join(NOT_RUN)} -->"
        else:
            assert b.lang in RUN + ("text", ""), f"{b.where}: a ```{b.lang} block"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES)
def test_links_lead_to_pages_and_headings_that_exist(page):
    here = (ROOT / page).parent
    for target, anchor in re.findall(r"\]\(([\w./-]+\.md)(?:#([\w-]+))?\)", (ROOT / page).read_text(encoding="utf-8")):
        assert (here / target).is_file(), f"{page}: link to {target}"
        assert not anchor or anchor in anchors(here / target), f"{page}: link to {target}#{anchor}"


def inline_commands(page: str) -> list[str]:
    """Commands shown, not run: in inline code and in text blocks."""
    text = (ROOT / page).read_text(encoding="utf-8")
    found = re.findall(r"`(python -m [^`]+)`", text)
    for b in blocks(page):
        if b.lang in ("text", ""):
            found += [line.strip() for line in b.text.splitlines() if line.strip().startswith("python -m ")]
    return found


@pytest.mark.parametrize("page", PAGES)
def test_shown_commands_name_modules_and_options_that_exist(page):
    for command in inline_commands(page):
        words = command.split()
        module = words[2]
        if "<" in module:
            continue   # a placeholder: python -m pipeline.<stage>
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"{page}: `{command}`: no module {module}"
        source = Path(spec.origin).read_text() + (ROOT / "pipeline" / "cli.py").read_text()
        for option in re.findall(r"(--[a-z][a-z-]*)", command):
            assert f'"{option}"' in source, f"{page}: `{command}`: {module} has no option {option}"


@pytest.mark.parametrize("page", PAGES)
def test_dotted_config_keys_exist(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    for section, key in re.findall(rf"`({'|'.join(SECTIONS)})\.([a-z_]+)", text):
        if key in ("csv", "json", "jsonl", "yaml", "npy", "png", "md"):
            continue   # a file: folds.csv
        fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
        assert key in fields, f"{page}: `{section}.{key}` is no config key"


def test_the_config_reference_is_the_codes():
    page = (ROOT / PAGE).read_text(encoding="utf-8")
    assert page == config_reference(), \
        f"{PAGE} disagrees with the code: python -m pipeline.init --config-reference > {PAGE}"


def test_every_config_key_says_what_it_means():
    rows = [line for line in config_reference().splitlines() if line.startswith("| `")]
    assert len(rows) > 100
    # | key | type | default | meaning |
    assert [r.split("|")[1].strip() for r in rows if r.split("|")[4].strip() == ""] == []


def test_the_code_layout_page_is_the_layout_tests():
    rows = re.findall(r"^\| (\d) [^|]+ \| (.+) \|$", (ROOT / "docs" / "code-layout.md").read_text(), flags=re.M)
    filler = {"and", "the", "stage", "scripts", "models"}   # "cli and the stage scripts: ...", "models/: ..."
    shown = {int(n): set(re.findall(r"[a-z_]+", re.sub(r"\([^)]*\)", "", mods))) - filler for n, mods in rows}
    assert shown == {n: {m.split(".")[-1] for m in mods} for n, mods in LAYERS.items()}


# ----------------------------------------------------------------------------- the sandbox


def mrpc_like(folder: Path, n_train: int, n_test: int) -> None:
    """Files shaped like GLUE MRPC's: a UTF-8 BOM, tabs, bare quotes, ids per sentence, a labelled test file."""
    rng = random.Random(5)
    folder.mkdir(parents=True)
    for name, n in (("train.tsv", n_train), ("msr_paraphrase_test.txt", n_test)):
        rows = [f"{label}\t{1000 + 2 * i}\t{1001 + 2 * i}\t{a} \" quoted \"\t{b}"
                for i, (a, b, label) in enumerate(make_pairs(n, rng))]
        text = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(rows) + "\n"
        (folder / name).write_text(text, encoding="utf-8")


def tinify(path: Path, bert: str) -> None:
    """A config made tiny: every backbone the tiny BERT, one epoch, ten trees on one thread, 2 folds."""
    tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    tree.setdefault("folds", {})["n_splits"] = 2
    for m in tree.get("models") or []:
        params = m.get("params") or {}
        if m["kind"] in ("transformer", "embed_lr") and not str(params.get("backbone", "")).startswith("pretrained:"):
            params["backbone"] = bert
        if m["kind"] == "transformer":
            params.update(epochs=1, max_length=32, batch_size=16)
        if params.get("embed"):
            params["embed"] = bert
        if m["kind"] in ("pair_lgbm", "tfidf_lgbm"):
            params.update(n_estimators=10, n_jobs=1)
        m["params"] = params
    if tree.get("pretrain") is not None:
        tree["pretrain"].update(backbone=bert, max_steps=2)
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")


@dataclass
class Sandbox:
    root: Path
    bert: str

    def run(self, words: list[str], where: str) -> None:
        for path in sorted((self.root / "configs").glob("*.yaml")):
            tinify(path, self.bert)
        if words[:3] == ["pip", "install", "-r"]:
            assert (ROOT / words[3]).is_file(), where
        elif words[:3] == ["python", "-m", "pytest"]:
            return   # this suite itself: CI runs it (.ci/run)
        elif words[:2] == ["bash", "run_all.sh"]:
            args = words[2:] or ["configs/default.yaml"]
            for stage in run_all_stages():
                self.stage(stage, args, where)
        elif words[:2] == ["python", "-m"]:
            self.stage(words[2].removeprefix("pipeline."), words[3:], where)
        else:
            done = subprocess.run(words, cwd=self.root, capture_output=True, text=True)
            assert done.returncode == 0, f"{where}: {' '.join(words)}: {done.stderr}"

    def stage(self, name: str, args: list[str], where: str) -> None:
        try:
            cli.run(stage_main(name), args)
        except SystemExit as e:
            assert not e.code, f"{where}: python -m pipeline.{name} {' '.join(args)} exited {e.code}"


def run_all_stages() -> list[str]:
    """The stages run_all.sh runs, in its order, read from the script itself."""
    return re.findall(r"^stage (\w+) \"\$@\"", (ROOT / "run_all.sh").read_text(), flags=re.M)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Sandbox:
    base = tmp_path_factory.mktemp("docs")
    root = base / "project"
    (root / "configs").mkdir(parents=True)
    for path in (ROOT / "configs").glob("*.yaml"):
        (root / "configs" / path.name).write_text(path.read_text())
    write_demo(root / "data" / "demo", n_train=60, n_test=20)
    write_regression_demo(root / "data" / "demo_regression", n_train=60, n_test=20)
    write_multilabel_demo(root / "data" / "demo_multilabel", n_train=60, n_test=20)
    mrpc_like(base / "shared" / "data" / "mrpc", 60, 20)
    words = set()
    for path in list(root.rglob("*.csv")) + list((base / "shared").rglob("*.t*")):
        words |= {w for w in re.findall(r"\w+", path.read_text(encoding="utf-8").lower())}
    bert = str(tiny_bert(base / "bert", sorted(words) + list(".,!?$%\"'-")))
    return Sandbox(root, bert)


@pytest.fixture
def inside(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox.root)
    monkeypatch.delenv("MRPC_DIR", raising=False)
    return sandbox


@pytest.mark.parametrize("page", PAGES)
def test_every_block_of_the_page_runs(inside, page):
    for b in blocks(page):
        if (b.mark or "").startswith("not run:") or b.lang not in RUN:
            continue
        if (b.mark or "").startswith("run first:"):
            for words in commands(b.mark.split(":", 1)[1]):
                inside.run(words, b.where)
        if b.lang == "bash":
            for words in commands(b.text):
                inside.run(words, b.where)
        elif b.lang == "python":
            exec(compile(b.text, b.where, "exec"), {"__name__": "docs"})
        else:
            load_yaml_block(b, inside.root)


def load_yaml_block(b: Block, root: Path) -> None:
    """A yaml block is a config, or part of one: laid over configs/default.yaml, it must load."""
    tree = yaml.safe_load(b.text)
    if "data" not in tree:
        tree = {**yaml.safe_load((ROOT / "configs" / "default.yaml").read_text()), **tree}
    path = root / "block.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    with contextlib.chdir(root):
        load_config(path)
