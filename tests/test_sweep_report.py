"""The sweep's report.html: jobs table, mean ± 95 % t-interval per configuration, failed jobs."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import make_digit_datasets
import pytest

from imgcls.engine.sweeps.callback import write_summary
from imgcls.engine.sweeps.jobs import STATUS_FILE
from imgcls.engine.sweeps.report import t975
from tests.conftest import run_entry
from tests.test_run_record import parse_report

# Student's t 97.5 % quantiles (scipy.stats.t.ppf(0.975, df)), typed in by hand
T = {2: 4.302652729911275, 1: 12.706204736174707}


def _hand(values: list[float], t: float) -> str:
    mean = statistics.fmean(values)
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.6g} ± {half:.6g} [{mean - half:.6g}, {mean + half:.6g}] (n={len(values)})"


def _job(sweep: Path, num: int, overrides: list[str], metrics: dict | None, error: str = ""):
    d = sweep / str(num)
    d.mkdir(parents=True)
    status = {
        "num": num,
        "status": "failed" if error else "completed",
        "overrides": overrides,
        "value": None if metrics is None else metrics["val/acc_best"],
        "error": error,
        "run_dir": str(d),
    }
    (d / STATUS_FILE).write_text(json.dumps(status))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps({"metrics": metrics}))


def test_intervals_equal_a_hand_computation(tmp_path: Path) -> None:
    lenet = [(0.91, 0.90), (0.87, 0.88), (0.95, 0.93)]  # (val/acc_best, test/acc) per seed
    for seed, (v, t) in enumerate(lenet):
        _job(tmp_path, seed, ["model=lenet", f"seed={seed}"], {"val/acc_best": v, "test/acc": t})
    _job(tmp_path, 3, ["model=mlp", "seed=0"], {"val/acc_best": 0.8, "test/acc": 0.79})
    _job(tmp_path, 4, ["model=mlp", "seed=1"], None, error="ConfigError: model.net.hidden=-1")
    _job(tmp_path, 5, ["model=mlp", "seed=2"], {"val/acc_best": 0.84, "test/acc": 0.8})
    write_summary(tmp_path, "val/acc_best", "max")

    page = parse_report(tmp_path / "report.html")
    ci = page.table(["configuration", "jobs", "val/acc_best", "test/acc"])
    assert ci["model=lenet"] == [
        "0 1 2",
        _hand([v for v, _ in lenet], T[2]),
        _hand([t for _, t in lenet], T[2]),
    ]
    # the failed job counts for nothing: n=2, t with one degree of freedom
    assert ci["model=mlp"] == ["3 4 5", _hand([0.8, 0.84], T[1]), _hand([0.79, 0.8], T[1])]
    jobs = page.table(["job", "status", "overrides", "val/acc_best", "test/acc"])
    assert jobs["2 ★"] == ["completed", "model=lenet seed=2", "0.95", "0.93"]
    assert jobs["4"][:2] == ["failed", "model=mlp seed=1"]
    failed = page.table(["job", "status", "error", "run dir"])
    assert failed["4"][:2] == ["failed", "ConfigError: model.net.hidden=-1"]
    assert len(page.images) == 1  # the comparison plot
    assert "Configurations compared (val/acc_best)" in page.text


def test_t_quantiles_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 40), 50, 100, 1000]:
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=3e-6), df


def _check_sweep(sweep: Path, metric: str) -> None:
    values = [
        json.loads((sweep / str(j) / "metrics.json").read_text())["metrics"][metric]
        for j in range(3)
    ]
    page = parse_report(sweep / "report.html")
    (row,) = [r for t in page.tables for r in t[1:] if t[0][:2] == ["configuration", "jobs"]]
    assert row[:2] == ["(all jobs)", "0 1 2"]
    assert row[2] == _hand(values, T[2])
    assert len(page.images) == 1


@pytest.mark.slow
def test_three_seed_sweep_report(tmp_path: Path) -> None:
    proc = run_entry(
        "train",
        "-m",
        "seed=1,2,3",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "logger=none",
        "data.eval_batch_size=200",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    _check_sweep(sweep, "val/acc_best")


@pytest.mark.slow
def test_three_fold_sweep_report(tmp_path: Path) -> None:
    digits = tmp_path / "digits"
    args = ["--out", str(digits), "--train", "120", "--test", "30", "--forms", "csv"]
    assert make_digit_datasets.main(args) == 0
    proc = run_entry(
        "train",
        "-m",
        "data=csv",
        f"data.root={digits}/digits_csv",
        "data.num_folds=3",
        "data.fold=0,1,2",
        "optimized_metric=val/acc",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "logger=none",
        "test=false",
        "data.cache_dir=null",
        "data.batch_size=32",
        f"paths.log_dir={tmp_path}/logs",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    _check_sweep(sweep, "val/acc")
    assert "mean ± 95 % CI over folds" in (sweep / "report.html").read_text()
