"""Validate a composed run config before any model or data loads (and before torch is imported).

The schema is the tables below: every key a run reads is a row ``(key, (predicate, allowed
text))`` of the common rules, the chain (SG-MCMC) or MAP sampler rules, the per-schedule
parameters, the samplers' hyperparameters (``samplers.checks.HYPERPARAMETERS``, the samplers' own
constructor checks) or the Lightning ``Trainer`` arguments; the subtrees that Hydra instantiates
(``logger.*``) or hands to a model config (``model.tiny.*``) are free. A key in the composed
config that no row names is an error naming the nearest valid key. The cross-field rules are
``INERT_RULES`` (a key set on the command line that does nothing in this run) and the rows whose
predicate depends on other keys; the chain's step arithmetic is :meth:`ChainPlan.validate`, so
the config and the objects built from it cannot disagree. Every bad value is reported at once in
one ``ConfigError`` whose lines read ``key=value is not allowed: <what is allowed>``.

:func:`validate_model` is the second stage: it reads the model's config (no weights) for the
rules that need it (``model.lora.r`` at most the layer width, a loadable ``model.name_or_path``).
"""

from __future__ import annotations

import difflib
import fnmatch
import glob
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from bayesian_lora.data.tasks import TASKS
from bayesian_lora.errors import InputError
from bayesian_lora.runs.folder import MAP
from bayesian_lora.samplers import sampler_target, sampler_targets
from bayesian_lora.samplers.checks import HYPERPARAMETERS, _is_int, _is_real

#: (predicate on the value, description of the allowed values)
Check = tuple[Callable[[Any], bool], str]
Rule = tuple[str, Check]

_MISSING = object()

log = logging.getLogger(__name__)


class ConfigError(InputError, ValueError):
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


def cuda_devices() -> int:
    """CUDA devices this machine exposes, without importing torch (the driver's device nodes)."""
    return len(glob.glob("/dev/nvidia[0-9]*"))


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _is_model_id(v: Any) -> bool:
    """A Hub id (``org/name``) or a local folder holding a model's ``config.json``."""
    if not isinstance(v, str) or not v.strip():
        return False
    path = Path(v).expanduser()
    if v.startswith(("/", ".", "~")) or path.exists():
        return (path / "config.json").is_file()
    return bool(_HUB_ID.match(v)) and ".." not in v


ANY: Check = (lambda v: True, "any value")
TEXT = (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")
TEXTS = (
    lambda v: isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v),
    "a list of strings",
)
MODEL_ID = (
    _is_model_id,
    "a Hub model id (org/name) or a local model folder holding config.json",
)
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
    ("task_name", TEXT),
    ("tags", TEXTS),
    ("seed", _int(0, 2**32 - 1)),  # the range Lightning's seed_everything accepts
    ("prior_std", _note(_optional(POSITIVE), "isotropic prior std overriding prior=")),
    ("grad_clip", _optional(POSITIVE)),
    ("dropout_during_sampling", FLAG),
    ("evaluate_on_fit_end", FLAG),
    ("resume", _note(FOLDER, "a run folder to continue")),
    ("break_lock", FLAG),
    ("divergence_backoff", _optional(_note(OPEN_FRACTION, "the step-size factor per retry"))),
    ("divergence_retries", _int(0)),
    ("model.name", TEXT),
    ("model.kind", ANY),  # encoder | causal, and model.dtype: _check_task_type
    ("model.dtype", ANY),
    ("model.name_or_path", MODEL_ID),
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
    (
        "trainer.accelerator",
        (
            lambda v: v not in ("gpu", "cuda") or cuda_devices() > 0,
            "cpu or auto: this machine has no CUDA device (no /dev/nvidia*); use trainer=cpu",
        ),
    ),
    ("trainer.log_every_n_steps", _int(1)),
    (
        "trainer.check_val_every_n_epoch",
        _note(_optional(_int(1)), "validation every this many epochs"),
    ),
    ("trainer._target_", _one_of(["lightning.pytorch.Trainer", "lightning.Trainer"])),
    ("paths.data_dir", _note(FOLDER, "the folder that holds the Hub-layout copies")),
    ("paths.output_dir", ANY),  # ${hydra:runtime.output_dir}: set by Hydra
    ("paths.cache_dir", (lambda v: v is None or TEXT[0](v), "null or a folder path")),
    ("data._target_", TEXT),  # the datamodule class (train passes tokenizer, paths, seed)
]


