"""imgcls: an image-classification research template (PyTorch Lightning + Hydra)."""

import warnings

from imgcls.utils.config import register_resolvers

# configs/hydra/launcher/submitit_*.yaml are merged onto the submitit plugin's schema of the same
# name on purpose (typed fields); Hydra 1.3 still does that but warns it is deprecated. Without
# the schema the files are complete configs of their own, so they work either way.
warnings.filterwarnings(
    "ignore", message=r"(?s).*validated against ConfigStore schema with the same name"
)

register_resolvers()

__version__ = "0.1.0"
