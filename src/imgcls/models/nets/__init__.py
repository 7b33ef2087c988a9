"""Plain ``nn.Module`` nets. Each takes ``in_channels``, ``num_classes`` and ``image_size`` from the
data (``DataSpec``) plus its own hyper-parameters from ``configs/model/<name>.yaml``."""