class Callback(NamedTuple):
    """A callback of the run's own (``conf/callbacks/default.yaml``)."""

    target: str  # its shipped class; with another _target_ its keys are that class's (free)
    keys: tuple[str, ...]  # the keys a config may set (train passes the run's objects)
    run: str  # the runs it serves: "map", "chain" or "any"
    rules: tuple[Rule, ...] = ()  # checks of its values (key relative to the callback)


_MODE = _one_of(["min", "max"])
#: callback name -> what it is; a ``callbacks.<name>`` of another name is a callback of the
#: user's (``+callbacks.<name>._target_=<class>``): Hydra instantiates it for every run and its
#: class checks its arguments. The Lightning ones list their classes' arguments (a test compares
#: them with ``inspect.signature``), but for ``dirpath``, the run folder's ``checkpoints/``.
CALLBACKS: dict[str, Callback] = {
    "early_stopping": Callback(
        "lightning.pytorch.callbacks.EarlyStopping",
        (
            *("monitor", "min_delta", "patience", "verbose", "mode", "strict", "check_finite"),
            *("stopping_threshold", "divergence_threshold", "check_on_train_epoch_end"),
            "log_rank_zero_only",
        ),
        "map",
        (("monitor", TEXT), ("patience", _int(0)), ("mode", _MODE)),
    ),
    "best_checkpoint": Callback(
        "lightning.pytorch.callbacks.ModelCheckpoint",
        (
            *("filename", "monitor", "verbose", "save_last", "save_top_k", "save_on_exception"),
            *("save_weights_only", "mode", "auto_insert_metric_name", "every_n_train_steps"),
            *("train_time_interval", "every_n_epochs", "save_on_train_epoch_end"),
            "enable_version_counter",
        ),
        "map",
        (("monitor", TEXT), ("mode", _MODE), ("save_top_k", _int(1))),
    ),
    "checkpoint": Callback(
        "bayesian_lora.callbacks.chain_checkpoint.ChainCheckpoint",
        ("every_n_train_steps",),
        "chain",
        (("every_n_train_steps", _int(1)),),
    ),
    "samples": Callback(
        "bayesian_lora.callbacks.sample_collector.SampleCollector",
        ("flush_every",),
        "any",  # every method's: sampler=map, swag, blob put their collector there
        (("flush_every", _int(1)),),
    ),
    "trace": Callback(
        "bayesian_lora.callbacks.trace.TraceRecorder",
        ("probe_size", "flush_every_steps"),
        "chain",
        (("probe_size", _int(0)), ("flush_every_steps", _int(1))),
    ),
    "progress": Callback(
        "bayesian_lora.callbacks.progress.ChainProgress",
        ("every_n_steps",),
        "chain",
        (("every_n_steps", _int(1)),),
    ),
}
_CALLBACK_EXAMPLE = "lightning.pytorch.callbacks.LearningRateMonitor"

LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "modules_to_save")

#: models.prior.GROUPS (that module imports torch; a test keeps the two equal)
PRIOR_GROUPS = ("lora_A", "lora_B", "head")
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

#: Lightning ``Trainer`` arguments a config may set (Lightning checks their values; the test
#: suite compares this list with ``inspect.signature(Trainer)``).
TRAINER_KEYS = (
    "accelerator", "strategy", "devices", "num_nodes", "precision", "fast_dev_run",
    "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches",
    "limit_val_batches", "limit_test_batches", "limit_predict_batches", "overfit_batches",
    "val_check_interval", "check_val_every_n_epoch", "num_sanity_val_steps",
    "log_every_n_steps", "enable_checkpointing", "enable_progress_bar", "enable_model_summary",
    "deterministic", "benchmark", "inference_mode", "use_distributed_sampler", "profiler",
    "detect_anomaly", "barebones", "plugins", "sync_batchnorm",
    "reload_dataloaders_every_n_epochs", "default_root_dir", "enable_autolog_hparams",
    "model_registry",
)  # fmt: skip

#: Keys that look right but are set elsewhere: key -> what to use instead.
NOT_HERE = {
    "trainer.logger": "loggers are the logger group: logger=csv|tensorboard|wandb|many|none",
    "trainer.callbacks": (
        f"train builds the callbacks from callbacks.*: add one with "
        f"+callbacks.<name>._target_=<class> (e.g. {_CALLBACK_EXAMPLE})"
    ),
    "callbacks.trace.enabled": "turn a callback off with callbacks.trace=null (or ~callbacks.trace)",
    "callbacks.best_checkpoint.dirpath": "it is the run folder's checkpoints/ (train passes it)",
    "trainer.gradient_clip_val": "the module steps its optimizer itself: use grad_clip",
    "trainer.gradient_clip_algorithm": "the module steps its optimizer itself: use grad_clip",
    "trainer.accumulate_grad_batches": (
        "the module steps its optimizer itself (no accumulation): raise data.batch_size"
    ),
}

#: Subtrees whose keys are another object's arguments: loggers (Hydra instantiates them) and the
#: tiny model's BERT config.
FREE_SUBTREES = ("logger", "model.tiny", "hydra")

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

#: sampler=blob (algorithm blob with a ``blob`` block, see bayesian_lora/methods/blob.py)
BLOB_KEYS = ("num_draws", "draw_seed", "init_std_fraction", "rho_lr_scale")
BLOB_RULES: list[Rule] = [
    ("sampler.blob.num_draws", _note(_int(1), "draws of LoRA A in the sample stack")),
    ("sampler.blob.draw_seed", _int(0)),
    (
        "sampler.blob.init_std_fraction",
        _note(POSITIVE, "the initial std of q as a fraction of the prior's sigma_A"),
    ),
    ("sampler.blob.rho_lr_scale", _note(POSITIVE, "rho's step size / sampler.lr")),
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
        if ok is ANY[0] or any(e.startswith(f"{key}=") for e in errors):
            continue  # ANY: not even resolved (paths.output_dir is Hydra's)
        value = _get(cfg, key)
        if not ok(None if value is _MISSING else value):
            errors.append(f"{key}={_show(value)} is not allowed: {allowed}")


def validate_config(
    cfg: DictConfig, overrides: Sequence[str] = (), sweep: bool | None = None
) -> None:
    """Raise ``ConfigError`` listing every bad value; returns None for a valid config.

    ``overrides``: the command line's (Hydra's task overrides), for ``INERT_RULES``: a key set
    there that does nothing in this run is refused (only logged in a sweep, ``sweep=True``,
    where one override serves several runs; None = ask Hydra).
    """
    errors: list[str] = []
    _check_model_family(cfg, errors)  # first: its limits are the more specific ones
    _check_unknown_keys(cfg, errors)
    _apply(cfg, COMMON_RULES, errors)
    _check_callbacks(cfg, errors)
    _check_task_type(cfg, errors)
    _apply(cfg, _tiny_rules(cfg), errors)
    _check_prior(cfg, errors)
    if not _is_chain(cfg):
        _apply(cfg, MAP_RULES, errors)
        _check_unknown(cfg, "sampler.hparams", (), "sampler map's hparams", errors)
    else:
        _check_chain(cfg, errors)
    _check_inert(cfg, overrides, errors, _in_sweep() if sweep is None else sweep)
    raise_errors(errors)


def _own_callbacks(cfg: DictConfig) -> dict[str, Callback]:
    """The run's own callbacks present in ``cfg`` with their shipped class (their keys are the
    schema's); a null entry, a user's callback or a swapped class are not among them."""
    node = _get(cfg, "callbacks")
    node = node if isinstance(node, dict) else {}
    return {
        name: cb
        for name, cb in CALLBACKS.items()
        if isinstance(node.get(name), dict) and node[name].get("_target_", cb.target) == cb.target
    }


def _user_callbacks(cfg: DictConfig) -> list[str]:
    """``callbacks.<name>`` entries Hydra builds as given (a ``_target_`` of the user's, or one
    of the run's own callbacks with another class): their keys are their class's arguments."""
    node = _get(cfg, "callbacks")
    node = node if isinstance(node, dict) else {}
    own = _own_callbacks(cfg)
    return [
        f"callbacks.{name}"
        for name, value in node.items()
        if name not in own and isinstance(value, dict) and "_target_" in value
    ]


def _check_callbacks(cfg: DictConfig, errors: list[str]) -> None:
    for name, cb in _own_callbacks(cfg).items():
        _apply(cfg, [(f"callbacks.{name}.{k}", check) for k, check in cb.rules], errors)
        if _get(cfg, f"callbacks.{name}._partial_") not in (_MISSING, True):
            errors.append(
                f"callbacks.{name}._partial_={_show(_get(cfg, f'callbacks.{name}._partial_'))} "
                "is not allowed: true (train completes it with the run's objects)"
            )


def raise_errors(errors: Sequence[str]) -> None:
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


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# ---------------------------------------------------------------- unknown keys
def _leaves(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the leaves (lists and empty mappings count as leaves)."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1]


def schema_keys(cfg: DictConfig) -> set[str]:
    """Every key this config's run reads (the rows of the tables that apply to it)."""
    keys = {k for k, _ in COMMON_RULES}
    keys |= {f"model.lora.{k}" for k in LORA_KEYS} | {f"trainer.{k}" for k in TRAINER_KEYS}
    keys |= {"sampler.name", "sampler.hparams", "sampler.swag", "sampler.blob", "prior"}
    keys |= {"sampler.optimizer._target_", "sampler.optimizer._partial_", "sampler.algorithm"}
    for name, cb in CALLBACKS.items():
        keys |= {f"callbacks.{name}.{k}" for k in ("_target_", "_partial_", *cb.keys)}
    own_rule = _get(cfg, "sampler.algorithm") in _methods()
    if not _is_chain(cfg) or (_get(cfg, "sampler.optimizer") in (_MISSING, None) and not own_rule):
        keys |= {k for k, _ in MAP_RULES}  # MAP, or a sampler without an update rule (refused)
    # MAP keeps the chain keys that shared configs (debug=smoke, experiments) give every
    # sampler; INERT_RULES refuse them when the command line sets them.
    keys |= {k for k, _ in CHAIN_RULES} | {"sampler.schedule", "trainer.max_steps"}
    return keys


def _all_hparams() -> dict[str, list[str]]:
    """``sampler.hparams.<name>`` -> the algorithms that take it (for "did you mean")."""
    out: dict[str, list[str]] = {}
    for algorithm, checks in HYPERPARAMETERS.items():
        for name in checks:
            out.setdefault(f"sampler.hparams.{name}", []).append(algorithm)
    return out


def nearest_key(key: str, candidates: Sequence[str]) -> str | None:
    """The candidate closest to ``key`` (whole dotted path, else its last part), if close."""
    found = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if found:
        return found[0]
    last = key.rsplit(".", 1)[-1]
    by_last = {c.rsplit(".", 1)[-1]: c for c in sorted(candidates, key=len, reverse=True)}
    found = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.75)
    return by_last[found[0]] if found else None


def _check_unknown_keys(cfg: DictConfig, errors: list[str]) -> None:
    """Every leaf of the composed config must be a key of the schema (``schema_keys``)."""
    known = schema_keys(cfg)
    hparams = _all_hparams()
    free = (*FREE_SUBTREES, *_user_callbacks(cfg))
    container = OmegaConf.to_container(cfg, resolve=False)
    for key in _leaves(container):
        if key in known or any(key == f or key.startswith(f"{f}.") for f in free):
            continue
        if key.startswith(
            ("sampler.hparams.", "sampler.schedule.", "sampler.swag.", "sampler.blob.", "prior.")
        ):
            continue  # checked per algorithm, per schedule, for SWAG, BLoB and the prior group
        if any(k.startswith(f"{key}.") for k in known) and _get(cfg, key) in ({}, None):
            continue  # an empty node of the schema
        value = _show(OmegaConf.select(cfg, key, default=_MISSING))
        if key in NOT_HERE:
            errors.append(f"{key}={value} is not allowed: {NOT_HERE[key]}")
            continue
        candidates = sorted(known | set(hparams))
        near = nearest_key(key, candidates)
        hint = f"; did you mean {near}" if near else ""
        if near in hparams and near not in known:
            hint += f" (a hyperparameter of sampler {', '.join(hparams[near])})"
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = sorted(
            k[len(parent) + 1 :] if parent else k
            for k in known
            if (k.startswith(f"{parent}.") if parent else True)
        )
        siblings = sorted({k.split(".", 1)[0] for k in siblings})
        where = f"keys of {parent}" if parent else "top-level keys"
        if key.startswith("callbacks.") and key.split(".")[1] not in CALLBACKS:
            name = key.split(".")[1]  # an entry of the user's without a class
            where = (
                f"a callback of your own needs its class: +callbacks.{name}._target_=<class> "
                f"(e.g. {_CALLBACK_EXAMPLE}); the run's callbacks: {', '.join(CALLBACKS)}"
            )
            siblings = []
        errors.append(
            f"{key}={value} is not allowed: unknown key, nothing reads it{hint}? "
            f"{where}" + (f": {', '.join(siblings)}" if siblings else "")
        )


# ---------------------------------------------------------------- keys that do nothing
def _is_chain(cfg: DictConfig) -> bool:
    """Anything but MAP (``sampler=map``): the one question the schema asks of the method."""
    return _get(cfg, "sampler.name") != MAP


def _task_kind(cfg: DictConfig) -> str | None:
    task = TASKS.get(str(_get(cfg, "data.task")))
    if task is None:
        return None
    return "regression" if task.is_regression else "classification"


def _obs_std_inert(cfg: DictConfig) -> str | None:
    if _task_kind(cfg) != "classification":
        return None
    regression = ", ".join(sorted(n for n, t in TASKS.items() if t.is_regression))
    return (
        f"data.task={_get(cfg, 'data.task')} is a classification task; obs_std is the "
        f"observation noise of a regression task ({regression})"
    )


def _map_inert(cfg: DictConfig) -> str | None:
    if _is_chain(cfg):
        return None
    chains = ", ".join(sorted(HYPERPARAMETERS))
    return (
        "sampler=map trains with AdamW and keeps one sample (its best validation checkpoint); "
        f"chain keys need a chain sampler ({chains}, or csgld, csghmc)"
    )


def _chain_inert(what: str) -> Callable[[DictConfig], str | None]:
    return lambda cfg: what if _is_chain(cfg) else None


def _warmup_steps_inert(cfg: DictConfig) -> str | None:
    if _is_chain(cfg) and _get(cfg, "sampler.warmup.epochs") not in (None, _MISSING):
        return "sampler.warmup.epochs is set and replaces it: set one of the two"
    return _from_run_inert(cfg)


def _from_run_inert(cfg: DictConfig) -> str | None:
    if _is_chain(cfg) and _get(cfg, "sampler.warmup.from_run") not in (None, _MISSING):
        return (
            "sampler.warmup.from_run is set: the chain starts at that run's sample, without an "
            "AdamW warm start"
        )
    return None


_CHAIN_LENGTH = (
    "a chain runs sampler.warmup + burn_in + thin x num_samples steps and stops by itself; "
    "limit it with sampler.max_steps"
)
_EARLY_STOP = "early stopping and its monitor are for sampler=map; a chain keeps all its samples"
#: sampler keys only a chain reads (``sampler.lr`` is MAP's AdamW learning rate too)
_CHAIN_ONLY = [k for k, _ in CHAIN_RULES if k not in {m for m, _ in MAP_RULES}] + [
    "sampler.optimizer",
    "sampler.algorithm",
    "sampler.hparams",
]
#: the top-level ``sampler.*`` keys that mean nothing to MAP (left out of its manifest)
CHAIN_ONLY_SAMPLER_KEYS = tuple(
    dict.fromkeys(k.split(".")[1] for k in [*_CHAIN_ONLY, "sampler.schedule", "sampler.swag"])
)

#: (key, rule): when ``rule(cfg)`` gives a reason, the key does nothing in this run, and setting
#: it on the command line is refused with that reason (keys that shared config files set for
#: every sampler, such as debug=smoke's chain sizes, are not).
INERT_RULES: list[tuple[str, Callable[[DictConfig], str | None]]] = [
    ("data.obs_std", _obs_std_inert),
    ("sampler.warmup.steps", _warmup_steps_inert),
    ("sampler.warmup.epochs", _from_run_inert),
    ("sampler.warmup.lr", _from_run_inert),
    *[(key, _map_inert) for key in _CHAIN_ONLY if key != "sampler.warmup.from_run"],
    ("sampler.warmup.from_run", _map_inert),
    ("sampler.schedule", _map_inert),
    ("callbacks.checkpoint.every_n_train_steps", _map_inert),
    ("callbacks.samples.flush_every", _map_inert),
    ("callbacks.progress.every_n_steps", _map_inert),
    ("callbacks.trace", _map_inert),
    ("callbacks.best_checkpoint", _chain_inert(_EARLY_STOP)),
    ("trainer.max_epochs", _chain_inert(_CHAIN_LENGTH)),
    ("trainer.min_epochs", _chain_inert(_CHAIN_LENGTH)),
    ("trainer.max_steps", _chain_inert(_CHAIN_LENGTH)),
    ("callbacks.early_stopping", _chain_inert(_EARLY_STOP)),
]

#: keys whose presence anywhere (not only on the command line) is refused by an INERT_RULES row
ALWAYS_INERT = ("trainer.max_steps",)

_GROUPS = frozenset(p.name for p in (Path(__file__).parent / "conf").iterdir() if p.is_dir())


def override_key(override: str) -> str:
    """``+sampler.lr=0.5`` -> ``sampler.lr``; ``~a.b`` -> ``a.b``; ``sampler=sgld`` -> ``sampler``."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _set_on_command_line(key: str, overrides: Sequence[str]) -> str | None:
    for override in overrides:
        k = override_key(override)
        if k in _GROUPS and "." not in k:
            continue  # a group selection (sampler=sgld) sets no single key
        if k == key or k.startswith(f"{key}.") or key.startswith(f"{k}."):
            return override
    return None


def _check_inert(cfg: DictConfig, overrides: Sequence[str], errors: list[str], sweep: bool) -> None:
    for key, rule in INERT_RULES:
        value = _get(cfg, key)
        if value is _MISSING or any(e.startswith((f"{key}=", f"{key}.")) for e in errors):
            continue
        given = _set_on_command_line(key, overrides)
        if given is None and not (key in ALWAYS_INERT and value is not None):
            continue
        reason = rule(cfg)
        if reason is None:
            continue
        shown = key
        if given is not None and override_key(given).startswith(f"{key}."):
            shown = override_key(given)  # name the key the command line set
            value = _get(cfg, shown)
        line = f"{shown}={_show(value)} is not allowed: it does nothing here: {reason}"
        if sweep and given is not None:
            log.warning("%s (ignored in this job of the sweep)", line)
        else:
            errors.append(line)


def _check_unknown(
    cfg: DictConfig, key: str, accepted: Sequence[str], what: str, errors: list[str]
) -> list[str]:
    """Report keys under ``key`` that are not ``accepted``; returns the known ones present."""
    node = _get(cfg, key)
    node = node if isinstance(node, dict) else {}
    listed = ", ".join(accepted) if accepted else "none"
    for name in sorted(set(node) - set(accepted)):
        near = nearest_key(name, list(accepted))
        hint = f" (did you mean {key}.{near}?)" if near else ""
        errors.append(
            f"{key}.{name}={node[name]!r} is not allowed: unknown key{hint}; keys of {what}: "
            f"{listed}"
        )
    return [name for name in accepted if name in node]


def _tiny_rules(cfg: DictConfig) -> list[Rule]:
    """The tiny model's config is in ``model.tiny``: its layer width bounds the LoRA rank."""
    if _get(cfg, "model.name_or_path") != "tiny-bert":
        return []
    tiny = _get(cfg, "model.tiny")
    tiny = tiny if isinstance(tiny, dict) else {}
    width = min(int(tiny.get("hidden_size", 32)), int(tiny.get("intermediate_size", 64)))
    return [("model.lora.r", _note(_int(1, width), f"the width of tiny-bert's layers is {width}"))]


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


def _methods() -> list[str]:
    """Registered algorithms without a sampler class (``blob``: the module step builds its own
    update rule, AdamW on its objective): a config names them by ``sampler.algorithm``."""
    return sorted(set(HYPERPARAMETERS) - set(sampler_targets().values()))


def _check_chain(cfg: DictConfig, errors: list[str]) -> None:
    """SG-MCMC sampler: algorithm, hparams, schedule, chain lengths and the step arithmetic."""
    targets = sampler_targets()
    named = _get(cfg, "sampler.algorithm")
    if _get(cfg, "sampler.optimizer") not in (_MISSING, None):
        if named is not _MISSING:
            errors.append(
                f"sampler.algorithm={_show(named)} is not allowed: the update rule is "
                "sampler.optimizer._target_ (a registered sampler class, e.g. "
                "bayesian_lora.samplers.SGLD): pick it with sampler=<name>; sampler.algorithm "
                f"names a method that builds its own ({', '.join(_methods())})"
            )
            return
        algorithm = targets.get(str(_get(cfg, "sampler.optimizer._target_")))
        if algorithm is None or algorithm not in HYPERPARAMETERS:
            shown = sorted({sampler_target(a) for a in targets.values() if a in HYPERPARAMETERS})
            rule = _note(_one_of(shown), "a registered sampler class")
            _apply(cfg, [("sampler.optimizer._target_", rule)], errors)
            return  # the other sampler keys depend on the algorithm
        if _get(cfg, "sampler.optimizer._partial_") is not True:
            errors.append(
                f"sampler.optimizer._partial_={_show(_get(cfg, 'sampler.optimizer._partial_'))} "
                "is not allowed: true (the module builds it from the sampled parameters)"
            )
    elif named is not _MISSING:
        rule = _note(
            _one_of(_methods()),
            "a method whose module step builds its own update rule; a sampler's update rule "
            "is sampler.optimizer._target_",
        )
        if named not in _methods():
            _apply(cfg, [("sampler.algorithm", rule)], errors)
            return
        algorithm = str(named)
    else:
        configs = sorted(
            p.stem for p in (Path(__file__).parent / "conf" / "sampler").glob("*.yaml")
        )
        errors.append(
            f"sampler.name={_show(_get(cfg, 'sampler.name'))} is not allowed: map, or a chain "
            f"with an update rule (sampler.optimizer._target_): sampler=one of {', '.join(configs)}"
        )
        return
    before = len(errors)
    _apply(cfg, CHAIN_RULES, errors)
    checks = HYPERPARAMETERS[algorithm]
    what = f"sampler {algorithm}'s hparams"
    present = _check_unknown(cfg, "sampler.hparams", sorted(checks), what, errors)
    _apply(cfg, [(f"sampler.hparams.{k}", checks[k]) for k in present], errors)
    if _get(cfg, "sampler.swag") not in (_MISSING, None):
        _check_unknown(
            cfg, "sampler.swag", ("rank", "num_draws", "draw_seed"), "sampler.swag", errors
        )
        _apply(cfg, SWAG_RULES, errors)
    blob = _get(cfg, "sampler.blob")
    if (algorithm == "blob") != (blob not in (_MISSING, None)):
        errors.append(
            f"sampler.blob={_show(blob)} is not allowed: the settings of sampler=blob, given "
            f"exactly when sampler.algorithm is blob (here {algorithm})"
        )
    elif algorithm == "blob":
        _check_unknown(cfg, "sampler.blob", BLOB_KEYS, "sampler.blob", errors)
        _apply(cfg, BLOB_RULES, errors)
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
    from bayesian_lora.config import build_chain_plan

    try:
        build_chain_plan(cfg)
    except ValueError as err:
        value = _show(_get(cfg, "sampler.max_steps"))
        errors.append(f"sampler.max_steps={value} is not allowed: {err}")


# ---------------------------------------------------------------- second stage: the model config
def model_width(config: Any) -> int | None:
    """The smallest width of a transformer config's adapted layers (its hidden size)."""
    sizes = [
        getattr(config, name)
        for name in ("hidden_size", "dim", "n_embd", "d_model", "intermediate_size", "hidden_dim")
        if _is_int(getattr(config, name, None))
    ]
    return min(sizes) if sizes else None


def validate_model(cfg: DictConfig) -> None:
    """Rules that need the model's own config (read with ``AutoConfig``; no weights load).

    ``model.name_or_path`` must be loadable here (a local folder, the Hub, or its cache), and
    ``model.lora.r`` at most the width of the adapted layers. Encoders only: the tiny models'
    configs are ``model.tiny`` (tiny-bert's checked by :func:`validate_config`), and causal LMs
    are read by ``models.causal`` (a packaged GGUF offline).
    """
    name = _get(cfg, "model.name_or_path")
    if name in ("tiny-bert", "tiny-causal") or _get(cfg, "model.kind") == "causal":
        return  # the tiny models' configs are model.tiny; causal LMs load their own way
    from transformers import AutoConfig

    from bayesian_lora.models.lora import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(str(name)))
    except (OSError, ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"model.name_or_path={name!r} is not allowed: it cannot be loaded here ({reason}); "
            f"{MODEL_ID[1]}, available locally or from the Hub"
        ) from err
    errors: list[str] = []
    width = model_width(config)
    if width is not None:
        rule = _note(_int(1, width), f"the width of {name}'s layers is {width}")
        _apply(cfg, [("model.lora.r", rule)], errors)
    positions = getattr(config, "max_position_embeddings", None)
    if _is_int(positions):
        rule = _note(_int(8, positions), f"{name} has {positions} positions")
        _apply(cfg, [("model.max_length", rule)], errors)
    raise_errors(errors)


# ---------------------------------------------------------------- evaluate's options
_OPTIONAL_TEXT = (lambda v: v is None or TEXT[0](v), "null or a non-empty string")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
TORCH_DEVICE: Check = (
    lambda v: isinstance(v, str) and bool(_DEVICE.fullmatch(v)),
    "auto, cpu, mps, cuda or cuda:<index>",
)

#: ``conf/evaluate.yaml``: k, mc_dropout, split, ood and calibrate are checked by
#: ``evaluate.check_options`` (their allowed values depend on the registries).
EVALUATE_RULES: list[Rule] = [
    ("task_name", TEXT),
    ("run_dir", _OPTIONAL_TEXT),
    ("run_dirs", TEXTS),
    ("model", ANY),  # a model config, compared with the runs' manifests
    ("weights", _OPTIONAL_TEXT),
    ("k", ANY),
    ("split", ANY),
    ("mc_dropout", ANY),
    ("calibrate", ANY),
    ("predictive", _one_of(["samples", "glm"])),  # glm: Laplace runs (evaluate.check_options)
    ("glm_link", _one_of(["mc", "probit"])),
    ("glm_samples", _int(1)),
    ("ood", ANY),
    ("shift", ANY),  # task names: evaluate.check_options
    ("single", FLAG),
    ("plots", FLAG),
    ("ood_max_samples", _optional(_int(1))),
    ("eval_batch_size", _optional(_int(1))),
    ("device", TORCH_DEVICE),
    ("seed", _int(0, 2**32 - 1)),
    ("out_dir", _OPTIONAL_TEXT),
    ("diagnostics.probes", _int(0)),
    ("diagnostics.rhat_threshold", _real(lambda v: v > 1, "a number > 1")),
    ("diagnostics.ess_threshold", POSITIVE),
    ("diagnostics.stationarity_z", POSITIVE),
    ("paths.data_dir", FOLDER),
    ("paths.cache_dir", _OPTIONAL_TEXT),
    ("wandb.enabled", FLAG),
    ("wandb.project", TEXT),
    ("wandb.entity", _OPTIONAL_TEXT),
    ("wandb.mode", _optional(_one_of(["online", "offline", "disabled"]))),
    ("wandb.group", _OPTIONAL_TEXT),
    ("wandb.tags", TEXTS),
]


