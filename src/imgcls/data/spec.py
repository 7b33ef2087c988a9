"""DataSpec: the single hand-over from a datamodule to the model it feeds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DataSpec:
    """What a model must know about its data; stored in checkpoints as plain types."""

    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # (height, width) of the model input
    class_names: tuple[str, ...]  # in label-index order
    mean: tuple[float, ...]  # per channel, input in [0, 1]
    std: tuple[float, ...]
    # how an eval/predict image becomes the model input, as plain data for
    # ``streaming.eval_decoder``; None: resized to image_size (the memory path)
    eval_transform: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"mean/std need {self.in_channels} values, got {self.mean}/{self.std}")

    def net_sizes(self) -> dict[str, Any]:
        """What every net is built with (``imgcls.models.nets``)."""
        sizes = (self.in_channels, self.num_classes, list(self.image_size))
        return dict(zip(("in_channels", "num_classes", "image_size"), sizes, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

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
