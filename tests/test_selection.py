"""Ensemble methods `select` (hill-climbing ensemble selection with replacement, Caruana et al.
2004) and `rank` (rank averaging): the picks, the weights, the ranks, honesty, state round trips,
and the ensemble stage with them."""
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import metrics as M
from pipeline import tasks
from pipeline.artifacts import Matrices
from pipeline.combiners import HillClimber, LabelRankAverager, RankAverager, ValueRankAverager
from pipeline.config import ExperimentConfig, load_config
from pipeline.combination import combine, honest_oof
from pipeline.errors import PipelineError
from pipeline.fileio import read_json

CLS = tasks.get("classification")


def informative_and_noise(n: int = 400, noisy: int = 4, seed: int = 0):
    """Binary labels, one model that knows them (P(true class) = 0.8) and `noisy` random ones."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = np.stack([1 - (0.6 * y + 0.2), 0.6 * y + 0.2], 1)
    return y, [rng.dirichlet([1, 1], n) for _ in range(noisy // 2)] + [good] + [
        rng.dirichlet([1, 1], n) for _ in range(noisy - noisy // 2)]


def select(metric: str = "accuracy", task=CLS, **settings) -> HillClimber:
    return task.method("select", 1.0, 0, metric, settings)()


# ----------------------------------------------------------------------------- hill climbing


def test_the_informative_model_gets_most_weight():
    y, mats = informative_and_noise()
    w = select().fit(mats, y).weights_
    assert w.shape == (5,) and np.isclose(w.sum(), 1) and (w >= 0).all()
    assert w.argmax() == 2 and w[2] > 0.5


def test_with_replacement_a_model_is_picked_twice():
    """y + 1 and y - 2: the best mixture is 2/3 of the first and 1/3 of the second (error 0)."""
    y = np.random.default_rng(1).normal(size=50)
    est = select("rmse", tasks.get("regression")).fit([(y + 1)[:, None], (y - 2)[:, None]], y)
    np.testing.assert_allclose(est.weights_, [2 / 3, 1 / 3])
    np.testing.assert_allclose(est.predict_proba([(y + 1)[:, None], (y - 2)[:, None]])[:, 0], y, atol=1e-12)


def test_init_and_steps():
    y, mats = informative_and_noise()
    assert select(steps=0).fit(mats, y).weights_.tolist() == [0, 0, 1, 0, 0]  # the best single model
    two = select(init=2, steps=0).fit(mats, y).weights_
    assert (two > 0).sum() == 2 and two[2] == 0.5


def test_selection_is_deterministic_and_bags_average():
    y, mats = informative_and_noise(noisy=7)
    assert select().fit(mats, y).weights_.tolist() == select().fit(mats, y).weights_.tolist()
    bagged = select(bags=6, fraction=0.5).fit(mats, y).weights_
    assert bagged.tolist() == select(bags=6, fraction=0.5).fit(mats, y).weights_.tolist()
    assert np.isclose(bagged.sum(), 1) and (bagged > 0).sum() > 1  # bags without the good model pick others


def test_selection_scores_decision_metrics_by_a_smooth_proxy():
    y, mats = informative_and_noise()
    p = mats[0]
    assert CLS.selection_score("accuracy")(y, p) == -M.class_logloss(y, p)
    assert np.isclose(M.class_logloss(y, p), M.scores(y, p)["logloss"])
    assert CLS.selection_score("roc_auc")(y, p) == M.scores(y, p)["roc_auc"]
    rt = tasks.get("regression")
    v = np.arange(10.0)
    assert rt.selection_score("qwk")(v, v[::-1, None]) == rt.score("rmse", v, v[::-1, None])


# ----------------------------------------------------------------------------- rank averaging


def test_rank_average_by_hand():
    a = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    b = np.array([[0.8, 0.2], [0.9, 0.1], [0.1, 0.9], [0.3, 0.7]])
    # ranks of P(class 1) scaled to [0, 1]: a 0, 2/3, 1/3, 1; b 1/3, 0, 1, 2/3
    out = RankAverager().fit([a, b], None).predict_proba([a, b])
    np.testing.assert_allclose(out[:, 1], [1 / 6, 1 / 3, 2 / 3, 5 / 6])
    np.testing.assert_allclose(out.sum(1), 1)
    # a row's rank is read from the fitting rows alone: new rows between, below and above them
    new = [np.array([[0.3, 0.7], [1.0, 0.0], [0.0, 1.0]]), np.array([[0.15, 0.85], [0.95, 0.05], [0.0, 1.0]])]
    np.testing.assert_allclose(RankAverager().fit([a, b], None).predict_proba(new)[:, 1],
                               [2.75 / 3, 0.0, 1.0])   # .7 and .85: 3/4 of the way from the 3rd to the 4th
    single = RankAverager().fit([a, b], None)
    np.testing.assert_allclose(np.concatenate([single.predict_proba([a[i:i + 1], b[i:i + 1]]) for i in range(4)]), out)
    tied = [np.array([[0.5, 0.5], [0.5, 0.5], [0.1, 0.9]])]
    ties = RankAverager().fit(tied, None).predict_proba(tied)
    np.testing.assert_allclose(ties[:, 1], [0.25, 0.25, 1.0])
    dirichlet = [np.random.default_rng(0).dirichlet([1, 1, 1], 20) for _ in range(3)]
    three = RankAverager().fit(dirichlet, None).predict_proba(dirichlet)
    np.testing.assert_allclose(three.sum(1), 1)
    assert (three >= 0).all()
    labels = LabelRankAverager().fit([a, b], None).predict_proba([a, b])   # every column on its own
    np.testing.assert_allclose(labels[:, 0], [5 / 6, 2 / 3, 1 / 3, 1 / 6])


def test_regression_ranks_map_onto_the_training_targets():
    a, b = np.array([[1.0], [2.0], [3.0]]), np.array([[6.0], [5.0], [7.0]])
    est = ValueRankAverager().fit([a, b], np.array([4.0, 0.0, 3.0, 1.0, 2.0]))
    out = est.predict_proba([a, b])  # ranks 0, .5, 1 and .5, 0, 1: mean .25, .25, 1 -> quantiles of 0..4
    np.testing.assert_allclose(out[:, 0], [1.0, 1.0, 4.0])
    assert est.predict_proba([a[:1], b[:1]])[0, 0] == 1.0  # one row ranks as it did among the others
    assert est.predict_proba([np.array([[9.0]]), np.array([[9.0]])])[0, 0] == 4.0  # above every fitting row


def test_thresholds_tune_on_the_rank_average():
    y, mats = informative_and_noise(noisy=1)
    ranked = RankAverager().fit(mats, y).predict_proba(mats)
    t = CLS.tune("accuracy", y, ranked)
    assert t in M.GRID.tolist() and 0.35 <= t <= 0.65   # half the rows are positive: near the median
    assert M.scores(y, ranked, t)["accuracy"] > 0.7
    assert M.class_auc(y, ranked) > 0.8


# ----------------------------------------------------------------------------- through combine


def matrices(name: str, oof: np.ndarray, test: np.ndarray) -> Matrices:
    return Matrices(name, Path(name), oof, test, test[None], {})


def task_models(task: str, n: int = 150, n_test: int = 40):
    """(y, models) of a task: two informative models and a noisy one, OOF and test rows."""
    rng = np.random.default_rng(5)
    m = n + n_test
    if task == "classification":
        y = rng.integers(0, 3, m)
        mats = [0.5 * np.eye(3)[y] + 0.5 * rng.dirichlet([1, 1, 1], m) for _ in range(2)] + [rng.dirichlet([1] * 3, m)]
    elif task == "regression":
        y = rng.normal(size=m)
        mats = [(y + rng.normal(scale=s, size=m))[:, None] for s in (0.5, 1.0, 3.0)]
    else:
        y = (rng.random((m, 3)) < 0.4).astype(np.int64)
        mats = [np.clip(0.6 * y + 0.4 * rng.random((m, 3)), 0, 1) for _ in range(2)] + [rng.random((m, 3))]
    return y[:n], [matrices(f"m{i}", p[:n], p[n:]) for i, p in enumerate(mats)]


@pytest.mark.parametrize("task", ["classification", "regression", "multilabel"])
@pytest.mark.parametrize("method", ["select", "rank"])
def test_both_methods_for_every_task_through_combine(task, method):
    cfg = ExperimentConfig(task=task)
    y, models = task_models(task)
    folds = np.arange(len(y)) % 3
    r = combine(method, cfg, models, y, folds)
    assert r["oof"].shape == models[0].oof.shape and r["test"].shape == models[0].test.shape
    assert np.isfinite(r["oof"]).all() and np.isfinite(r["test"]).all()
    if task == "classification":
        np.testing.assert_allclose(r["oof"].sum(1), 1)
        np.testing.assert_allclose(r["test"].sum(1), 1)
    if task == "multilabel":
        assert (r["oof"] >= 0).all() and (r["oof"] <= 1).all() and (r["test"] <= 1).all()
    score = [tasks.get(task).score(cfg.metric, y, p) for p in (r["oof"], *[m.oof for m in models])]
    assert score[0] > score[3]   # better than the noisy model
    if method == "select":       # about as good as the best model, the noisy one barely picked
        assert score[0] > max(score[1:]) - 0.05
        assert np.isclose(sum(r["weights"].values()), 1) and r["weights"]["m2"] < 0.2


def test_leaky_selection_would_score_above_the_honest_oof_the_pipeline_reports():
    """Labels independent of 20 pure-noise models: a selection fitted on all OOF rows and scored on
    them finds a mixture well above chance (AUC 0.5); the pipeline reports the honest OOF (each
    fold's rows from a selection fitted on the other folds), which stays near chance."""
    rng = np.random.default_rng(0)
    n = 400
    y, folds = rng.integers(0, 2, n), np.arange(n) % 5
    mats = [rng.dirichlet([2, 2], n) for _ in range(20)]
    cfg = ExperimentConfig(metric="roc_auc")
    reported = combine("select", cfg, [matrices(f"m{i}", p, p[:5]) for i, p in enumerate(mats)], y, folds)
    leaky = M.class_auc(y, select("roc_auc").fit(mats, y).predict_proba(mats))
    honest = M.class_auc(y, honest_oof(lambda: select("roc_auc"), mats, y, folds))
    assert reported["oof_scores"]["roc_auc"] == honest
    assert leaky > 0.6 and honest < 0.55 and leaky - honest > 0.08


# ----------------------------------------------------------------------------- state


@pytest.mark.parametrize("task", ["classification", "regression", "multilabel"])
@pytest.mark.parametrize("method", ["select", "rank"])
def test_state_round_trip_predicts_the_same(task, method):
    y, models = task_models(task)
    est = tasks.get(task).method(method, 1.0, 0, tasks.get(task).default_metric, {"bags": 3})()
    est.fit([m.oof for m in models], y)
    again = type(est).from_state(json.loads(json.dumps(est.state())))
    test = [m.test for m in models]
    assert again.predict_proba(test).tolist() == est.predict_proba(test).tolist()


# ----------------------------------------------------------------------------- config and the stage


def test_select_settings_are_validated(tmp_path):
    cfg = load_config(None, ["ensemble.methods=[select, rank]", "ensemble.select_bags=5", "ensemble.select_init=2"])
    assert cfg.ensemble.methods == ["select", "rank"] and cfg.ensemble.select_bags == 5
    for bad in ("select_bags=0", "select_fraction=1.5", "select_init=0", "select_steps=-1", "select_bags=1001"):
        with pytest.raises(PipelineError, match=f"ensemble.{bad.split('=')[0]}"):
            load_config(None, [f"ensemble.{bad}"])


def test_ensemble_stage_with_select_and_rank(prepared, capsys):
    assert prepared.run("train") == 0
    assert prepared.run("ensemble", "ensemble.methods=[stack, select, rank]", "ensemble.submit=auto",
                        "ensemble.select_bags=3") == 0
    summary = read_json(prepared.models / "ensembles" / "summary.json")
    assert set(summary["methods"]) == {"stack", "select", "rank"}
    assert np.isclose(sum(summary["methods"]["select"]["weights"].values()), 1)
    honest = {m: (r.get("oof_scores_thresholded") or r["oof_scores"])["accuracy"]
              for m, r in summary["methods"].items()}
    assert honest[summary["submitted"]] == max(honest.values())
    for m in ("select", "rank"):
        assert (prepared.tmp / "subs" / f"tiny_{m}.csv").is_file()
        test = np.load(prepared.models / "ensembles" / m / "test.npy")
        np.testing.assert_allclose(test.sum(1), 1, rtol=1e-5)
    assert "select weights:" in capsys.readouterr().out
    ranked = ("ensemble.methods=[select, rank]", "ensemble.submit=rank")
    assert prepared.run("ensemble", *ranked) == 0 and prepared.run("report", *ranked) == 0
    assert read_json(prepared.tmp / "reports" / "tiny" / "report.json")["ensemble"]["method"] == "rank"
