"""Stage logs: one file per Snakemake job under results/, echoed to stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def stage_logger(stage: str, log_file: Path | None) -> logging.Logger:
    """A logger for ``stage`` writing timestamped lines to ``log_file`` and to stderr."""
    logger = logging.getLogger(f"mlff_distill.{stage}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger
