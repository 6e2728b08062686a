"""Nothing regresses: the classification path gives the matrices and submissions the code gave
before task types existed.

GOLDEN holds the sha256 of every matrix and submission of a tiny binary and a tiny 3-class
experiment, recorded with the pre-task code (commit 8fdf6c9) on the project's machine and checked
stable across two runs there. LightGBM and liblinear are deterministic for a fixed seed and thread
count, but float results can differ across CPUs and library versions: on another machine or after
a library upgrade, regenerate with `python tests/test_no_regress.py` on the old commit (it prints
the table) before reading a mismatch as a regression.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import Exp, base_config, tiny_pairs  # noqa: E402


def _three_class(df):
    df = df.copy()
    df["label"] = [str(i % 3) for i in range(len(df))]
    return df


def build(tmp: Path, classes: int) -> Exp:
    (tmp / "in").mkdir(parents=True)
    train, test = tiny_pairs(90, 0), tiny_pairs(30, 1, labelled=False)
    if classes == 3:
        train = _three_class(train)
    train.to_csv(tmp / "in" / "train.csv", index=False)
    test.to_csv(tmp / "in" / "test.csv", index=False)
    cfg = base_config(tmp)
    cfg["models"].append({"name": "tlgbm", "kind": "tfidf_lgbm", "view": "lemma",
                          "params": {"n_estimators": 15, "n_jobs": 1, "min_df": 1}})
    cfg["ensemble"] = {"methods": ["stack", "blend", "vote", "best"], "submit": "auto"}
    e = Exp(tmp, tmp / "tiny.yaml")
    e.write_config(cfg)
    return e


def hashes(e: Exp) -> dict[str, str]:
    for stage in ("preprocess", "folds", "train", "ensemble"):
        assert e.run(stage) == 0, stage
    files = sorted(p for p in (e.tmp / "models").rglob("*.npy")) + sorted((e.tmp / "subs").glob("*.csv"))
    files.append(e.tmp / "work" / "tiny" / "folds.csv")
    return {str(p.relative_to(e.tmp)): hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in files}


GOLDEN: dict[int, dict[str, str]] = {
    2: {
        'models/tiny/ensembles/best/oof.npy': 'fd4a8729781ca8fb',
        'models/tiny/ensembles/best/test.npy': 'e9a78771da1805bb',
        'models/tiny/ensembles/blend/oof.npy': '6792afa60ca724ef',
        'models/tiny/ensembles/blend/test.npy': '89ca312161b74c3c',
        'models/tiny/ensembles/stack/oof.npy': '9d5a37b627040b88',
        'models/tiny/ensembles/stack/test.npy': '6b909fd7f812396e',
        'models/tiny/ensembles/vote/oof.npy': '8f07619577bbddc2',
        'models/tiny/ensembles/vote/test.npy': '8bbd828b6ec496ab',
        'models/tiny/lr/fold0/lr_coef.npy': '6590c746f5201e14',
        'models/tiny/lr/fold0/lr_intercept.npy': '1e4765a64f44300f',
        'models/tiny/lr/fold0/test_pred.npy': '7e220aa0d789c39c',
        'models/tiny/lr/fold0/val_pred.npy': '36245a29ccda6aef',
        'models/tiny/lr/fold1/lr_coef.npy': 'f31c73cc44e5d6e9',
        'models/tiny/lr/fold1/lr_intercept.npy': 'b72cbcc2c63085aa',
        'models/tiny/lr/fold1/test_pred.npy': 'adaeed8116d89eb8',
        'models/tiny/lr/fold1/val_pred.npy': 'c35e6fccb8f0c79a',
        'models/tiny/lr/fold2/lr_coef.npy': 'dab0700d2ad2bb6b',
        'models/tiny/lr/fold2/lr_intercept.npy': '5d4f857161e968dc',
        'models/tiny/lr/fold2/test_pred.npy': '66c78e0b7326e1bd',
        'models/tiny/lr/fold2/val_pred.npy': 'f78c32634e67f5d2',
        'models/tiny/lr/oof.npy': '34dd5dbb84e2dc8b',
        'models/tiny/lr/test.npy': '736b46c7ecceaa61',
        'models/tiny/lr/test_folds.npy': '38a6b4aa040edff8',
        'models/tiny/plgbm/fold0/test_pred.npy': '0b1ec5a7f830044b',
        'models/tiny/plgbm/fold0/val_pred.npy': '6eba837f0b9018aa',
        'models/tiny/plgbm/fold1/test_pred.npy': '719c7c134edd33e8',
        'models/tiny/plgbm/fold1/val_pred.npy': '4f304d6acb100eda',
        'models/tiny/plgbm/fold2/test_pred.npy': '3c9888fcafcff7ce',
        'models/tiny/plgbm/fold2/val_pred.npy': '36e2b0be19ddae3e',
        'models/tiny/plgbm/oof.npy': '7e846885642ab00f',
        'models/tiny/plgbm/test.npy': 'e9a78771da1805bb',
        'models/tiny/plgbm/test_folds.npy': '8db38402a9e4ca83',
        'models/tiny/tlgbm/fold0/test_pred.npy': '7f298f5052c8efba',
        'models/tiny/tlgbm/fold0/val_pred.npy': '010ed5d9dcf6aab1',
        'models/tiny/tlgbm/fold1/test_pred.npy': 'f2aa299cbe0a75e8',
        'models/tiny/tlgbm/fold1/val_pred.npy': '2ca81142002ddb18',
        'models/tiny/tlgbm/fold2/test_pred.npy': '641236287159f984',
        'models/tiny/tlgbm/fold2/val_pred.npy': '82c106a7d5086193',
        'models/tiny/tlgbm/oof.npy': 'af71b6853238a197',
        'models/tiny/tlgbm/test.npy': 'feec79bd01d43d9c',
        'models/tiny/tlgbm/test_folds.npy': 'f6d5bd4714e2fac2',
        'subs/tiny.csv': '8209d5b7088f10d9',
        'subs/tiny_best.csv': '8209d5b7088f10d9',
        'subs/tiny_blend.csv': '8209d5b7088f10d9',
        'subs/tiny_stack.csv': '8209d5b7088f10d9',
        'subs/tiny_vote.csv': '8209d5b7088f10d9',
        'work/tiny/folds.csv': '8925fd77cc546bc4',
    },
    3: {
        'models/tiny/ensembles/best/oof.npy': '6a57dcf4301781eb',
        'models/tiny/ensembles/best/test.npy': '8b45c4e11c668585',
        'models/tiny/ensembles/blend/oof.npy': 'c2589d6ad524f5c7',
        'models/tiny/ensembles/blend/test.npy': '6a73a04643be4985',
        'models/tiny/ensembles/stack/oof.npy': 'c5375a7ddb1aa260',
        'models/tiny/ensembles/stack/test.npy': '39e7347488ec09b4',
        'models/tiny/ensembles/vote/oof.npy': 'd6fca0953a7fd6f7',
        'models/tiny/ensembles/vote/test.npy': 'ebb92372f8b64fef',
        'models/tiny/lr/fold0/lr_coef.npy': 'eed7e6aa882bdac6',
        'models/tiny/lr/fold0/lr_intercept.npy': '5b7a22e9a0689251',
        'models/tiny/lr/fold0/test_pred.npy': 'f299a6f6addda1a2',
        'models/tiny/lr/fold0/val_pred.npy': '016da19df4187b02',
        'models/tiny/lr/fold1/lr_coef.npy': 'c44646b32837561c',
        'models/tiny/lr/fold1/lr_intercept.npy': '4fda7bf2bc658aa9',
        'models/tiny/lr/fold1/test_pred.npy': '713466011eadd435',
        'models/tiny/lr/fold1/val_pred.npy': 'a01ac092e7692175',
        'models/tiny/lr/fold2/lr_coef.npy': 'b24d2c1ba7546eee',
        'models/tiny/lr/fold2/lr_intercept.npy': '58a4f610020bf876',
        'models/tiny/lr/fold2/test_pred.npy': '0197bc5b91798948',
        'models/tiny/lr/fold2/val_pred.npy': '72975b961ff5f122',
        'models/tiny/lr/oof.npy': '2579e28e90e09f81',
        'models/tiny/lr/test.npy': '9d002d2b3e683282',
        'models/tiny/lr/test_folds.npy': '452c618378cea32a',
        'models/tiny/plgbm/fold0/test_pred.npy': '5c390fe5a7bd7f00',
        'models/tiny/plgbm/fold0/val_pred.npy': 'e6ef4a0c29bd3d0d',
        'models/tiny/plgbm/fold1/test_pred.npy': '1ec43c53778e0efb',
        'models/tiny/plgbm/fold1/val_pred.npy': '2ce72586cb675910',
        'models/tiny/plgbm/fold2/test_pred.npy': 'e09bff516bee41ec',
        'models/tiny/plgbm/fold2/val_pred.npy': '776a203b7125446b',
        'models/tiny/plgbm/oof.npy': 'b1c705061bb4460a',
        'models/tiny/plgbm/test.npy': '41278040148bdb32',
        'models/tiny/plgbm/test_folds.npy': 'f5f9f3af52965761',
        'models/tiny/tlgbm/fold0/test_pred.npy': '56d3d79b0b024296',
        'models/tiny/tlgbm/fold0/val_pred.npy': 'cd67d436f60776bb',
        'models/tiny/tlgbm/fold1/test_pred.npy': '583687250dc93525',
        'models/tiny/tlgbm/fold1/val_pred.npy': '79ada5f3565dd26f',
        'models/tiny/tlgbm/fold2/test_pred.npy': 'dd9b9c3734649ff9',
        'models/tiny/tlgbm/fold2/val_pred.npy': '196a493941a97873',
        'models/tiny/tlgbm/oof.npy': 'e5548ea861da78ce',
        'models/tiny/tlgbm/test.npy': '8b45c4e11c668585',
        'models/tiny/tlgbm/test_folds.npy': '3caf8f13756e3ef1',
        'subs/tiny.csv': '3f141c938d142f18',
        'subs/tiny_best.csv': '4c37eba082abe47d',
        'subs/tiny_blend.csv': 'cedb543b397f42be',
        'subs/tiny_stack.csv': '3f141c938d142f18',
        'subs/tiny_vote.csv': '600635d07aca879f',
        'work/tiny/folds.csv': '58fa18dd6c9fdc65',
    },
}


@pytest.mark.parametrize("classes", [2, 3])
def test_classification_outputs_unchanged(tmp_path, classes):
    got = hashes(build(tmp_path, classes))
    assert got == GOLDEN[classes]


if __name__ == "__main__":
    import tempfile

    for c in (2, 3):
        with tempfile.TemporaryDirectory() as d:
            print(c, hashes(build(Path(d), c)))
