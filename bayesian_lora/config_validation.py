"""Validate a composed run config before any model or data loads.

Every rule is a row ``(key, (predicate, allowed-text))`` in one of the tables below: the common
rules, the chain (SG-MCMC) or MAP sampler rules, the per-schedule parameters and the per-model-
family LoRA names. The sampler hyperparameter rules are the samplers' own constructor checks
(``_hyper_checks``), and the chain's step arithmetic is :meth:`ChainPlan.validate`, so the config
and the objects built from it cannot disagree. Every bad value is reported at once in one
``ConfigError`` whose lines read ``key=value is not allowed: <what is allowed>``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from bayesian_lora.data.tasks import TASKS
from bayesian_lora.models.prior import GROUPS as PRIOR_GROUPS
from bayesian_lora.samplers import SAMPLERS
from bayesian_lora.samplers.base import _is_int, _is_real

#: (predicate on the value, description of the allowed values)
Check = tuple[Callable[[Any], bool], str]
Rule = tuple[str, Check]

_MISSING = object()


class ConfigError(ValueError):
    """One or more configuration values are out of their allowed range."""


# ---------------------------------------------------------------- checks
def _real(test: Callable[[Any], bool], text: str) -> Check:
    return (lambda v: _is_real(v) and test(v), text)


def _int(low: int, high: int | None = None) -> Check:
    if high is None:
        return (lambda v: _is_int(v) and v >= low, f"an integer >= {low}")
    return (lambda v: _is_int(v) and low <= v <= high, f"an integer in [{low}, {high}]")


def _note(check: Check, note: str) -> Check:
    return (check[0], f"{check[1]} ({note})")


def _optional(check: Check) -> Check:
    return (lambda v: v is None or check[0](v), f"null or {check[1]}")


def _one_of(choices: Sequence[Any]) -> Check:
    allowed = list(choices)
    return (
        lambda v: not isinstance(v, bool) and v in allowed,
        "one of " + ", ".join(str(c) for c in allowed),
    )


def _names(min_len: int) -> Check:
    text = "a list of module names" + (" with at least one name" if min_len else "")
    return (
        lambda v: (
            isinstance(v, (list, tuple))
            and len(v) >= min_len
            and all(isinstance(n, str) and n.strip() for n in v)
        ),
        text,
    )


def _is_folder(v: Any) -> bool:
    return isinstance(v, str) and Path(v).expanduser().is_dir()


POSITIVE = _real(lambda v: v > 0, "a number > 0")
NON_NEGATIVE = _real(lambda v: v >= 0, "a number >= 0")
FRACTION = _real(lambda v: 0 <= v < 1, "a number in [0, 1)")
OPEN_FRACTION = _real(lambda v: 0 < v < 1, "a number in (0, 1)")
FLAG = (lambda v: isinstance(v, bool), "true or false")
FOLDER = (lambda v: v is None or _is_folder(v), "null or an existing folder")
EPOCHS = (lambda v: _is_int(v) and (v >= 1 or v == -1), "an integer >= 1, or -1 (no limit)")
DEVICES = (
    lambda v: (
        (_is_int(v) and (v >= 1 or v == -1))
        or v == "auto"
        or (isinstance(v, list) and v != [] and all(_is_int(d) and d >= 0 for d in v))
    ),
    "an integer >= 1, -1 (all), auto, or a non-empty list of device indices >= 0",
)
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "64-true", "64")  # int 32/64 too
PRECISION = (
    lambda v: isinstance(v, (str, int)) and not isinstance(v, bool) and str(v) in PRECISIONS,
    f"one of {', '.join(PRECISIONS)} (weights stay full precision: 16-true or bf16-true "
    "would round the Langevin noise away)",
)

# ---------------------------------------------------------------- tables
COMMON_RULES: list[Rule] = [
    ("seed", _int(0, 2**32 - 1)),  # the range Lightning's seed_everything accepts
    ("prior_std", _note(_optional(POSITIVE), "isotropic prior std overriding prior=")),
    ("grad_clip", _optional(POSITIVE)),
    ("dropout_during_sampling", FLAG),
    ("evaluate_on_fit_end", FLAG),
    ("resume", _note(FOLDER, "a run folder to continue")),
    ("break_lock", FLAG),
    ("divergence_backoff", _optional(_note(OPEN_FRACTION, "the step-size factor per retry"))),
    ("divergence_retries", _int(0)),
    ("model.max_length", _int(8)),
    ("model.lora.r", _int(1)),
    ("model.lora.alpha", POSITIVE),
    ("model.lora.dropout", FRACTION),
    ("model.lora.target_modules", _names(1)),
    ("model.lora.modules_to_save", _names(0)),
    ("data.task", _one_of(sorted(TASKS))),
    ("data.batch_size", _int(1)),
    ("data.eval_batch_size", _int(1)),
    ("data.val_fraction", OPEN_FRACTION),
    ("data.split_seed", _int(0)),
    ("data.max_train_samples", _optional(_int(1))),
    ("data.max_eval_samples", _optional(_int(1))),
    ("data.num_workers", _int(0)),
    ("data.obs_std", _note(POSITIVE, "STS-B observation noise std")),
    ("trainer.max_epochs", EPOCHS),
    ("trainer.precision", PRECISION),
    ("trainer.devices", DEVICES),
    ("trainer.accelerator", _one_of(["auto", "cpu", "gpu", "cuda", "mps"])),
    ("trainer.log_every_n_steps", _int(1)),
    ("callbacks.early_stopping.patience", _int(0)),
    ("callbacks.early_stopping.mode", _one_of(["min", "max"])),
    ("callbacks.checkpoint.every_n_train_steps", _int(1)),
    ("callbacks.samples.flush_every", _int(1)),
    ("callbacks.trace.enabled", _optional(FLAG)),
    ("callbacks.trace.probe_size", _optional(_int(0))),
    ("callbacks.trace.flush_every_steps", _optional(_int(1))),
]

LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "modules_to_save")

PRIOR_KEYS = ("name", "dW_fraction", "lora_A", "lora_B", "head", "modules", "sampled")
PRIOR_RULES: list[Rule] = [
    ("prior.dW_fraction", _note(_optional(POSITIVE), "Var(dW_ij) / Var(W_ij) per layer")),
    ("prior.lora_A", _note(_optional(POSITIVE), "sigma of LoRA A; null: from dW_fraction")),
    ("prior.lora_B", _note(_optional(POSITIVE), "sigma of LoRA B; null: from dW_fraction")),
    ("prior.head", _note(_optional(POSITIVE), "sigma of the head; null: 1/sqrt(fan_in)")),
    (
        "prior.modules",
        (
            lambda v: isinstance(v, dict) and all(POSITIVE[0](x) for x in v.values()),
            "a mapping from head module names to sigmas > 0",
        ),
    ),
    (
        "prior.sampled",
        (
            lambda v: isinstance(v, list) and v != [] and all(g in PRIOR_GROUPS for g in v),
            f"a non-empty list of groups among {', '.join(PRIOR_GROUPS)}",
        ),
    ),
]

CHAIN_RULES: list[Rule] = [
    ("sampler.lr", _note(POSITIVE, "step size eta")),
    ("sampler.temperature", _note(POSITIVE, "1 = Bayes posterior, < 1 = cold")),
    ("sampler.seed_offset", _int(0)),
    ("sampler.burn_in", _int(0)),
    ("sampler.thin", _int(1)),
    ("sampler.num_samples", _int(1)),
    ("sampler.warmup.steps", _int(0)),
    ("sampler.warmup.epochs", _optional(_int(0))),
    ("sampler.warmup.lr", _note(POSITIVE, "AdamW learning rate of the warm start")),
    (
        "sampler.warmup.from_run",
        _note(FOLDER, "a MAP run folder, or a sweep folder holding the MAP run of this seed"),
    ),
    ("sampler.max_steps", _optional(_int(1))),
]

#: sampler=swag (a chain config with a ``swag`` block, see bayesian_lora/methods/swag.py)
SWAG_RULES: list[Rule] = [
    (
        "sampler.swag.rank",
        _note(_int(1), "K, the number of deviations kept (>= 2 for the low rank)"),
    ),
    ("sampler.swag.num_draws", _note(_int(1), "parameters drawn into the sample stack")),
    ("sampler.swag.draw_seed", _int(0)),
]

MAP_RULES: list[Rule] = [
    ("sampler.lr", _note(POSITIVE, "AdamW learning rate")),
    ("sampler.weight_decay", NON_NEGATIVE),
    ("sampler.warmup_ratio", FRACTION),
]

#: schedule name -> {parameter: (check, required)}
SCHEDULES: dict[str, dict[str, tuple[Check, bool]]] = {
    "constant": {},
    "polynomial": {"tau": (POSITIVE, True), "gamma": (NON_NEGATIVE, True)},
    "cyclical": {"cycle_length": (_int(2), True), "exploration_fraction": (FRACTION, False)},
}


class Family(NamedTuple):
    """Module names of a known architecture, checked before its weights are loaded."""

    patterns: tuple[str, ...]  # fnmatch patterns of model.name_or_path (lower case)
    targets: tuple[str, ...]  # linear layers LoRA may adapt
    heads: tuple[str, ...]  # modules modules_to_save may name
    required_heads: tuple[str, ...]  # randomly initialised modules that must be trained
    max_positions: int = 512


_BERT_LINEAR = ("query", "key", "value", "dense")
FAMILIES: dict[str, Family] = {
    "BERT": Family(
        ("bert-*", "google-bert/bert-*", "sentence-transformers/all-minilm*", "tiny-bert"),
        _BERT_LINEAR,
        ("classifier", "pooler"),
        (),
    ),
    "RoBERTa": Family(("roberta-*", "facebookai/roberta-*"), _BERT_LINEAR, ("classifier",), ()),
    "DistilBERT": Family(
        ("distilbert-*", "distilbert/distilbert-*"),
        ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
        ("pre_classifier", "classifier"),
        ("pre_classifier",),
    ),
}
# Causal LMs (MCQA): no head is trained (modules_to_save must be empty).
_DECODER_LINEAR = (
    *("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "lm_head",
)
FAMILIES.update(
    {
        "Llama": Family(("meta-llama/*",), _DECODER_LINEAR, (), (), 4096),
        "SmolLM2": Family(("huggingfacetb/smollm2-*",), _DECODER_LINEAR, (), (), 8192),
        "Qwen2": Family(("qwen/qwen2*",), _DECODER_LINEAR, (), (), 32768),
        "Mistral": Family(("mistralai/mistral-*",), _DECODER_LINEAR, (), (), 32768),
        "tiny causal": Family(("tiny-causal",), _DECODER_LINEAR, (), (), 1024),
    }
)
MODEL_KINDS = ("encoder", "causal")
CAUSAL_DTYPES = ("float32", "bfloat16")


# ---------------------------------------------------------------- validation
def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=_MISSING)
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _show(value: Any) -> str:
    return "<missing>" if value is _MISSING else repr(value)


def _apply(cfg: DictConfig, rules: Sequence[Rule], errors: list[str]) -> None:
    """Append one line per failed rule; a key that already failed is not checked again."""
    for key, (ok, allowed) in rules:
        if any(e.startswith(f"{key}=") for e in errors):
            continue
        value = _get(cfg, key)
        if not ok(None if value is _MISSING else value):
            errors.append(f"{key}={_show(value)} is not allowed: {allowed}")


def validate_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every bad value; returns None for a valid config."""
    errors: list[str] = []
    _check_model_family(cfg, errors)  # first: its limits are the more specific ones
    _apply(cfg, COMMON_RULES, errors)
    _check_task_type(cfg, errors)
    _check_unknown(cfg, "model.lora", LORA_KEYS, "model.lora", errors)
    _check_prior(cfg, errors)
    if _get(cfg, "sampler.name") == "map":
        _apply(cfg, MAP_RULES, errors)
        _check_unknown(cfg, "sampler.hparams", (), "sampler map's hparams", errors)
    else:
        _check_chain(cfg, errors)
    if errors:
        head = "" if len(errors) == 1 else f"{len(errors)} config errors:\n  "
        raise ConfigError(head + "\n  ".join(errors))


