"""mlff-distill: distill a slow foundation force field into a small, fast student."""

import os

# TorchInductor's cache folder as the user set it, read before anything imports PyTorch: importing
# parts of torch (Dynamo) sets a default in the environment, which must not count as the user's.
USER_INDUCTOR_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
