"""python -m pipeline.init: a first config from the competition's files, on every demo, on files
without a header row, compressed, parquet and JSON lines, with a sample submission, on MRPC where
it is present, and on files it must refuse; then the newcomer's path, init -> run_all -> submission."""
from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, WORDS, Exp, stage_main, tiny_bert
from pipeline import cli
from pipeline.config import load_config
from pipeline.synthetic import write_demo

MRPC = Path(os.environ.get("MRPC_DIR", ROOT.parent / "shared" / "data" / "mrpc"))
STAGES = ["preprocess", "folds", "pretrain", "train", "pseudo_label", "ensemble", "report"]


@pytest.fixture
def run_init(tmp_path, monkeypatch, capsys):
    """init run in-process from tmp_path (its configs/ folder), as `python -m pipeline.init` runs:
    returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        try:
            cli.run(stage_main("init"), [str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def written(tmp_path: Path, name: str) -> dict:
    return yaml.safe_load((tmp_path / "configs" / f"{name}.yaml").read_text())


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def texts(n: int, seed: int, words: int = 8) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + f" {i}" for i in range(n)]


# ----------------------------------------------------------------------------- the demos


@pytest.mark.parametrize("demo, expect", [
    ("demo", {"task": "classification", "metric": "accuracy", "text_a": "text_a", "text_b": "text_b",
              "label": "label"}),
    ("demo_regression", {"task": "regression", "metric": "rmse", "text_a": "sentence1", "text_b": "sentence2",
                         "label": "score"}),
    ("demo_multilabel", {"task": "multilabel", "metric": "roc_auc", "text_a": "text",
                         "label": ["government", "business", "negative"]}),
])
def test_every_demo_gets_the_mapping_its_shipped_config_has(run_init, tmp_path, demo, expect):
    folder = ROOT / "data" / demo
    code, out, err = run_init(folder / "train.csv", folder / "test.csv", "--name", "mine")
    assert code == 0, err
    cfg = written(tmp_path, "mine")
    assert cfg["task"] == expect["task"] and cfg["metric"] == expect["metric"]
    assert {k: cfg["data"].get(k) for k in ("text_a", "text_b", "label")} == \
        {"text_a": expect["text_a"], "text_b": expect.get("text_b"), "label": expect["label"]}
    assert cfg["data"]["id"] == "id" and cfg["folds"]["n_splits"] == 5
    assert Path(cfg["data"]["dir"]) == folder
    loaded = load_config(tmp_path / "configs" / "mine.yaml")
    kinds = [m.kind for m in loaded.models]
    assert "tfidf_lr" in kinds and ("pair_lgbm" in kinds) == ("text_b" in expect)
    assert out.splitlines()[-1] == "wrote configs/mine.yaml; run it with:  bash run_all.sh configs/mine.yaml"
    for topic in ("files:", "id:", "text:", "label:", "task:", "metric:", "folds:", "models:"):
        assert any(line.startswith(topic) for line in out.splitlines()), (topic, out)


def test_the_name_comes_from_the_folder_and_is_never_taken_twice(run_init, tmp_path):
    folder = ROOT / "data" / "demo_regression"
    assert run_init(folder / "train.csv", folder / "test.csv")[0] == 0
    assert written(tmp_path, "demo_regression")["experiment"] == "demo_regression"
    before = (tmp_path / "configs" / "demo_regression.yaml").read_bytes()
    code, _, err = run_init(folder / "train.csv", folder / "test.csv")
    assert code == 2 and "configs/demo_regression.yaml exists; init never overwrites a file" in one_line(err)
    assert (tmp_path / "configs" / "demo_regression.yaml").read_bytes() == before
    # another name, but the experiment of an existing config: their outputs would mix
    code, _, err = run_init(folder / "train.csv", folder / "test.csv", "--out", "configs/other.yaml")
    assert code == 2 and "experiment 'demo_regression' is configs/demo_regression.yaml's already" in one_line(err)


# ----------------------------------------------------------------------------- formats


def single_texts(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    return pd.DataFrame({"review": texts(n, seed), "stars": [str(rng.choice([1, 2, 3])) for _ in range(n)]})


def test_headerless_files_get_positions(run_init, tmp_path):
    train, test = single_texts(60, 0), single_texts(20, 1)
    train[["review", "stars"]].to_csv(tmp_path / "train.tsv", sep="\t", header=False, index=False)
    test[["review"]].to_csv(tmp_path / "test.tsv", sep="\t", header=False, index=False)
    code, out, err = run_init(tmp_path / "train.tsv", tmp_path / "test.tsv", "--name", "nohead")
    assert code == 0, err
    data = written(tmp_path, "nohead")["data"]
    assert data["header"] is False and data["label"] == 1 and data["text_a"] == 0 and data["id"] is None
    assert "header row: no" in out and "integer classes: if they are ordered grades" in out
    assert load_config(tmp_path / "configs" / "nohead.yaml").data.text_a == 0
    # the label first in train and missing in test: column 0 is another column in each file
    train[["stars", "review"]].to_csv(tmp_path / "shifted.tsv", sep="\t", header=False, index=False)
    code, _, err = run_init(tmp_path / "shifted.tsv", tmp_path / "test.tsv", "--name", "shifted")
    assert code == 2 and "column 0 holds no text in" in one_line(err) and "train file's column order" in err


def test_headerless_test_against_a_train_file_with_a_header_is_refused(run_init, tmp_path):
    train, test = single_texts(60, 0), single_texts(20, 1)
    train.to_csv(tmp_path / "train.csv", index=False)
    test[["review"]].to_csv(tmp_path / "test.csv", header=False, index=False)
    code, _, err = run_init(tmp_path / "train.csv", tmp_path / "test.csv")
    assert code == 2 and "give both files a header row, or neither" in one_line(err)


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet", "jsonl"])
def test_compressed_parquet_and_json_lines(run_init, tmp_path, fmt):
    train = single_texts(60, 0).assign(id=[f"a{i}" for i in range(60)])
    test = single_texts(20, 1).drop(columns=["stars"]).assign(id=[f"b{i}" for i in range(20)])
    for name, df in (("train", train), ("test", test)):
        path = tmp_path / f"{name}.{fmt}"
        if fmt == "parquet":
            df.to_parquet(path)
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
        else:
            path.write_bytes(gzip.compress(df.to_csv(index=False).encode()))
    code, _, err = run_init(tmp_path / f"train.{fmt}", tmp_path / f"test.{fmt}", "--name", "fmt")
    assert code == 0, err
    data = written(tmp_path, "fmt")["data"]
    assert (data["train"], data["text_a"], data["label"], data["id"]) == (f"train.{fmt}", "review", "stars", "id")
    assert "text_b" not in data
    kinds = [m.kind for m in load_config(tmp_path / "configs" / "fmt.yaml").models]
    assert "tfidf_lgbm" in kinds and "pair_lgbm" not in kinds   # single texts


def test_regression_target_and_grouped_pairs(run_init, tmp_path):
    """Numbers are a regression target; pairs that share a sentence are kept in one fold."""
    a, b = texts(80, 0), texts(80, 1)
    second = [a[i ^ 1] if i < 20 else b[i] for i in range(80)]   # rows 0-19: ten groups of two pairs
    train = pd.DataFrame({"pair_id": range(80), "question1": a, "question2": second,
                          "similarity": [f"{(i % 17) / 4:.2f}" for i in range(80)]})
    test = train.drop(columns=["similarity"]).assign(pair_id=range(100, 180))
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    code, out, err = run_init(tmp_path / "train.csv", tmp_path / "test.csv", "--name", "sts")
    assert code == 0, err
    cfg = written(tmp_path, "sts")
    assert cfg["task"] == "regression" and cfg["metric"] == "rmse" and cfg["folds"]["strategy"] == "auto_group"
    assert (cfg["data"]["id"], cfg["data"]["text_a"], cfg["data"]["text_b"]) == ("pair_id", "question1", "question2")
    assert "grouped (auto_group): 20 pairs share a sentence" in out


# ----------------------------------------------------------------------------- sample submissions


def test_a_sample_submission_names_the_id_and_label_in_any_column_order(run_init, tmp_path):
    train = single_texts(60, 0).assign(key=[f"k{i}" for i in range(60)], rating=lambda d: d["stars"])
    train = train.drop(columns=["stars"])
    test = single_texts(20, 1).drop(columns=["stars"]).assign(key=[f"t{i}" for i in range(20)])
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame({"rating": ["1"] * 20, "key": test["key"]}).to_csv(tmp_path / "sample.csv", index=False)
    code, out, err = run_init(tmp_path / "train.csv", tmp_path / "test.csv", "--sample-submission",
                              tmp_path / "sample.csv", "--name", "samp")
    assert code == 0, err
    data = written(tmp_path, "samp")["data"]
    assert (data["id"], data["label"], data["sample_submission"]) == ("key", "rating", "sample.csv")
    assert "sample submission's prediction column" in out


def test_a_sample_of_class_columns_asks_for_probabilities(run_init, tmp_path):
    train = single_texts(60, 0).assign(id=range(60), author=lambda d: d["stars"].map({"1": "EAP", "2": "HPL",
                                                                                       "3": "MWS"}))
    test = single_texts(20, 1).drop(columns=["stars"]).assign(id=range(60, 80))
    train.drop(columns=["stars"]).to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame({"id": test["id"], "EAP": 0.3, "HPL": 0.3, "MWS": 0.4}).to_csv(tmp_path / "sample.csv", index=False)
    code, _, err = run_init(tmp_path / "train.csv", tmp_path / "test.csv", "--sample-submission",
                            tmp_path / "sample.csv", "--name", "spooky")
    assert code == 0, err
    cfg = written(tmp_path, "spooky")
    assert cfg["data"]["label"] == "author" and cfg["metric"] == "logloss"
    assert cfg["ensemble"]["submit_values"] == "probabilities"


# ----------------------------------------------------------------------------- refusals


def test_refusals_are_one_line_naming_the_flag(run_init, tmp_path):
    train = pd.DataFrame({"title": texts(40, 0, 4), "body": texts(40, 1, 30), "p": ["a", "b"] * 20,
                          "q": ["c", "d"] * 20})
    test = train.drop(columns=["p", "q"]).iloc[:10]
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    code, _, err = run_init(tmp_path / "train.csv", tmp_path / "test.csv")
    assert code == 2 and "2 columns could be the label ('p', 'q'): name it with --label COL" in one_line(err)
    code, _, err = run_init(tmp_path / "train.csv", tmp_path / "test.csv", "--label", "p")
    assert code == 2
    assert "2 columns hold text ('title', 'body'): name the text with --text title (one text) or --text " \
           "title,body (a pair of texts)" in one_line(err)
    code, _, err = run_init(tmp_path / "train.csv", tmp_path / "test.csv", "--label", "p", "--text", "body",
                            "--name", "x")
    assert code == 0, err
    one = train.assign(p="a")
    one.to_csv(tmp_path / "one.csv", index=False)
    code, _, err = run_init(tmp_path / "one.csv", tmp_path / "test.csv", "--label", "p", "--text", "body",
                            "--name", "o")
    assert code == 2 and "holds one value only" in one_line(err)
    rare = train.assign(p=["a"] * 39 + ["b"])
    rare.to_csv(tmp_path / "rare.csv", index=False)
    code, _, err = run_init(tmp_path / "rare.csv", tmp_path / "test.csv", "--label", "p", "--text", "body",
                            "--name", "r")
    assert code == 2 and "'p' b has 1 row" in one_line(err)
    code, _, err = run_init(tmp_path / "nope.csv", tmp_path / "test.csv", "--name", "n")
    assert code == 2 and "nope.csv" in one_line(err)
    assert sorted(p.name for p in (tmp_path / "configs").iterdir()) == ["x.yaml"]   # nothing else written


def test_a_sample_with_other_ids_is_refused(run_init, tmp_path):
    train = single_texts(60, 0).assign(id=range(60))
    test = single_texts(20, 1).drop(columns=["stars"]).assign(id=range(60, 80))
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame({"id": range(20), "stars": 1}).to_csv(tmp_path / "sample.csv", index=False)
    code, _, err = run_init(tmp_path / "train.csv", tmp_path / "test.csv", "--sample-submission",
                            tmp_path / "sample.csv")
    assert code == 2 and "its ids (column 'id') are not the test file's ids" in one_line(err)


# ----------------------------------------------------------------------------- machines


def test_a_gpu_gets_more_transformers_and_names_what_does_not_load(run_init, tmp_path):
    folder = ROOT / "data" / "demo"
    code, out, err = run_init(folder / "train.csv", folder / "test.csv", "--name", "big", "--gpus", "1")
    assert code == 0, err
    text = (tmp_path / "configs" / "big.yaml").read_text()
    cfg = load_config(tmp_path / "configs" / "big.yaml")
    names = [m.name for m in cfg.models]
    assert {"minilm_mean", "minilm_cls"} <= set(names)
    assert cfg.execution.backend == "ray"   # the CPU jobs beside the GPU's (ray is in requirements.txt)
    if "mpnet" not in names:   # its weights are not installed here: written commented, with the reason
        comments = " ".join(line.strip(" #") for line in text.splitlines() if line.lstrip().startswith("#"))
        assert "  # - name: mpnet" in text and "left out: backbone 'all-mpnet-base-v2'" in comments
        assert "mpnet (backbone 'all-mpnet-base-v2'" in out


# ----------------------------------------------------------------------------- MRPC and the newcomer's path


@pytest.mark.skipif(not (MRPC / "train.tsv").is_file(), reason="MRPC is not beside the project")
def test_mrpc(run_init, tmp_path):
    code, out, err = run_init(MRPC / "train.tsv", MRPC / "msr_paraphrase_test.txt", "--name", "mrpc_first")
    assert code == 0, err
    cfg = written(tmp_path, "mrpc_first")
    assert cfg["data"]["text_a"] == "#1 String" and cfg["data"]["text_b"] == "#2 String"
    assert cfg["data"]["label"] == "Quality" and cfg["data"]["test_label"] == "Quality"
    assert cfg["data"]["id"] is None and cfg["folds"]["strategy"] == "auto_group"
    assert "the test file has it too" in out and "test ids are row numbers 0..1724" in out


def test_newcomer_path_init_run_all_submission(run_init, tmp_path):
    """init on the files, then every stage of run_all.sh on the written config as it is (only its
    backbones swapped for a tiny random BERT, one epoch, fewer trees on one thread, so it runs in
    seconds): a submission."""
    write_demo(tmp_path / "data" / "comp", n_train=120, n_test=40)
    code, _, err = run_init("data/comp/train.csv", "data/comp/test.csv")
    assert code == 0, err
    config = tmp_path / "configs" / "comp.yaml"
    cfg = load_config(config)
    assert cfg.data.dir == "data/comp"
    texts = pd.read_csv(tmp_path / "data" / "comp" / "train.csv")["text_a"]
    words = sorted({w for t in texts for w in t.lower().split()})
    bert = tiny_bert(tmp_path / "bert", words)
    fast = [f"models.{m.name}.params.backbone={bert}" for m in cfg.models if "backbone" in m.params]
    fast += [f"models.{m.name}.params.epochs=1" for m in cfg.models if m.kind == "transformer"]
    fast += [f"models.{m.name}.params.{k}={v}" for m in cfg.models if "n_jobs" in m.params
             for k, v in (("n_jobs", 1), ("n_estimators", 20))]
    exp = Exp(tmp_path, config)
    for stage in STAGES:
        assert exp.run(stage, *fast) == 0, stage
    sub = pd.read_csv(tmp_path / "submissions" / "comp.csv", dtype=str)
    test = pd.read_csv(tmp_path / "data" / "comp" / "test.csv", dtype=str)
    assert list(sub.columns) == ["id", "label"] and sub["id"].tolist() == test["id"].tolist()


def test_the_line_up_follows_the_machine_and_the_file_size():
    from pipeline.lineup import lineup
    from pipeline.machine import Machine
    from pipeline.proposal import Proposal

    def plan(n_train: int, machine: Machine, missing: tuple = ()) -> dict:
        p = Proposal({}, "classification", "accuracy", 5, "stratified", "decisions", n_train, 1000, True, 60)
        lines = lineup(p, machine, lambda name: f"{name} is not here" if name in missing else None)
        return {m.model["name"]: (m.off, m.comment) for m in lines}

    laptop = Machine(cores=2, memory_gb=16)
    small = plan(600, laptop)
    assert [n for n, (off, _) in small.items() if not off] == ["tfidf_lr", "pair_lgbm", "embed_lr", "minilm"]
    assert "recipe for small tasks" in small["minilm"][1] and "about" in small["minilm"][1]
    big = plan(200_000, laptop)
    assert big["minilm"][0] and "h of training on 2 CPU cores" in big["minilm"][1]   # written, commented out
    assert plan(600, Machine(cores=2, memory_gb=2))["minilm"][0]
    gpu = plan(600, Machine(cores=16, memory_gb=128, gpus=1, gpu_memory_gb=80, gpu_name="H200"),
               missing=("all-mpnet-base-v2",))
    assert [n for n, (off, _) in gpu.items() if not off] == ["tfidf_lr", "pair_lgbm", "embed_lr", "minilm_mean",
                                                             "minilm_cls"]
    assert gpu["mpnet"][0] and "all-mpnet-base-v2 is not here" in gpu["mpnet"][1]
    assert all(gpu[n][0] and "all-mpnet-base-v2 is not here" in gpu[n][1] for n in ("embed_lr_mpnet", "pair_lgbm_mpnet"))
    h200 = plan(600, Machine(cores=16, memory_gb=128, gpus=1, gpu_memory_gb=80, gpu_name="H200"))
    assert [n for n, (off, _) in h200.items() if off] == []
    assert list(h200)[-3:] == ["mpnet", "embed_lr_mpnet", "pair_lgbm_mpnet"]
    small_gpu = plan(600, Machine(cores=16, memory_gb=128, gpus=1, gpu_memory_gb=8, gpu_name="T4-8G"))
    assert small_gpu["mpnet"][0] and not small_gpu["embed_lr_mpnet"][0]   # embeddings need no training memory


def test_a_gpu_machine_gets_the_ray_backend_and_slots_its_memory_holds():
    from pipeline.lineup import execution
    from pipeline.machine import Machine

    h200 = Machine(cores=16, memory_gb=128, gpus=1, gpu_memory_gb=80, gpu_name="H200")
    assert execution(Machine(cores=2, memory_gb=16), None) is None          # CPU: the local default
    assert execution(h200, None).settings == {"backend": "ray", "gpu_slots": 2}
    t4 = Machine(cores=4, memory_gb=16, gpus=1, gpu_memory_gb=15, gpu_name="T4")
    assert execution(t4, None).settings == {"backend": "ray", "gpu_slots": 1}
    without = execution(h200, "execution.backend=ray needs the ray package (pip install -r requirements.txt)")
    assert without.settings == {"backend": "local"} and "pip install -r requirements.txt" in without.comment