def _check_prior(cfg: DictConfig, errors: list[str]) -> None:
    """The ``prior`` group (absent in configs saved before it existed: isotropic N(0, 1))."""
    if _get(cfg, "prior") in (_MISSING, None):
        return
    _check_unknown(cfg, "prior", PRIOR_KEYS, "the prior group", errors)
    _apply(cfg, PRIOR_RULES, errors)
    a, b, f = (_get(cfg, f"prior.{k}") for k in ("lora_A", "lora_B", "dW_fraction"))
    if f is None and _get(cfg, "prior_std") is None and (a is None or b is None):
        errors.append(
            f"prior.dW_fraction=None is not allowed: a number > 0 when prior.lora_A ({a}) or "
            f"prior.lora_B ({b}) is null (it sets their scale)"
        )
    modules, heads = _get(cfg, "prior.modules"), _get(cfg, "model.lora.modules_to_save")
    if isinstance(modules, dict) and isinstance(heads, list) and set(modules) - set(heads):
        errors.append(
            f"prior.modules={modules!r} is not allowed: keys among model.lora.modules_to_save "
            f"({', '.join(heads) or 'none'})"
        )


def _check_unknown(
    cfg: DictConfig, key: str, accepted: Sequence[str], what: str, errors: list[str]
) -> list[str]:
    """Report keys under ``key`` that are not ``accepted``; returns the known ones present."""
    node = _get(cfg, key)
    node = node if isinstance(node, dict) else {}
    listed = ", ".join(accepted) if accepted else "none"
    for name in sorted(set(node) - set(accepted)):
        errors.append(
            f"{key}.{name}={node[name]!r} is not allowed: unknown key; keys of {what}: {listed}"
        )
    return [name for name in accepted if name in node]


