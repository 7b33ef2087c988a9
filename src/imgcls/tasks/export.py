"""Export a checkpoint to ONNX, TorchScript or a ``torch.export`` program, and prove parity.

The graph is the net alone (normalized ``float32 (N, C, H, W)`` in, logits out, dynamic batch);
what feeds it (class names, size, mean/std, exact preprocessing) goes into a sidecar JSON (and
the TorchScript/pt2 archive). Parity: max |Δlogits| vs the Lightning module on a real batch."""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from imgcls.builder import build_datamodule
from imgcls.data.images import decode_steps, load_image
from imgcls.data.spec import DataSpec
from imgcls.data.transforms import normalize
from imgcls.engine.streaming.loader import load_for_eval
from imgcls.errors import ConfigError, DataError, ExportError, UserError
from imgcls.models.load import load_classifier
from imgcls.tasks.checkpoint_data import stored_datamodule
from imgcls.tasks.predict_inputs import list_inputs
from imgcls.tasks.run import apply_extras

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
Runner = Callable[[Tensor], Tensor]  # an exported model, loaded back for the parity check


def preprocessing(spec: DataSpec) -> dict[str, Any]:
    """How an image file becomes the model's input, exactly as predict.py does it (``steps``:
    ``op`` plus the PIL ``call``, from the one decode function). A streamed checkpoint applies
    its recorded eval transform (resize + center crop) instead of the fixed resize."""
    steps = decode_steps(spec.in_channels, spec.image_size, spec.eval_transform)
    mean, std = list(spec.mean), list(spec.std)
    scale = "x.astype(np.float32) / 255, stack a batch (N, C, H, W)"
    steps.append(dict(op="scale", call=scale, factor=1 / 255, dtype="float32"))
    norm = "(x - mean[c]) / std[c] per channel c"
    steps.append(dict(op="normalize", call=norm, mean=mean, std=std))
    out: dict[str, Any] = {
        "steps": steps,
        "channels": spec.in_channels,
        "image_size": list(spec.image_size),
        "scale": 1 / 255,
        "mean": mean,
        "std": std,
        "output": "logits (N, num_classes); softmax gives probabilities, argmax indexes class_names",
        "reference_implementation": "imgcls.data.images.load_image + imgcls.data.transforms.normalize",
    }
    if spec.eval_transform:  # a streamed checkpoint: resize + center crop, recorded exactly
        out["eval_transform"] = dict(spec.eval_transform)
        out["reference_implementation"] = (
            "imgcls.engine.streaming.loader.load_for_eval + imgcls.data.transforms.normalize"
        )
    return out


class Calibrated(nn.Module):
    """The net with its fitted temperature: the exported logits are ``net(x) / T``."""

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        self.net, self.temperature = net, float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) / self.temperature


def sidecar(
    spec: DataSpec,
    fmt: str,
    model_file: Path,
    ckpt: str,
    net_target: str,
    temperature: float | None = None,
) -> dict:
    calibration = (
        {"temperature": temperature, "calibration": "the graph divides the logits by temperature "
         "(fitted on the validation split): softmax gives calibrated probabilities, as predict.py"}
        if temperature is not None else {}
    )  # fmt: skip
    return {
        "format": fmt,
        "model_file": model_file.name,
        "checkpoint": str(ckpt),
        "net": net_target,
        "input": dict(
            name=INPUT_NAME, shape=["N", spec.in_channels, *spec.image_size], dtype="float32"
        ),
        "output": dict(name=OUTPUT_NAME, shape=["N", spec.num_classes], dtype="float32"),
        "num_classes": spec.num_classes,
        "class_names": list(spec.class_names),
        "preprocessing": preprocessing(spec),
        "torch_version": torch.__version__,
        **calibration,
    }


def _from_datamodule(cfg: DictConfig, spec: DataSpec, n: int, dm: Any = None) -> Tensor:
    dm = build_datamodule(cfg, dm)
    mismatch = spec.incompatibilities(dm.spec)
    if mismatch:
        raise ConfigError(
            f"data={cfg.data._target_} does not match the checkpoint: " + "; ".join(mismatch)
        )
    assert dm.splits is not None
    name = next(s for s in ("test", "val", "predict", "train") if s in dm.splits)
    ds = dm.splits[name]
    if hasattr(ds, "images"):
        return ds.images[:n]
    # stream path: decode the first n through the eval transform
    return torch.stack([x for x, _, _ in (ds[i] for i in range(min(n, len(ds)))) if x is not None])


