"""bench/packed_attention.py's CPU smoke mode: every variant that runs on a CPU runs, and the ones that
could replace tunery's segments give the same attention (the evaluation in
bench/results/packed_attention.md rests on it)."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).parents[2] / "bench" / "packed_attention.py"


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_packed_attention", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_smoke_mode_compares_every_cpu_variant_with_segments(capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention warns that it materialises the scores: smoke shapes
        assert _bench().main(["--smoke", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["setup"]["dtype"] == "float32"
    assert r["setup"]["examples"] > r["setup"]["rows"]  # rows hold several examples each
    by_name = {row["variant"]: row for row in r["results"]}
    assert set(by_name) == {"segments", "mask", "flex"} and set(r["skipped"]) == {"varlen"}
    assert by_name["mask"]["out_diff"] < 1e-5 and by_name["mask"]["grad_diff"] < 1e-5
    assert by_name["flex"]["out_diff"] < 1e-5
    assert by_name["flex"]["forward_backward_s"] is None  # no CPU backward for FlexAttention in torch 2.13
    assert all(row["forward_s"] > 0 for row in r["results"])
