"""Serving: a real uvicorn server (python -m pipeline.serve in a subprocess) answers what the
pipeline predicted: the ensemble's test.npy and the submission's labels, for a tiny experiment of
classical members and a tiny random BERT. Bad requests are 4xx and the server keeps answering;
concurrent requests are micro-batched; a stale ensemble is refused at start; a restart after
retraining serves the new matrices."""
from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, WORDS, Exp, base_config, stage_main, tiny_bert, tiny_pairs
from test_tasks import VOCAB, experiment, multilabel_texts, regression_pairs

BERT_TOL = 1e-5   # fp32 transformer members on CPU (docs/serving.md)
CLASSICAL_TOL = 1e-5


def bert_member(bert: Path) -> dict:
    return {"name": "bert", "kind": "transformer", "view": "lower",
            "params": {"backbone": str(bert), "max_length": 32, "epochs": 1, "batch_size": 16, "lr": 1e-3,
                       "head_lr": 1e-2, "warmup": 0.0, "precision": "fp32", "num_threads": 1, "patience": 0}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_cmd(e: Exp, port: int, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.serve", str(e.config), *overrides, "--port", str(port)]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


class Server:
    """`python -m pipeline.serve` on a free port, ready (GET /ready) or failed."""

    def __init__(self, e: Exp, *overrides: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(serve_cmd(e, self.port, *overrides), cwd=ROOT, env=env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError("server not ready in 90 s")

    def post(self, body, params=None, **kw) -> httpx.Response:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        return httpx.post(self.url + "/predict", content=body, params=params,
                          headers={"content-type": "application/json"}, timeout=30, **kw)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def request_rows(e: Exp) -> list[dict]:
    df = pd.read_csv(e.tmp / "in" / "test.csv", dtype=str, keep_default_na=False)
    cols = [c for c in ("id", "text_a", "text_b") if c in df.columns]
    return df[cols].to_dict("records")


def build(tmp: Path, bert: Path) -> Exp:
    (tmp / "in").mkdir(parents=True)
    tiny_pairs(90, 0).to_csv(tmp / "in" / "train.csv", index=False)
    tiny_pairs(30, 1, labelled=False).to_csv(tmp / "in" / "test.csv", index=False)
    cfg = base_config(tmp)
    cfg["models"] += [{"name": "tlgbm", "kind": "tfidf_lgbm", "view": "lemma",
                       "params": {"n_estimators": 15, "n_jobs": 1, "min_df": 1}}, bert_member(bert)]
    cfg["serve"] = {"max_body_bytes": 8192, "max_wait_ms": 100, "max_batch": 64}
    e = Exp(tmp, tmp / "tiny.yaml")
    e.write_config(cfg)
    for stage in ("preprocess", "folds", "train", "ensemble"):
        assert e.run(stage) == 0, stage
    return e


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    """The tests' tiny random BERT, with the words of both data generators."""
    return tiny_bert(tmp_path_factory.mktemp("bert"), sorted(set(WORDS + VOCAB)))


@pytest.fixture(scope="module")
def served(tmp_path_factory, bert):
    e = build(tmp_path_factory.mktemp("exp"), bert)
    server = Server(e)
    yield e, server
    server.stop()


def served_matrix(server: Server, rows: list[dict], classes: list[str], chunk: int = 7) -> tuple[np.ndarray, list]:
    """(n, C) served probabilities and the labels, asking `chunk` rows at a time."""
    probs, labels = [], []
    for i in range(0, len(rows), chunk):
        r = server.post({"rows": rows[i:i + chunk]})
        assert r.status_code == 200, r.text
        for row in r.json()["rows"]:
            probs.append([row["probabilities"][c] for c in classes])
            labels.append(str(row["label"]))
    return np.array(probs), labels


def check_invariant(e: Exp, server: Server) -> None:
    summary = json.loads((e.models / "ensembles" / "summary.json").read_text())
    method = summary["submitted"]
    expected = np.load(e.models / "ensembles" / method / "test.npy")
    info = httpx.get(server.url + "/info").json()
    assert info["method"] == method and [m["name"] for m in info["members"]] == ["lr", "plgbm", "tlgbm", "bert"]
    probs, labels = served_matrix(server, request_rows(e), info["classes"])
    assert np.abs(probs - expected).max() <= BERT_TOL
    sub = pd.read_csv(e.tmp / "subs" / "tiny.csv", dtype=str)
    assert labels == sub["label"].tolist()


def test_served_predictions_equal_the_ensembles_test_matrix_and_submission(served):
    e, server = served
    check_invariant(e, server)
    rows = request_rows(e)[:5]
    r = server.post({"rows": rows}, params={"members": "true"})
    assert r.status_code == 200
    for name in ("lr", "plgbm", "tlgbm", "bert"):
        tol = BERT_TOL if name == "bert" else CLASSICAL_TOL
        got = np.array([[row["members"][name]["probabilities"][c] for c in ("0", "1")] for row in r.json()["rows"]])
        assert np.abs(got - np.load(e.models / name / "test.npy")[:5]).max() <= tol, name


@pytest.mark.parametrize("body, status, names", [
    ({"rows": [{"id": "a", "text_b": "x"}]}, 422, "rows.0.text_a"),
    ({"rows": [{"id": "a", "text_a": 5, "text_b": "x"}]}, 422, "rows.0.text_a"),
    ({"rows": [{"id": "a", "text_a": "x"}]}, 422, "rows.0.text_b"),
    ({"rows": []}, 422, "rows"),
    ({"row": []}, 422, "rows"),
    ({"rows": "x"}, 422, "rows"),
    (b'{"rows": [{"id": "a", "text_a": "\xff\xfe", "text_b": "x"}]}', 400, "UTF-8"),
    (b'{"rows": [', 400, "JSON"),
    ('{"rows": [{"id": "a", "text_a": "\\ud800", "text_b": "x"}]}', 422, "rows.0.text_a"),
    # one rule with the file readers: NUL characters dropped, then an empty text (on_empty_text=error)
    ('{"rows": [{"id": "a", "text_a": "\\u0000", "text_b": "x"}]}', 422, "rows.0.text_a"),
    ({"rows": [{"id": "a", "text_a": "x", "text_b": " \t "}]}, 422, "rows.0.text_b"),
    (json.dumps({"rows": [{"id": "a", "text_a": "word " * 2000, "text_b": "x"}]}), 413, "max_body_bytes"),
])
def test_bad_requests_are_4xx_and_the_server_keeps_answering(served, body, status, names):
    e, server = served
    r = server.post(body)
    assert r.status_code == status, r.text
    assert names in r.json()["error"]
    good = server.post({"rows": request_rows(e)[:2]})
    assert good.status_code == 200 and len(good.json()["rows"]) == 2


def test_a_long_chunked_body_gets_413_not_a_reset(served):
    """A chunked body (no content-length) far past serve.max_body_bytes: the answer is a 413, not a
    connection reset while the client is still sending."""
    e, server = served

    def body():
        yield b'{"rows": [{"id": "a", "text_a": "'
        for _ in range(160):
            yield b"w" * 65536      # 10 MiB in all
        yield b'", "text_b": "x"}]}'

    r = httpx.post(server.url + "/predict", content=body(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]
    assert server.post({"rows": request_rows(e)[:1]}).status_code == 200


def test_concurrent_requests_are_micro_batched(served):
    e, server = served
    before = httpx.get(server.url + "/info").json()["batching"]
    rows = request_rows(e)[:16]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda row: server.post({"rows": [row]}), rows))
    assert all(a.status_code == 200 for a in answers)
    assert [a.json()["rows"][0]["id"] for a in answers] == [r["id"] for r in rows]
    after = httpx.get(server.url + "/info").json()["batching"]
    assert after["requests"] - before["requests"] == 16
    assert after["batches"] - before["batches"] < 16   # some requests shared a batch
    assert after["max_batch_rows"] > 1


def refusal(capsys, e: Exp, *overrides: str) -> str:
    """The one line `python -m pipeline.serve` exits 2 with (run in-process: it fails before listening)."""
    from pipeline import cli

    with pytest.raises(SystemExit) as exit_:
        cli.run(stage_main("serve"), [str(e.config), *overrides, "--port", str(free_port())])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_stale_ensemble_refused_then_restart_serves_the_new_matrices(served, capsys):
    e, server = served
    server.stop()
    changed = ["models.lr.params.C=0.5"]
    assert "trained with other settings" in refusal(capsys, e, *changed) and "params.C" in refusal(capsys, e, *changed)
    old = np.load(e.models / "ensembles" / "stack" / "test.npy")
    assert e.run("train", *changed) == 0
    r = subprocess.run(serve_cmd(e, free_port(), *changed), cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=60)  # the real script: one line, exit 2
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "is stale" in lines[0] and "pipeline.ensemble" in lines[0], r.stderr
    assert e.run("ensemble", *changed) == 0
    cfg = yaml.safe_load(e.config.read_text())
    cfg["models"][0]["params"]["C"] = 0.5
    e.write_config(cfg)
    assert not np.array_equal(old, np.load(e.models / "ensembles" / "stack" / "test.npy"))
    (e.models / "lr" / "fold1" / "tfidf.json").write_text("[]")
    assert "fold files are missing or changed" in refusal(capsys, e)
    assert e.run("train") == 0   # the damaged fold is retrained; the same matrices come back
    restarted = Server(e)
    try:
        check_invariant(e, restarted)
    finally:
        restarted.stop()


def test_regression_with_cut_points_served_as_the_pipeline_predicted(tmp_path, bert):
    """Regression (qwk: labels are ratings at the tuned cut-points), with an embed_lr member on the
    tiny BERT's frozen embeddings and a transformer member."""
    embed = {"name": "emb", "kind": "embed_lr", "view": "lower", "params": {"backbone": str(bert), "max_length": 32}}
    e = experiment(tmp_path, regression_pairs(60, 0), regression_pairs(20, 1).drop(columns=["score"]),
                   task="regression", metric="qwk", data={"label": "score"},
                   models=[{"name": "lr", "kind": "tfidf_lr", "view": "lower", "params": {"min_df": 1}}, embed,
                           bert_member(bert)], ensemble={"methods": ["stack", "blend"], "submit": "stack"})
    for stage in ("preprocess", "folds", "train", "ensemble"):
        assert e.run(stage) == 0, stage
    server = Server(e)
    try:
        r = server.post({"rows": request_rows(e)})
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    rows = r.json()["rows"]
    expected = np.load(e.models / "ensembles" / "stack" / "test.npy")[:, 0]
    assert np.abs(np.array([row["value"] for row in rows]) - expected).max() <= BERT_TOL
    sub = pd.read_csv(e.tmp / "subs" / "tiny.csv", dtype=str)
    assert [str(row["label"]) for row in rows] == sub["score"].tolist()


def test_multilabel_served_in_process_with_label_thresholds(tmp_path):
    """Multilabel (f1: one tuned threshold per label), per-label linear and booster members, through
    the app in-process."""
    from fastapi.testclient import TestClient

    from pipeline.http_app import create_app
    from pipeline.predictor import load_ensemble
    from pipeline.config import load_config

    labels = ["finance", "sport", "politics"]
    test = multilabel_texts(20, 1)
    e = experiment(tmp_path, multilabel_texts(60, 0), test.drop(columns=labels), task="multilabel", metric="f1",
                   data={"label": labels, "text_a": "text", "text_b": None},
                   models=[{"name": "lr", "kind": "tfidf_lr", "view": "lower", "params": {"min_df": 1}},
                           {"name": "lgbm", "kind": "tfidf_lgbm", "view": "lemma",
                            "params": {"n_estimators": 15, "n_jobs": 1, "min_df": 1, "min_child_samples": 3}}],
                   ensemble={"methods": ["stack", "vote"], "submit": "stack"})
    for stage in ("preprocess", "folds", "train", "ensemble"):
        assert e.run(stage) == 0, stage
    ens = load_ensemble(load_config(e.config))
    rows = [{"id": r["id"], "text_a": r["text"]} for r in test.to_dict("records")]
    with TestClient(create_app(ens)) as client:
        r = client.post("/predict", json={"rows": rows})
    assert r.status_code == 200, r.text
    got = np.array([[row["probabilities"][c] for c in labels] for row in r.json()["rows"]])
    assert np.abs(got - np.load(e.models / "ensembles" / "stack" / "test.npy")).max() <= CLASSICAL_TOL
    sub = pd.read_csv(e.tmp / "subs" / "tiny.csv")
    assert [[row["label"][c] for c in labels] for row in r.json()["rows"]] == sub[labels].to_numpy().tolist()


@pytest.mark.parametrize("submit", ["rank", "select"])
def test_seed_bag_member_and_new_methods_served_as_the_pipeline_predicted(tmp_path, bert, submit):
    """A seed bag (two seeds of the BERT: fold<k>/seed<s>/ each) and the selection and rank methods:
    the served rows equal the ensemble's test.npy and the submission, asked a few rows at a time
    (a rank is read from the fitting rows, so it does not depend on which rows come together)."""
    (tmp_path / "in").mkdir()
    tiny_pairs(90, 0).to_csv(tmp_path / "in" / "train.csv", index=False)
    tiny_pairs(30, 1, labelled=False).to_csv(tmp_path / "in" / "test.csv", index=False)
    cfg = base_config(tmp_path)
    member = bert_member(bert)
    member["seeds"] = [3, 4]
    cfg["models"] = [cfg["models"][0], member]
    cfg["ensemble"] = {"methods": ["rank", "select"], "submit": submit}
    e = Exp(tmp_path, tmp_path / "tiny.yaml")
    e.write_config(cfg)
    for stage in ("preprocess", "folds", "train", "ensemble"):
        assert e.run(stage) == 0, stage
    assert (e.models / "bert" / "fold0" / "seed4" / "model.safetensors").exists()
    server = Server(e)
    try:
        summary = json.loads((e.models / "ensembles" / "summary.json").read_text())
        assert summary["submitted"] == submit
        expected = np.load(e.models / "ensembles" / submit / "test.npy")
        classes = httpx.get(server.url + "/info").json()["classes"]
        probs, labels = served_matrix(server, request_rows(e), classes, chunk=3)
        assert np.abs(probs - expected).max() <= BERT_TOL
        assert labels == pd.read_csv(e.tmp / "subs" / "tiny.csv", dtype=str)["label"].tolist()
    finally:
        server.stop()
