"""mlff-distill."""