def _from_files(source: str, spec: DataSpec, n: int) -> Tensor:
    images = []
    for item in list_inputs(source).items:
        if item.error:  # e.g. an empty CSV cell
            log.warning("parity batch: skipping %s", item.error)
            continue
        c, where = spec.in_channels, item.where
        try:
            if spec.eval_transform:
                images.append(load_for_eval(item.path, c, spec.eval_transform, where))
            else:
                images.append(load_image(item.path, c, spec.image_size, where))
        except UserError as e:
            log.warning("parity batch: skipping %s", e)
        if len(images) == n:
            break
    if not images:
        raise ConfigError(f"input={source} has no readable image for the parity batch")
    return torch.stack(images)


def parity_batch(cfg: DictConfig, spec: DataSpec) -> tuple[Tensor, str]:
    """uint8 images for the parity check and where they came from: ``input=``, ``data=``, the
    checkpoint's training run's data, else random pixels (and the report says so)."""
    n = int(cfg.get("parity_images", 64))
    if cfg.get("input"):
        return _from_files(str(cfg.input), spec, n), f"images from input={cfg.input}"
    if cfg.get("data"):
        return _from_datamodule(cfg, spec, n), f"data={cfg.data._target_}"
    stored = stored_datamodule(cfg, cfg.ckpt_path)  # checked by the trust boundary
    if stored is not None:
        where = f"the training run's data ({cfg.data._target_})"
        try:
            return _from_datamodule(cfg, spec, n, stored[0]), where
        except (DataError, ConfigError) as e:  # moved or changed data: fall through, say why
            why = f"{type(e).__name__}: {e}"
            log.warning("cannot load the training run's data for the parity batch (%s)", why)
    log.warning(
        "no real images found: parity is checked on random pixels (pass input=<images> or data=<name>)"
    )
    g = torch.Generator().manual_seed(0)
    shape = (n, spec.in_channels, *spec.image_size)
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    return pixels, "RANDOM pixels (no real images found)"


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


ONNX_MAX_INLINE_BYTES = 1_800_000_000  # protobuf caps one file at 2 GB


def _needs_external_data(net: nn.Module) -> bool:
    size = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
    return size > ONNX_MAX_INLINE_BYTES


def model_files(out: Path) -> list[str]:
    """Every file the exported model needs, beside the sidecar (ONNX external data included)."""
    extra = out.with_name(out.name + ".data")
    return [out.name] + ([extra.name] if extra.is_file() else [])


def export_onnx(net: nn.Module, example: Tensor, out: Path, meta: dict) -> Runner | None:
    """Write ``out`` with the dynamo exporter; return a runner through onnxruntime, or ``None``."""
    # the exporter's optimizer passes log every step at INFO
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    external = _needs_external_data(net)
    stale = out.with_name(out.name + ".data")
    if not external and stale.is_file():  # from an earlier export: not part of this model
        stale.unlink()
    try:
        torch.onnx.export(
            net,
            (example,),
            str(out),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=_dynamic_batch(),
            dynamo=True,
            verbose=False,
            # one self-contained file unless protobuf's 2 GB limit forbids it: a separate
            # model.onnx.data is lost when only model.onnx is copied
            external_data=external,
        )
    except ImportError as e:  # onnxscript / onnx missing
        raise ExportError(
            f"ONNX export needs the 'export' extra (pip install 'imgcls[export]'): {e}"
        ) from None
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta["runtime"] = f"onnxruntime {ort.__version__} (CPUExecutionProvider)"
    return lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])


def export_torchscript(net: nn.Module, example: Tensor, out: Path, meta: dict) -> Runner:
    with warnings.catch_warnings():  # torch.jit is deprecated in favor of torch.export (format=pt2)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(net, example)
        torch.jit.save(traced, str(out), _extra_files={"imgcls.json": json.dumps(meta)})
        loaded = torch.jit.load(str(out))
    meta["runtime"] = f"torch.jit.load (torch {torch.__version__})"
    return loaded


