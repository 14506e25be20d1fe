"""Stage logs: one file per Snakemake job under results/, echoed to stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

PACKAGE_LOGGER = "mlff_distill"


def stage_logger(stage: str, log_file: Path | None) -> logging.Logger:
    """A logger for ``stage`` writing timestamped lines to ``log_file`` and to stderr.

    The handlers sit on the package's logger, so that the messages of the modules a stage calls
    (``mlff_distill.student.loss``, ...) reach the stage's log too.
    """
    package = logging.getLogger(PACKAGE_LOGGER)
    package.setLevel(logging.INFO)
    for handler in package.handlers[:]:  # a previous stage's, in the same process
        package.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    for handler in handlers:
        handler.setFormatter(formatter)
        package.addHandler(handler)
    logger = logging.getLogger(f"{PACKAGE_LOGGER}.{stage}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = True
    return logger
