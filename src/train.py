"""Train a model: ``python src/train.py [group=option ...] [key=value ...]``."""

import hydra
from omegaconf import DictConfig

from imgcls.tasks.run import run_task
from imgcls.tasks.train import train


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | list[float] | None:
    return run_task(train, cfg)


if __name__ == "__main__":
    main()
