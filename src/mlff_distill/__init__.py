"""mlff-distill: distill a slow foundation force field into a small, fast student."""
