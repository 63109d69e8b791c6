"""One helper for the ``_target_`` configs of a run: Hydra's ``instantiate``, plus what it lacks.

``cfg.data`` (the datamodule), ``cfg.sampler.optimizer`` (the update rule, ``_partial_``: its
parameters come later) and every entry of ``cfg.callbacks`` are built here. What the other
groups decide (the model's tokenizer, the data folder, the run's seed and step size) is passed
as keyword arguments, not written into the config, so a run folder's saved ``config.yaml`` holds
no run-specific paths or seeds and moves with its folder.

A callback marked ``_partial_: true`` comes back from Hydra as a ``functools.partial`` and is
completed with those of the run's objects it accepts (``run``, ``run_dir``, ``plan``,
``manifest``, ``dirpath``, ``sampler``: see ``config.build_trainer``), known only once the
data is loaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import partial
from typing import Any

from omegaconf import DictConfig, OmegaConf

HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def instantiate_node(
    node: DictConfig | Mapping[str, Any],
    *,
    default_target: str | None = None,
    run_arguments: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``.

    ``default_target``: the class of a node saved without ``_target_`` (a run folder's config
    written before the node had one): only the keys the class accepts are passed.
    ``run_arguments``: a ``_partial_`` result is called with those it accepts (and has not
    bound); without them it stays a partial (the sampler's update rule, built by the module).
    """
    from hydra.utils import get_class, instantiate

    if "_target_" not in node:
        if default_target is None:
            raise ValueError(f"no _target_ in {dict(node)!r}")
        accepted = inspect.signature(get_class(default_target)).parameters
        kept = {k: v for k, v in node.items() if k in accepted and k not in kwargs}
        node = OmegaConf.create({"_target_": default_target, **kept})
    built = instantiate(node, **kwargs)
    if isinstance(built, partial) and run_arguments:
        built = complete(built, run_arguments)
    return built


def complete(factory: partial[Any], run_arguments: Mapping[str, Any]) -> Any:
    """Call ``factory`` with those of ``run_arguments`` its callable accepts and lacks."""
    accepted = inspect.signature(factory.func).parameters
    given = {k: v for k, v in run_arguments.items() if k in accepted and k not in factory.keywords}
    return factory(**given)