def _family(name_or_path: Any) -> tuple[str, Family] | None:
    if not isinstance(name_or_path, str):
        return None
    lowered = name_or_path.lower()
    for name, family in FAMILIES.items():
        if any(fnmatch.fnmatchcase(lowered, p) for p in family.patterns):
            return name, family
    return None


def _check_model_family(cfg: DictConfig, errors: list[str]) -> None:
    """Known architectures: LoRA/head module names and max_length, before any weights load."""
    path = _get(cfg, "model.name_or_path")
    found = _family(path)
    if found is None:
        return  # unknown family: models.lora.check_target_modules runs after loading
    name, fam = found
    tiny = _get(cfg, "model.tiny")
    positions = tiny.get("max_position_embeddings") if isinstance(tiny, dict) else None
    positions = positions if _is_int(positions) else fam.max_positions
    rules: list[Rule] = [
        ("model.max_length", _note(_int(8, positions), f"{path} has {positions} positions")),
        (
            "model.lora.target_modules",
            (
                lambda v: not isinstance(v, list) or set(v) <= set(fam.targets),
                f"names of {name} linear layers: {', '.join(fam.targets)}",
            ),
        ),
        (
            "model.lora.modules_to_save",
            (
                lambda v: (
                    not isinstance(v, list)
                    or (set(v) <= set(fam.heads) and set(fam.required_heads) <= set(v))
                ),
                f"{name} head modules among {', '.join(fam.heads)}"
                + (
                    f", including {', '.join(fam.required_heads)} (not pretrained)"
                    if fam.required_heads
                    else ""
                ),
            ),
        ),
    ]
    _apply(cfg, rules, errors)


def _check_task_type(cfg: DictConfig, errors: list[str]) -> None:
    """Encoders take text-classification tasks, causal LMs MCQA tasks; training needs a train split."""
    kind = _get(cfg, "model.kind")
    kind = "encoder" if kind in (_MISSING, None) else kind
    _apply(cfg, [("model.dtype", _optional(_one_of(CAUSAL_DTYPES)))], errors)
    if kind not in MODEL_KINDS:
        _apply(cfg, [("model.kind", _one_of(MODEL_KINDS))], errors)
        return
    task = TASKS.get(_get(cfg, "data.task"))
    if task is None:
        return  # reported by the data.task rule
    mcqa = sorted(n for n, t in TASKS.items() if t.is_mcqa)
    if kind == "causal" and not task.is_mcqa:
        allowed = f"an MCQA task for a causal LM (model.kind=causal): {', '.join(mcqa)}"
    elif kind == "encoder" and task.is_mcqa:
        allowed = (
            "a text-classification task for an encoder; MCQA tasks need a causal LM "
            "(model=smollm2, llama, qwen, mistral or tiny_causal)"
        )
    elif task.train_split is None:
        allowed = (
            f"a task with a train split ({task.name} is evaluation-only: "
            f"python -m bayesian_lora.evaluate ... shift=[{task.name}])"
        )
    else:
        return
    errors.append(f"data.task={task.name!r} is not allowed: {allowed}")


