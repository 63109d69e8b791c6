"""Predict with many posterior samples at the cost of one forward pass each.

The model and the tokenised test batches are prepared once; each sample is copied into the
sampled parameters in place (no model reload, no re-tokenisation), then one pass over the cached
batches gives its predictions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from bayesian_lora.models.module import BayesianLoRAModule, set_dropout


def cache_batches(
    loader: Iterable[dict[str, Tensor]], device: torch.device
) -> list[dict[str, Tensor]]:
    """Collate and move every batch once; the k passes then reuse them."""
    return [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in loader]


def swap_in(params: Mapping[str, nn.Parameter], samples: Mapping[str, Tensor], index: int) -> None:
    """Overwrite the sampled parameters with sample ``index`` (in place)."""
    names = list(params)
    torch._foreach_copy_([params[n].data for n in names], [samples[n][index] for n in names])


@torch.inference_mode()
def predict_once(module: BayesianLoRAModule, batches: list[dict[str, Tensor]]) -> Tensor:
    """Probabilities [N, C] (classification) or means [N] (regression) for the current params."""
    outs = []
    for batch in batches:
        out = module(batch).float()
        outs.append(out if module.task.is_regression else out.softmax(-1))
    return torch.cat(outs)


def predict_samples(
    module: BayesianLoRAModule,
    samples: Mapping[str, Tensor],
    batches: list[dict[str, Tensor]],
    indices: Iterable[int] | None = None,
    mc_dropout_passes: int = 0,
) -> Tensor:
    """Stack predictions of each sample: [S, N, C] or [S, N].

    With ``mc_dropout_passes = K > 0`` each sample is evaluated K times with dropout active
    (MC dropout), giving S*K stochastic members.
    """
    params = module.sampled_parameters()
    num = next(iter(samples.values())).shape[0]
    indices = range(num) if indices is None else list(indices)
    module.eval()
    preds: list[Tensor] = []
    try:
        for i in indices:
            swap_in(params, samples, i)
            if mc_dropout_passes > 0:
                set_dropout(module.model, True)
                preds.extend(predict_once(module, batches) for _ in range(mc_dropout_passes))
                set_dropout(module.model, False)
            else:
                preds.append(predict_once(module, batches))
    finally:
        set_dropout(module.model, False)
    return torch.stack(preds)


def labels_of(batches: list[dict[str, Tensor]]) -> Tensor:
    return torch.cat([b["labels"] for b in batches]).cpu()
