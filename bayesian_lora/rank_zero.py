"""Rank-zero console output under DDP: one process speaks for the chain.

The rank is Lightning's (``rank_zero_only.rank``, which its strategies set on every process),
read without importing Lightning (and so torch) before it is loaded: until then it is the
first of ``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``, ``JSM_NAMESPACE_RANK`` in the environment,
as Lightning itself starts from (0 when none is set).

:class:`RankZeroFilter` drops the ``bayesian_lora.*`` records below WARNING on ranks other than
zero: the INFO lines (parameter counts, prior table, "samples written", ...) describe the one
chain and would repeat once per rank. Warnings and errors pass on every rank: they can be about
that rank alone (its shard of the data, a divergence it saw, a crash), and hiding them would hide
the reason a rank failed. Records of other libraries are left to them (Lightning filters its own).
"""

from __future__ import annotations

import logging
import os
import sys

#: the environment variables Lightning reads a process's rank from, in its order
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")

#: the package's loggers: ``bayesian_lora`` and its children
PACKAGE_LOGGER = "bayesian_lora"


def process_rank() -> int:
    """This process's global rank (0 on a single process)."""
    module = sys.modules.get("lightning_utilities.core.rank_zero")
    rank = getattr(getattr(module, "rank_zero_only", None), "rank", None)
    if rank is not None:
        return int(rank)
    for key in RANK_VARIABLES:
        value = os.environ.get(key)
        if value is not None:
            return int(value)
    return 0


class RankZeroFilter(logging.Filter):
    """Passes every record on rank zero; elsewhere only the package's warnings and errors (and
    every record of other loggers). The rank is read per record: a spawned process learns its
    rank after logging was set up."""

    def __init__(self, min_level_elsewhere: int = logging.WARNING) -> None:
        super().__init__()
        self.min_level_elsewhere = min_level_elsewhere

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == PACKAGE_LOGGER or record.name.startswith(PACKAGE_LOGGER + ".")
        if not ours or record.levelno >= self.min_level_elsewhere:
            return True
        return process_rank() == 0


def install_rank_zero_logging(handlers: list[logging.Handler] | None = None) -> RankZeroFilter:
    """Add one :class:`RankZeroFilter` to ``handlers`` (default: the root logger's and the
    package logger's, which is where Hydra's job logging puts its console and file handlers).

    A filter on a handler sees the records of every logger that propagates to it; a filter on a
    logger would not see its children's. Installing twice adds nothing.
    """
    if handlers is None:
        handlers = [*logging.getLogger().handlers, *logging.getLogger(PACKAGE_LOGGER).handlers]
    rank_filter = RankZeroFilter()
    for handler in handlers:
        if not any(isinstance(f, RankZeroFilter) for f in handler.filters):
            handler.addFilter(rank_filter)
    return rank_filter
