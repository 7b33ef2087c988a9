"""A shards datamodule that records which sample indices each rank receives (for tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgcls.data.shards_datamodule import ShardsDataModule


class RecordingShardsDataModule(ShardsDataModule):
    """Appends every batch's sample indices to ``<record_dir>/<stage>-rank<r>-epoch<e>.txt``."""

    def __init__(self, record_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record_dir = Path(record_dir)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        t = self.trainer
        if t is not None and not t.sanity_checking:
            stage = "train" if t.training else "val" if t.validating else "other"
            self.record_dir.mkdir(parents=True, exist_ok=True)
            name = f"{stage}-rank{t.global_rank}-epoch{t.current_epoch}.txt"
            with open(self.record_dir / name, "a") as f:
                f.write("".join(f"{int(i)}\n" for i in batch[3]))
        return super().on_after_batch_transfer(batch, dataloader_idx)