def validate_evaluate_config(cfg: DictConfig) -> None:
    """``python -m bayesian_lora.evaluate``'s options: unknown keys and the rows above."""
    _validate_command(cfg, EVALUATE_RULES, "evaluate", ("model", "hydra"))


#: ``conf/laplace.yaml``: structure, prior_precision and val_nll_grid are checked by
#: ``laplace.check_options`` (the structures are the method module's; the grid matters only
#: with ``prior_precision=val_nll``).
LAPLACE_RULES: list[Rule] = [
    ("task_name", TEXT),
    ("run_dir", _OPTIONAL_TEXT),
    ("structure", ANY),
    ("prior_precision", ANY),
    ("val_nll_grid", ANY),
    ("val_nll_draws", _int(1)),
    ("num_samples", _int(1)),
    ("seed", _int(0, 2**32 - 1)),
    ("max_batches", _optional(_int(1))),
    ("out_dir", _OPTIONAL_TEXT),
    ("model", ANY),  # a model config, compared with the MAP run's manifest
    ("eval_batch_size", _optional(_int(1))),
    ("device", TORCH_DEVICE),
    ("evaluate_on_fit_end", FLAG),
    ("paths.data_dir", FOLDER),
    ("paths.cache_dir", _OPTIONAL_TEXT),
]


