"""Writes the embedded demo: a synthetic paraphrase task (pairs of news-like sentences).

    python -m pipeline.demo [out_dir]     (default data/demo; deterministic, seed 0)

A pair is a paraphrase (1) when the second sentence restates the first with synonyms or another
voice; a non-paraphrase (0) changes who did it, what, when or how much. 8% of labels are flipped
so that no model is perfect.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pandas as pd

from .io import write_csv

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


if __name__ == "__main__":
    write_demo(Path(sys.argv[1] if len(sys.argv) > 1 else "data/demo"))
