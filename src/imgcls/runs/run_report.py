"""``report.html``: one file per run to hand to a colleague. Headline metrics, curves, confusion
matrix and per-class table, the most confident mistakes, calibration and data checks, and the
run record. Every number is read from ``metrics.json``/``run.json`` and written as they write it
(``json.dumps``); figures are inline PNGs, so the file opens from disk with the network off."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from imgcls.runs import html
from imgcls.runs.history import read_history
from imgcls.runs.record import RECORD_FILE

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
Mistake = tuple[Any, str, str, float]  # display uint8 (3, H, W), true, predicted, confidence


def diagnostics_of(trainer: Any) -> tuple[dict[str, Any] | None, list[Mistake]]:
    """The diagnostics callback's last test (else val) results as plain data for metrics.json,
    and its most confident mistakes (images) for the report."""
    from imgcls.callbacks.diagnostics import ClassificationDiagnostics

    cb = next((c for c in trainer.callbacks if isinstance(c, ClassificationDiagnostics)), None)
    results = getattr(cb, "results", {})
    found = results.get("test") or results.get("val")
    if not found:
        return None, []
    mistakes = found["mistakes"]
    plain = {k: v for k, v in found.items() if k != "mistakes"}
    plain["mistakes"] = [
        {"true": t, "pred": p, "confidence": round(c, 6)} for _, t, p, c in mistakes
    ]
    return plain, mistakes


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _metrics_section(metrics: dict[str, Any], summary: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in sorted(metrics.items())]
    about = {
        k: v
        for k, v in summary.items()
        if k not in ("metrics", "diagnostics", "data_checks") and not isinstance(v, dict)
    }
    return html.section("Metrics", html.table(("metric", "value"), rows), html.kv_table(about))


def _curves_section(run_dir: Path) -> str:
    history = read_history(run_dir)
    if not history:
        return html.section("Curves", html.note("no training epochs in this run"))
    from imgcls.runs.figures import curves_figure, png_bytes

    png = png_bytes(curves_figure(history))
    keys = sorted({k for r in history for k in r if k not in ("epoch", "step")})
    rows = [[r["epoch"], r["step"], *(r.get(k, "") for k in keys)] for r in history]
    return html.section(
        "Curves (per epoch, from epochs.jsonl)",
        html.image(png, "loss and accuracy per epoch, train and val"),
        html.table(("epoch", "step", *keys), rows),
    )


def _classes_section(diag: dict[str, Any] | None) -> str:
    if not diag:
        return html.section(
            "Confusion matrix", html.note("not collected (the diagnostics callback is off)")
        )
    from imgcls.runs.figures import confusion_figure, png_bytes

    names = diag["classes"]
    title = f"{diag['split']} split (rows: true, columns: predicted)"
    fig = png_bytes(confusion_figure(diag["confusion"], names, title))
    cols = ("precision", "recall", "f1", "support")
    rows = [[name, *(diag[c][i] for c in cols)] for i, name in enumerate(names)]
    return html.section(
        f"Confusion matrix and per-class metrics ({diag['split']} split)",
        html.image(fig, f"{diag['split']} confusion matrix"),
        html.table(("class", *cols), rows),
    )


def _mistakes_section(diag: dict[str, Any] | None, mistakes: list[Mistake]) -> str:
    if not mistakes:
        text = "none kept" if diag else "not collected (the diagnostics callback is off)"
        return html.section("Most confident mistakes", html.note(text))
    from torchvision.io import encode_png

    thumbs = [
        html.thumbnail(bytes(encode_png(img.contiguous()).numpy()), f"true {t} → {p} ({c:.1%})")
        for img, t, p, c in mistakes
    ]
    split = diag["split"] if diag else ""
    return html.section(f"Most confident mistakes ({split} split)", "".join(thumbs))


def _optional_sections(summary: dict[str, Any]) -> list[str]:
    out = []
    ece = {k: v for k, v in summary.get("metrics", {}).items() if "ece" in k}
    if ece:
        rows = sorted(ece.items())
        text = "expected calibration error: 0 means the confidence matches the accuracy"
        out.append(
            html.section(
                "Calibration", html.note(text), html.table(("calibration metric", "value"), rows)
            )
        )
    checks = summary.get("data_checks")
    if isinstance(checks, dict):
        out.append(html.section("Data checks", html.kv_table(checks)))
    return out


def write_run_report(run_dir: str | Path, mistakes: list[Mistake] | None = None) -> Path:
    """``report.html`` in ``run_dir`` from its metrics.json, run.json and epochs.jsonl."""
    run_dir = Path(run_dir)
    summary = _read(run_dir / "metrics.json")
    record = _read(run_dir / RECORD_FILE)
    diag = summary.get("diagnostics") if isinstance(summary.get("diagnostics"), dict) else None
    task = record.get("task", "run")
    head = html.kv_table({k: record.get(k) for k in ("status", "started", "wall_time_s")})
    sections = [
        head,
        _metrics_section(summary.get("metrics", {}), summary),
        _curves_section(run_dir),
        _classes_section(diag),
        _mistakes_section(diag, mistakes or []),
        *_optional_sections(summary),
        html.section(
            "Run record (run.json)", html.kv_table(record) if record else html.note("none")
        ),
    ]
    from imgcls.utils.files import atomic_write_text

    out = run_dir / REPORT_FILE
    atomic_write_text(out, html.page(f"{task} report: {run_dir.name}", sections))
    return out