def validate_laplace_config(cfg: DictConfig) -> None:
    """``python -m bayesian_lora.laplace``'s options: unknown keys and the rows above."""
    _validate_command(cfg, LAPLACE_RULES, "laplace", ("model", "hydra"))


def _validate_command(
    cfg: DictConfig, rules: Sequence[Rule], command: str, free: Sequence[str]
) -> None:
    """A command's options: a key no row names (outside the ``free`` subtrees) is an error
    naming the nearest valid key; then the rows; every bad value at once."""
    errors: list[str] = []
    known = {k for k, _ in rules}
    groups = {k.split(".", 1)[0] for k in known if "." in k}
    container = OmegaConf.to_container(cfg, resolve=False)
    for key in _leaves(container):
        top = key.split(".", 1)[0]
        if key in known or top in free or key in groups:
            continue
        value = _show(OmegaConf.select(cfg, key, default=_MISSING))
        near = nearest_key(key, sorted(known))
        hint = f"; did you mean {near}" if near else ""
        errors.append(
            f"{key}={value} is not allowed: unknown key, nothing reads it{hint}? {command}'s "
            f"keys: {', '.join(sorted({k.split('.', 1)[0] for k in known}))}"
        )
    _apply(cfg, rules, errors)
    raise_errors(errors)