def _check_chain(cfg: DictConfig, errors: list[str]) -> None:
    """SG-MCMC sampler: algorithm, hparams, schedule, chain lengths and the step arithmetic."""
    samplers = sorted(SAMPLERS)
    algorithm = _get(cfg, "sampler.algorithm")
    if algorithm in (_MISSING, None):
        algorithm = _get(cfg, "sampler.name")
        rule = _note(_one_of(["map", *samplers]), "or set sampler.algorithm to one of these")
        name_rule: Rule = ("sampler.name", rule)
    else:
        name_rule = ("sampler.algorithm", _one_of(samplers))
    if not (isinstance(algorithm, str) and algorithm in SAMPLERS):
        _apply(cfg, [name_rule], errors)  # the other sampler keys depend on the algorithm
        return
    before = len(errors)
    _apply(cfg, CHAIN_RULES, errors)
    checks = SAMPLERS[algorithm]._hyper_checks
    what = f"sampler {algorithm}'s hparams"
    present = _check_unknown(cfg, "sampler.hparams", sorted(checks), what, errors)
    _apply(cfg, [(f"sampler.hparams.{k}", checks[k]) for k in present], errors)
    if _get(cfg, "sampler.swag") not in (_MISSING, None):
        _check_unknown(
            cfg, "sampler.swag", ("rank", "num_draws", "draw_seed"), "sampler.swag", errors
        )
        _apply(cfg, SWAG_RULES, errors)
    _check_schedule(cfg, errors)
    if len(errors) == before:
        _check_steps(cfg, errors)


def _check_schedule(cfg: DictConfig, errors: list[str]) -> None:
    name = _get(cfg, "sampler.schedule.name")
    if not isinstance(name, str) or name not in SCHEDULES:
        _apply(cfg, [("sampler.schedule.name", _one_of(list(SCHEDULES)))], errors)
        return
    params = SCHEDULES[name]
    accepted = ["name", *params]
    _check_unknown(cfg, "sampler.schedule", accepted, f"the {name} schedule", errors)
    _apply(
        cfg,
        [
            (f"sampler.schedule.{k}", check if required else _optional(check))
            for k, (check, required) in params.items()
        ],
        errors,
    )
    length = _get(cfg, "sampler.schedule.cycle_length")
    if name == "cyclical" and _is_int(length) and length >= 2:
        bound = (length - 1) / length  # a larger fraction leaves no sampling stage in a cycle
        stage = (
            lambda v: v is None or not FRACTION[0](v) or v <= bound,
            f"at most (cycle_length - 1) / cycle_length = {bound:.4g}, so that each cycle of "
            f"{length} steps keeps a sampling stage",
        )
        _apply(cfg, [("sampler.schedule.exploration_fraction", stage)], errors)


def _check_steps(cfg: DictConfig, errors: list[str]) -> None:
    """The chain plan the run would use (``config.build_chain_plan``) must fit ``max_steps``."""
    from bayesian_lora.config import build_chain_plan  # heavy imports; config imports us

    try:
        build_chain_plan(cfg)
    except ValueError as err:
        value = _show(_get(cfg, "sampler.max_steps"))
        errors.append(f"sampler.max_steps={value} is not allowed: {err}")
