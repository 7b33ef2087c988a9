"""DataSpec: the single hand-over from a datamodule to the model it feeds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DataSpec:
    """What a model must know about its data; stored in checkpoints as plain types.

    Attributes:
        num_classes: number of target classes.
        in_channels: channels of the model input (1 grayscale, 3 RGB).
        image_size: (height, width) of the model input.
        class_names: class names in label-index order (predictions print these).
        mean: per-channel normalization mean (input in [0, 1]).
        std: per-channel normalization std.
        eval_transform: how an eval/predict image becomes the model input before normalizing,
            as plain data; ``None``: resized to ``image_size`` (the memory path). The stream
            path records ``{"resize": [h, w] | shorter_side, "crop": [h, w], "interpolation",
            "antialias"}`` (``imgcls.data.streaming.build_eval_transform`` applies it).
    """

    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_transform: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"mean/std need {self.in_channels} values, got {self.mean}/{self.std}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataSpec:
        return cls(
            num_classes=int(d["num_classes"]),
            in_channels=int(d["in_channels"]),
            image_size=(int(d["image_size"][0]), int(d["image_size"][1])),
            class_names=tuple(str(c) for c in d["class_names"]),
            mean=tuple(float(m) for m in d["mean"]),
            std=tuple(float(s) for s in d["std"]),
            eval_transform=dict(d["eval_transform"]) if d.get("eval_transform") else None,
        )

    def incompatibilities(self, other: DataSpec) -> list[str]:
        """Fields where ``other`` would feed this spec's model differently (empty when compatible)."""
        return [
            f"{name}: {getattr(self, name)!r} != {getattr(other, name)!r}"
            for name in ("num_classes", "in_channels", "image_size", "class_names")
            if getattr(self, name) != getattr(other, name)
        ]
