"""What a finished task reports: hyper-parameters to the loggers, metrics.json in the run dir."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from imgcls.builder import count_parameters
from imgcls.data.base_datamodule import NO_TEST_SPLIT
from imgcls.utils.config import flatten, to_plain
from imgcls.utils.console import log_to_files
from imgcls.utils.ranks import is_rank_zero

log = logging.getLogger(__name__)


def log_hyperparameters(
    cfg: DictConfig, model: L.LightningModule, loggers: list, metrics: tuple[str, ...] | None = None
) -> None:
    """The run's config and parameter counts to every logger; ``metrics``: the TensorBoard
    HParams columns (no ``test/*`` without a labeled test split)."""
    if not loggers:
        return
    trainable, total = count_parameters(model)
    keys = ("model", "data", "trainer", "seed", "task_name", "tags", "ckpt_path")
    params = {k: to_plain(cfg.get(k)) for k in keys}
    params["model"] = params["model"] or to_plain(dict(model.hparams))
    params |= {
        "params/total": total,
        "params/trainable": trainable,
        "params/non_trainable": total - trainable,
    }
    for logger in loggers:
        logger.log_hyperparams(params)
        if isinstance(logger, TensorBoardLogger):
            write_tensorboard_hparams(logger, params, metrics or HPARAM_METRICS)


# Metrics the TensorBoard HParams view shows against each run's hyper-parameters.
HPARAM_METRICS = ("val/acc_best", "test/acc")


@rank_zero_only
def write_tensorboard_hparams(
    logger: TensorBoardLogger, params: dict[str, Any], metrics: tuple[str, ...]
) -> None:
    """The HParams session with ``metrics`` as columns. Lightning writes it only with metric
    *values* (logged as fake step-0 scalars); TensorBoard reads the values from the runs' own
    scalars, so only the tags are declared here."""
    from torch.utils.tensorboard.summary import hparams

    flat = {
        k: v if isinstance(v, int | float | str | bool) else str(v)
        for k, v in flatten(params).items()
    }
    exp, ssi, sei = hparams(flat, dict.fromkeys(metrics, 0.0))
    writer = logger.experiment._get_file_writer()
    for summary in (exp, ssi, sei):
        writer.add_summary(summary)
    logger.experiment.flush()


def floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}


def hparam_metrics(has_test: bool) -> tuple[str, ...]:
    """The HParams columns for a run: ``test/*`` only with a labeled test split."""
    return tuple(m for m in HPARAM_METRICS if has_test or not m.startswith("test/"))


def test_note(has_test: bool) -> dict[str, Any]:
    """What metrics.json says about the test split (read back by the sweep tables)."""
    return {} if has_test else {"test": NO_TEST_SPLIT}


def write_summary(cfg: DictConfig, metrics: dict[str, float], extra: dict[str, Any]) -> None:
    if not is_rank_zero():
        return
    out = Path(cfg.paths.output_dir) / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"metrics": metrics, **extra}, indent=2, sort_keys=True))
    log.info("summary written to %s", out)


def report_run(
    cfg: DictConfig, trainer: L.Trainer, metrics: dict[str, float], extra: dict[str, Any], record
) -> None:
    """metrics.json (with the diagnostics callback's per-class results), run.json completed,
    then report.html from both (rank zero; a failed report is a warning, the run stands)."""
    from imgcls.runs.run_report import diagnostics_of, write_run_report

    diagnostics, mistakes = diagnostics_of(trainer)
    report(cfg, metrics, {**extra, "diagnostics": diagnostics} if diagnostics else extra)
    record.finish()
    if not is_rank_zero():
        return
    try:
        log.info("report: %s", write_run_report(cfg.paths.output_dir, mistakes))
    except Exception as e:  # e.g. a figure library problem: the run's results are written
        log.warning("report.html not written (%s: %s)", type(e).__name__, e)


def report(cfg: DictConfig, metrics: dict[str, float], extra: dict[str, Any]) -> None:
    """metrics.json in the run dir, and each final metric in the log file (the console ends
    with the run's result, ``imgcls.utils.console.final_lines``)."""
    write_summary(cfg, metrics, extra)
    for name in sorted(metrics):
        log_to_files(f"{name} = {metrics[name]:.5f}")


def _pairs_picture(dm: Any, report: Any) -> torch.Tensor | None:
    """The example pairs side by side (two columns), captioned with kind and name."""
    from imgcls.runs.figures import image_grid

    tiles, captions = [], []
    for p in report.pairs:
        for ref in (p.a, p.b):
            x = dm.example_image(*ref)
            tiles.append(x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3])
            captions.append(f"{p.kind.replace('_', ' ')}\n{report.name(ref)}")
    if not tiles or len({t.shape for t in tiles}) > 1:
        return None
    return image_grid(torch.stack(tiles), captions, columns=2, tile=160)


def report_data_checks(cfg: DictConfig, dm: Any, loggers: list) -> dict[str, Any]:
    """The data checks' pairs as ``data_checks.png`` in the run dir and TensorBoard text and
    image; returns the ``metrics.json`` entry."""
    report = getattr(dm, "check_report", None)
    if report is None or not is_rank_zero():
        return {} if report is None else {"data_checks": report.to_dict()}
    picture = _pairs_picture(dm, report)
    if picture is not None:
        from torchvision.io import write_png

        write_png(picture, str(Path(cfg.paths.output_dir) / "data_checks.png"))
    text = "\n".join(
        [f"- {k}: {v}" for k, v in report.counts.items()]
        + [f"- {kind}: `{a}` <-> `{b}`" for kind, ps in report.examples().items() for a, b in ps]
    )
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("data/checks", text, 0)
            if picture is not None:
                logger.experiment.add_image("data/check_pairs", picture, 0)
    return {"data_checks": report.to_dict()}