def export_pt2(net: nn.Module, example: Tensor, out: Path, meta: dict) -> Runner:
    program = torch.export.export(net, (example,), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, str(out), extra_files={"imgcls.json": json.dumps(meta)})
    meta["runtime"] = f"torch.export.load (torch {torch.__version__})"
    return torch.export.load(str(out)).module()


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript, "pt2": export_pt2}


def _parity(
    runner: Any, x: Tensor, reference: Tensor, source: str, meta: dict, tol: float, out: Path
) -> str:
    """Fill ``meta["parity"]`` and return the report line."""
    runtime = meta.pop("runtime", None)
    if runner is None:
        meta["parity"] = {"checked": False, "reason": "onnxruntime is not installed"}
        return (
            f"parity NOT checked: onnxruntime is not installed (pip install 'imgcls[export]'); "
            f"{out} was written but not run"
        )
    with torch.inference_mode():
        got = runner(x.contiguous()).float()
    diff = float((got - reference).abs().max())
    agree = int((got.argmax(1) == reference.argmax(1)).sum())
    meta["parity"] = {
        "checked": True,
        "passed": diff <= tol,
        "max_abs_diff_logits": diff,
        "tolerance": tol,
        "images": len(x),
        "source": source,
        "runtime": runtime,
        "top1_agreement": agree / len(x),
    }
    return (
        f"parity {'OK' if diff <= tol else 'FAILED'}: max |Δlogits| = {diff:.3g} (tolerance "
        f"{tol:g}) on {len(x)} images from {source}, {runtime} vs the Lightning module; "
        f"top-1 agrees on {agree}/{len(x)}"
    )


def export(cfg: DictConfig) -> dict[str, float]:
    """Export ``ckpt_path`` to ``format``, write the sidecar JSON, check parity on a real batch."""
    apply_extras(cfg)
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "export needs a checkpoint: python src/export.py ckpt_path=<file.ckpt> format=onnx"
        )
    fmt = str(cfg.get("format", "onnx")).lower()
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} must be one of {sorted(FORMATS)}")
    model = load_classifier(cfg.ckpt_path)
    spec: DataSpec = model.spec
    out = Path(cfg.get("output") or Path(cfg.paths.output_dir) / f"model{FORMATS[fmt]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    images, source = parity_batch(cfg, spec)
    x = normalize(images, spec.mean, spec.std)
    with torch.inference_mode():
        reference = model(x).float()
    # The net alone with plain contiguous weights (no layout assumption in the file); batch 2
    # as the example keeps the exported batch dimension symbolic.
    net = copy.deepcopy(model.net).to(memory_format=torch.contiguous_format).eval()
    temperature = float(model.get_buffer("temperature")) if model.calibrated else None
    if temperature is not None:
        net = Calibrated(net, temperature).eval()
    example = x[:2] if len(x) >= 2 else x.repeat(2, 1, 1, 1)
    target = str(model.hparams["net"].get("_target_"))
    meta = sidecar(spec, fmt, out, str(cfg.ckpt_path), target, temperature)
    log.info("exporting %s to %s (%s)", cfg.ckpt_path, out, fmt)
    runner = EXPORTERS[fmt](net, example, out, meta)
    tol = float(cfg.get("tolerance", 1e-4))
    msg = _parity(runner, x, reference, source, meta, tol, out)
    parity = meta["parity"]
    (log.info if parity["checked"] else log.warning)(msg)
    agreement = parity.pop("top1_agreement", None)
    meta["files"] = model_files(out)
    side = out.with_suffix(out.suffix + ".json")
    side.write_text(json.dumps(meta, indent=2))
    log.info("model: %s; metadata (class names, preprocessing, parity): %s", out, side)
    if not parity["checked"]:
        return {}
    if not parity["passed"]:
        raise ExportError(
            f"exported model differs from the checkpoint: max |Δlogits| = "
            f"{parity['max_abs_diff_logits']:.3g} > tolerance {tol:g} (files kept for "
            f"inspection: {out}, {side})"
        )
    return {
        "export/max_abs_diff": parity["max_abs_diff_logits"],
        "export/top1_agreement": agreement,
    }


__all__ = ["export", "parity_batch", "preprocessing", "FORMATS"]
