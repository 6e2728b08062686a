"""Nothing regresses: the classification path gives the matrices and submissions the code gave
before task types existed, and the regression and multilabel paths what they gave before the
package was layered.

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


# max_bin 255: the bins tfidf_lgbm used before its default became 7 (the golden hashes predate it)
TLGBM = {"n_estimators": 15, "n_jobs": 1, "min_df": 1, "max_bin": 255}


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
                          "params": TLGBM})
    cfg["ensemble"] = {"methods": ["stack", "blend", "vote", "best"], "submit": "auto"}
    e = Exp(tmp, tmp / "tiny.yaml")
    e.write_config(cfg)
    return e


def build_task(tmp: Path, task: str) -> Exp:
    """A tiny regression (pair scores, ridge + pair LightGBM) or multilabel (single texts, three
    0/1 labels, per-label LR + LightGBM) experiment with every ensemble method."""
    (tmp / "in").mkdir(parents=True)
    train, test = tiny_pairs(90, 0), tiny_pairs(30, 1, labelled=False)
    cfg = base_config(tmp)
    methods = ["stack", "blend", "vote", "best", "select", "rank"]
    if task == "regression":
        train["label"] = [round((i * 7 % 11) / 2.0 + train["label"][i], 1) for i in range(len(train))]
        cfg.update(task="regression", metric="pearson")
    else:
        for j, c in enumerate(["g", "b", "n"]):
            train[c] = [(i + j) % 2 if j < 2 else (i // 2) % 2 for i in range(len(train))]
        train, test = train.drop(columns=["label", "text_b"]), test.drop(columns=["text_b"])
        cfg.update(task="multilabel", metric="roc_auc")
        cfg["data"].update(label=["g", "b", "n"], text_b=None)
        cfg["models"] = [cfg["models"][0], {"name": "tlgbm", "kind": "tfidf_lgbm", "view": "lemma",
                                            "params": TLGBM}]
    train.to_csv(tmp / "in" / "train.csv", index=False)
    test.to_csv(tmp / "in" / "test.csv", index=False)
    cfg["ensemble"] = {"methods": methods, "submit": "auto"}
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


# The same for the other task types, recorded with the code before the package was layered
# (commit 2e3f4eb), on the project's machine (Intel Xeon with AMX).
GOLDEN_TASKS: dict[str, dict[str, str]] = {'multilabel': {'models/tiny/ensembles/best/oof.npy': 'abcb2687b3ebb342',
                'models/tiny/ensembles/best/test.npy': 'd553b14f766c4ab9',
                'models/tiny/ensembles/blend/oof.npy': '99f408871ab22bda',
                'models/tiny/ensembles/blend/test.npy': 'd32ab0fe03b07b4e',
                'models/tiny/ensembles/rank/oof.npy': '4dbff6e8094a175f',
                'models/tiny/ensembles/rank/test.npy': '6124ac8272622249',
                'models/tiny/ensembles/select/oof.npy': 'abcb2687b3ebb342',
                'models/tiny/ensembles/select/test.npy': 'd553b14f766c4ab9',
                'models/tiny/ensembles/stack/oof.npy': '21e6c54ef4604a75',
                'models/tiny/ensembles/stack/test.npy': '30bafbafcf9b5a40',
                'models/tiny/ensembles/vote/oof.npy': '1c8fe5e91e41ec1f',
                'models/tiny/ensembles/vote/test.npy': '36951efedadc85c4',
                'models/tiny/lr/fold0/lr_coef.npy': 'af8821c4c147586b',
                'models/tiny/lr/fold0/lr_intercept.npy': 'a46073ca7afa66a3',
                'models/tiny/lr/fold0/test_pred.npy': 'c6ebb649e7f0bf81',
                'models/tiny/lr/fold0/val_pred.npy': '8c07c110de321c1a',
                'models/tiny/lr/fold1/lr_coef.npy': '044ae936ff52afcb',
                'models/tiny/lr/fold1/lr_intercept.npy': '8961a2ab26b9bc44',
                'models/tiny/lr/fold1/test_pred.npy': '187ff7e55193a888',
                'models/tiny/lr/fold1/val_pred.npy': 'c9e58d91b0a2a80a',
                'models/tiny/lr/fold2/lr_coef.npy': '84e02ef1a8b68fb4',
                'models/tiny/lr/fold2/lr_intercept.npy': '0b8cd0c827e73fda',
                'models/tiny/lr/fold2/test_pred.npy': '66b552e4494e45d8',
                'models/tiny/lr/fold2/val_pred.npy': '6e2d747081992683',
                'models/tiny/lr/oof.npy': '0c4e9af073286e3b',
                'models/tiny/lr/test.npy': 'de54197fc8f50736',
                'models/tiny/lr/test_folds.npy': '1d2fd5d861816c9b',
                'models/tiny/tlgbm/fold0/test_pred.npy': '7bce45afc8affa77',
                'models/tiny/tlgbm/fold0/val_pred.npy': '8e2f7b33fe9274a8',
                'models/tiny/tlgbm/fold1/test_pred.npy': '862e723de8e0fb58',
                'models/tiny/tlgbm/fold1/val_pred.npy': '6959d556e6fe50a8',
                'models/tiny/tlgbm/fold2/test_pred.npy': 'be3ef335afbb3d5c',
                'models/tiny/tlgbm/fold2/val_pred.npy': '875d7cc1daf7d591',
                'models/tiny/tlgbm/oof.npy': 'abcb2687b3ebb342',
                'models/tiny/tlgbm/test.npy': 'd553b14f766c4ab9',
                'models/tiny/tlgbm/test_folds.npy': 'f3fd9120f3750744',
                'subs/tiny.csv': '1f0c63f12c135708',
                'subs/tiny_best.csv': 'f006564e03fd68fd',
                'subs/tiny_blend.csv': 'f006564e03fd68fd',
                'subs/tiny_rank.csv': '549ece2282540178',
                'subs/tiny_select.csv': 'f006564e03fd68fd',
                'subs/tiny_stack.csv': '1f0c63f12c135708',
                'subs/tiny_vote.csv': '64aef2dc58ad8db0',
                'work/tiny/folds.csv': '17ab7dd638446957'},
 'regression': {'models/tiny/ensembles/best/oof.npy': '8da83942262696c7',
                'models/tiny/ensembles/best/test.npy': 'cd08a58aeeaf74ce',
                'models/tiny/ensembles/blend/oof.npy': '0fb4be61ba405c85',
                'models/tiny/ensembles/blend/test.npy': '73e00a1cae40cdd8',
                'models/tiny/ensembles/rank/oof.npy': '3abc7dfe2545afa1',
                'models/tiny/ensembles/rank/test.npy': '50262f57a39da33a',
                'models/tiny/ensembles/select/oof.npy': '2d16c4ce2d466f20',
                'models/tiny/ensembles/select/test.npy': 'cd08a58aeeaf74ce',
                'models/tiny/ensembles/stack/oof.npy': '61f9984cb65aefd3',
                'models/tiny/ensembles/stack/test.npy': '05a4f29279bb8303',
                'models/tiny/ensembles/vote/oof.npy': 'e008fcbb87a28303',
                'models/tiny/ensembles/vote/test.npy': '40b6a0a85692228b',
                'models/tiny/lr/fold0/lr_coef.npy': 'b022d83d6155e984',
                'models/tiny/lr/fold0/lr_intercept.npy': '4b8abc1b19baf681',
                'models/tiny/lr/fold0/test_pred.npy': 'f2d2c311633b5b8b',
                'models/tiny/lr/fold0/val_pred.npy': 'c5684a6e70781d9c',
                'models/tiny/lr/fold1/lr_coef.npy': '9145b47fb0b8c6cd',
                'models/tiny/lr/fold1/lr_intercept.npy': 'c9803ee2c7af0cdd',
                'models/tiny/lr/fold1/test_pred.npy': '2a68e6cac198564f',
                'models/tiny/lr/fold1/val_pred.npy': '6388cef06088da54',
                'models/tiny/lr/fold2/lr_coef.npy': 'd3a11f47832681a6',
                'models/tiny/lr/fold2/lr_intercept.npy': '0816f897423bd662',
                'models/tiny/lr/fold2/test_pred.npy': '76b8421de5e7c185',
                'models/tiny/lr/fold2/val_pred.npy': '9e53fd9dea51f88b',
                'models/tiny/lr/oof.npy': 'f57c7c52fa8373d8',
                'models/tiny/lr/test.npy': 'e7b31ada80f15c13',
                'models/tiny/lr/test_folds.npy': '3c765df6cbf5a460',
                'models/tiny/plgbm/fold0/test_pred.npy': 'e9b4f59c7ffbe16d',
                'models/tiny/plgbm/fold0/val_pred.npy': 'a7f6ddb24c3a2d3f',
                'models/tiny/plgbm/fold1/test_pred.npy': 'd254fde8d2127009',
                'models/tiny/plgbm/fold1/val_pred.npy': 'f21ab5ad4712feb3',
                'models/tiny/plgbm/fold2/test_pred.npy': '01b9f18896ff2e47',
                'models/tiny/plgbm/fold2/val_pred.npy': '55055f4c6aeaf4b2',
                'models/tiny/plgbm/oof.npy': 'e90b96ce22549ded',
                'models/tiny/plgbm/test.npy': 'cd08a58aeeaf74ce',
                'models/tiny/plgbm/test_folds.npy': 'e13ece8f0246676f',
                'subs/tiny.csv': '8bb366f6d12c591d',
                'subs/tiny_best.csv': '74c4458c2b382191',
                'subs/tiny_blend.csv': '95bf8392fd5015de',
                'subs/tiny_rank.csv': '4fecc57aac861ad6',
                'subs/tiny_select.csv': '74c4458c2b382191',
                'subs/tiny_stack.csv': '876ae3e2924ce169',
                'subs/tiny_vote.csv': '8bb366f6d12c591d',
                'work/tiny/folds.csv': '35cc8cc278d51a20'}}


@pytest.mark.parametrize("classes", [2, 3])
def test_classification_outputs_unchanged(tmp_path, classes):
    got = hashes(build(tmp_path, classes))
    assert got == GOLDEN[classes]


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_other_task_outputs_unchanged(tmp_path, task):
    assert hashes(build_task(tmp_path, task)) == GOLDEN_TASKS[task]


if __name__ == "__main__":
    import tempfile

    for c in (2, 3):
        with tempfile.TemporaryDirectory() as d:
            print(c, hashes(build(Path(d), c)))
    for t in ("regression", "multilabel"):
        with tempfile.TemporaryDirectory() as d:
            print(t, hashes(build_task(Path(d), t)))
