"""imgcls: an image-classification research template (PyTorch Lightning + Hydra)."""

import warnings

from imgcls.utils.config import register_resolvers

# configs/hydra/launcher/submitit_*.yaml merge onto the submitit schema of the same name on
# purpose (typed fields); Hydra 1.3 warns that is deprecated. They are complete configs anyway.
warnings.filterwarnings(
    "ignore", message=r"(?s).*validated against ConfigStore schema with the same name"
)

register_resolvers()

__version__ = "0.1.0"
