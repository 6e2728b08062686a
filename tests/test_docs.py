"""The README and docs/ stay true: the config reference is the code's, every key has a meaning."""
from __future__ import annotations

from conftest import ROOT
from pipeline.reference import PAGE, config_reference


def test_the_config_reference_is_the_codes():
    page = (ROOT / PAGE).read_text(encoding="utf-8")
    assert page == config_reference(), \
        f"{PAGE} disagrees with the code: python -m pipeline.init --config-reference > {PAGE}"


def test_every_config_key_says_what_it_means():
    rows = [line for line in config_reference().splitlines() if line.startswith("| `")]
    assert len(rows) > 100
    assert [r.split("|")[1].strip() for r in rows if r.split("|")[4].strip() == ""] == []   # key | type | default | meaning
