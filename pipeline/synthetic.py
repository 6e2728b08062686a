"""The embedded demos' data: three synthetic tasks on news-like sentences (deterministic, seed 0),
written by the demo stage (python -m pipeline.demo).

- out_dir (classification, configs/default.yaml): a pair is a paraphrase (1) when the second
  sentence restates the first with synonyms or another voice; a non-paraphrase (0) changes who did
  it, what, when or how much. 8% of labels are flipped so that no model is perfect.
- out_dir + "_regression" (configs/demo_regression.yaml): pairs scored 0.0-5.0 like GLUE STS-B:
  5 minus 1.2 per changed fact (0 to 4 facts), plus noise, rounded to 0.2.
- out_dir + "_multilabel" (configs/demo_multilabel.yaml): one or two sentences with three 0/1
  labels: government (a public body acts), business (a firm or a deal), negative (a rejection,
  criticism or delay); 5% of the labels are flipped.
"""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from .fileio import write_csv

PEOPLE = ["the mayor", "the company", "the senator", "the minister", "the court", "the union", "the bank",
          "the coach", "the governor", "the agency", "the board", "the police", "the school", "the council"]
ACTS = [("bought", "purchased", "was bought by", "was purchased by"),
        ("approved", "endorsed", "was approved by", "was endorsed by"),
        ("rejected", "turned down", "was rejected by", "was turned down by"),
        ("announced", "unveiled", "was announced by", "was unveiled by"),
        ("criticised", "condemned", "was criticised by", "was condemned by"),
        ("sold", "disposed of", "was sold by", "was disposed of by"),
        ("delayed", "postponed", "was delayed by", "was postponed by")]
THINGS = ["the new stadium", "a budget plan", "the merger", "the tax proposal", "a rail project",
          "the peace deal", "a software firm", "the housing bill", "the power plant", "a bond sale"]
WHEN = [("on Monday", "on Monday"), ("last week", "a week ago"), ("in March", "in March"),
        ("on Friday", "late on Friday"), ("yesterday", "a day earlier")]
AMOUNT = ["{n} million dollars", "${n} million", "{n} percent more", "about {n} million"]


def sentence(rng: random.Random) -> dict:
    return {"who": rng.choice(PEOPLE), "act": rng.choice(ACTS), "what": rng.choice(THINGS),
            "when": rng.choice(WHEN), "n": rng.randint(2, 90), "amount": rng.choice(AMOUNT)}


def render(s: dict, rng: random.Random, paraphrase: bool) -> str:
    act, when = s["act"], s["when"][1 if paraphrase else 0]
    amount = s["amount"].format(n=s["n"])
    if paraphrase and rng.random() < 0.5:
        text = f"{s['what']} {act[3 if rng.random() < 0.5 else 2]} {s['who']} {when} for {amount}"
    else:
        verb = act[1] if paraphrase and rng.random() < 0.6 else act[0]
        text = f"{s['who']} {verb} {s['what']} {when} for {amount}"
    text = text[0].upper() + text[1:] + " ."
    return text


def corrupt(s: dict, rng: random.Random) -> dict:
    """Change one fact, so the second sentence no longer means the same."""
    t = dict(s)
    field = rng.choice(["who", "act", "what", "n", "when"])
    pools = {"who": PEOPLE, "act": ACTS, "what": THINGS, "when": WHEN}
    while t[field] == s[field]:
        t[field] = rng.randint(2, 90) if field == "n" else rng.choice(pools[field])
    return t


def make_pairs(n: int, rng: random.Random) -> list[tuple[str, str, int]]:
    rows = []
    for _ in range(n):
        s, label = sentence(rng), int(rng.random() < 0.6)
        other = s if label else corrupt(s, rng)
        a, b = render(s, rng, False), render(other, rng, True)
        if rng.random() < 0.08:
            label = 1 - label
        rows.append((a, b, label))
    return rows


def write_demo(out: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> None:
    rng = random.Random(seed)
    train = make_pairs(n_train, rng)
    test = make_pairs(n_test, rng)
    write_csv(out / "train.csv", pd.DataFrame({"id": [f"tr{i:04d}" for i in range(n_train)],
                                               "text_a": [r[0] for r in train], "text_b": [r[1] for r in train],
                                               "label": [r[2] for r in train]}))
    write_csv(out / "test.csv", pd.DataFrame({"id": [f"te{i:04d}" for i in range(n_test)],
                                              "text_a": [r[0] for r in test], "text_b": [r[1] for r in test]}))


GOVERNMENT = {"the mayor", "the senator", "the minister", "the governor", "the agency", "the council"}
BUSINESS_WHO = {"the company", "the bank", "the board", "the union"}
BUSINESS_WHAT = {"the merger", "a software firm", "a bond sale"}
NEGATIVE = {"rejected", "criticised", "delayed"}


def make_scored_pairs(n: int, rng: random.Random) -> list[tuple[str, str, float]]:
    """(a, b, similarity 0..5): b restates a with 0-4 facts changed."""
    rows = []
    for _ in range(n):
        s = sentence(rng)
        changed = rng.choice([0, 0, 1, 1, 2, 2, 3, 4])
        other = s
        for _ in range(changed):
            other = corrupt(other, rng)
        score = min(5.0, max(0.0, 5.0 - 1.2 * changed + rng.gauss(0, 0.4)))
        rows.append((render(s, rng, False), render(other, rng, True), round(round(score / 0.2) * 0.2, 1)))
    return rows


def topic_labels(s: dict) -> tuple[int, int, int]:
    """(government, business, negative) of one sentence's facts."""
    return (int(s["who"] in GOVERNMENT), int(s["who"] in BUSINESS_WHO or s["what"] in BUSINESS_WHAT),
            int(s["act"][0] in NEGATIVE))


def make_topics(n: int, rng: random.Random) -> list[tuple[str, tuple[int, int, int]]]:
    """(text, labels): one or two sentences; a label is 1 when any sentence has it, 5% flipped."""
    rows = []
    for _ in range(n):
        facts = [sentence(rng) for _ in range(rng.choice([1, 1, 2]))]
        labels = [max(topic_labels(s)[j] for s in facts) for j in range(3)]
        labels = [1 - v if rng.random() < 0.05 else v for v in labels]
        rows.append((" ".join(render(s, rng, rng.random() < 0.5) for s in facts), tuple(labels)))
    return rows


def write_regression_demo(out: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> None:
    rng = random.Random(seed)
    for name, n, prefix in (("train", n_train, "tr"), ("test", n_test, "te")):
        rows = make_scored_pairs(n, rng)
        df = pd.DataFrame({"id": [f"{prefix}{i:04d}" for i in range(n)], "sentence1": [r[0] for r in rows],
                           "sentence2": [r[1] for r in rows], "score": [r[2] for r in rows]})
        write_csv(out / f"{name}.csv", df if name == "train" else df.drop(columns=["score"]))


def write_multilabel_demo(out: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> None:
    rng = random.Random(seed)
    names = ["government", "business", "negative"]
    for name, n, prefix in (("train", n_train, "tr"), ("test", n_test, "te")):
        rows = make_topics(n, rng)
        df = pd.DataFrame({"id": [f"{prefix}{i:04d}" for i in range(n)], "text": [r[0] for r in rows],
                           **{c: [r[1][j] for r in rows] for j, c in enumerate(names)}})
        write_csv(out / f"{name}.csv", df if name == "train" else df.drop(columns=names))
