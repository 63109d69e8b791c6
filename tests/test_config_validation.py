"""validate_config on the composed Hydra config: bad values are refused, shipped configs pass.

Pure config composition (``tests.helpers.compose_train``): no model, tokenizer or data is loaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from bayesian_lora import config_validation
from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.config_validation import ConfigError, validate_config
from bayesian_lora.data.tasks import TASKS
from tests.helpers import compose_config, compose_train

GROUPS = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}
#: Groups whose configs write only their own node (test_groups_write_only_their_node checks it).
SWAPPABLE = ("sampler", "model", "data", "trainer", "logger")


@pytest.fixture(autouse=True)
def _one_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped GPU configs are validated as on a machine with a GPU (see test_bad_inputs)."""
    monkeypatch.setattr(config_validation, "cuda_devices", lambda: 1)


@functools.cache
def _compose_groups(groups: tuple[str, ...]) -> DictConfig:
    return compose_train(list(groups))


def options(group: str) -> list[str]:
    """The selectable configs of a group (``_``-prefixed files are shared fragments)."""
    folder = Path(CONFIG_DIR) / group
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


MISSING_DIR = "/nonexistent/bayesian_lora_run"

# (overrides, key, the bad value as the message shows it, a fragment of the allowed text)
BAD = [
    # top level
    ("seed=-1", "seed", "-1", "an integer in [0, 4294967295]"),
    ("prior_std=0", "prior_std", "0", "a number > 0"),
    ("grad_clip=0", "grad_clip", "0", "null or a number > 0"),
    ("dropout_during_sampling=maybe", "dropout_during_sampling", "'maybe'", "true or false"),
    (f"resume={MISSING_DIR}", "resume", repr(MISSING_DIR), "null or an existing folder"),
    # model
    ("model.max_length=1024", "model.max_length", "1024", "has 512 positions"),
    ("model.max_length=128.0", "model.max_length", "128.0", "an integer"),
    (
        "model=tiny +model.tiny.max_position_embeddings=32 model.max_length=64",
        "model.max_length",
        "64",
        "an integer in [8, 32]",
    ),
    ("model.lora.r=0", "model.lora.r", "0", "an integer >= 1"),
    ("model.lora.r=2.5", "model.lora.r", "2.5", "an integer >= 1"),
    ("model.lora.alpha=-1", "model.lora.alpha", "-1", "a number > 0"),
    ("model.lora.dropout=1.0", "model.lora.dropout", "1.0", "a number in [0, 1)"),
    ("model.lora.target_modules=[]", "model.lora.target_modules", "[]", "at least one name"),
    (
        "model=distilbert model.lora.target_modules=[query,value]",
        "model.lora.target_modules",
        "['query', 'value']",
        "DistilBERT linear layers: q_lin, k_lin, v_lin, out_lin, lin1, lin2",
    ),
    (
        "model=distilbert model.lora.modules_to_save=[classifier]",
        "model.lora.modules_to_save",
        "['classifier']",
        "including pre_classifier",
    ),
    (
        "model.lora.modules_to_save=[clasifier]",
        "model.lora.modules_to_save",
        "['clasifier']",
        "head modules among classifier, pooler",
    ),
    (
        "+model.lora.rank=4",
        "model.lora.rank",
        "4",
        "did you mean model.lora.r? keys of model.lora:",
    ),
    # data
    (
        "data.task=mnli",
        "data.task",
        "'mnli'",
        "one of ag_news, arc_c, arc_e, boolq, cola, imdb, mmlu, mrpc",
    ),
    ("data.batch_size=abc", "data.batch_size", "'abc'", "an integer >= 1"),
    ("data.eval_batch_size=true", "data.eval_batch_size", "True", "an integer >= 1"),
    ("data.val_fraction=0", "data.val_fraction", "0", "a number in (0, 1)"),
    ("data.max_train_samples=0", "data.max_train_samples", "0", "null or an integer >= 1"),
    ("data=stsb data.obs_std=0", "data.obs_std", "0", "a number > 0"),
    # sampler: name, update rule (sampler.optimizer), common chain keys
    ("sampler.name=langevin", "sampler.name", "'langevin'", "map, or a chain with an update rule"),
    (
        "sampler=csgld +sampler.algorithm=sgdm",
        "sampler.algorithm",
        "'sgdm'",
        "the update rule is sampler.optimizer._target_",
    ),
    (
        "sampler=sgld sampler.optimizer._target_=torch.optim.SGD",
        "sampler.optimizer._target_",
        "'torch.optim.SGD'",
        "one of bayesian_lora.samplers.ASGLD, bayesian_lora.samplers.PSGLD",
    ),
    (
        "sampler=sgld sampler.optimizer._partial_=false",
        "sampler.optimizer._partial_",
        "False",
        "true (the module builds it from the sampled parameters)",
    ),
    (
        "sampler=blob sampler.algorithm=sgdm",
        "sampler.algorithm",
        "'sgdm'",
        "one of blob (a method whose module step builds its own update rule",
    ),
    ("sampler=sgld sampler.lr=0", "sampler.lr", "0", "a number > 0 (step size eta)"),
    (
        "sampler=sgld sampler.temperature=-1",
        "sampler.temperature",
        "-1",
        "a number > 0 (1 = Bayes posterior, < 1 = cold)",
    ),
    ("sampler=sgld sampler.burn_in=-1", "sampler.burn_in", "-1", "an integer >= 0"),
    ("sampler=sgld sampler.thin=0", "sampler.thin", "0", "an integer >= 1"),
    ("sampler=sgld sampler.num_samples=0", "sampler.num_samples", "0", "an integer >= 1"),
    ("sampler=sgld sampler.warmup.steps=-5", "sampler.warmup.steps", "-5", "an integer >= 0"),
    ("sampler=sgld sampler.warmup.lr=0", "sampler.warmup.lr", "0", "a number > 0"),
    (
        f"sampler=sgld sampler.warmup.from_run={MISSING_DIR}",
        "sampler.warmup.from_run",
        repr(MISSING_DIR),
        "null or an existing folder",
    ),
    ("sampler=sgld sampler.max_steps=0", "sampler.max_steps", "0", "null or an integer >= 1"),
    # sampler hparams: the samplers' own constructor checks
    ("sampler=sam_sgld sampler.hparams.rho=-0.1", "sampler.hparams.rho", "-0.1", ">= 0"),
    (
        "sampler=sam_sgld_r1 sampler.hparams.direction_scale=-2",
        "sampler.hparams.direction_scale",
        "-2",
        ">= -1",
    ),
    ("sampler=sghmc sampler.hparams.friction=1.5", "sampler.hparams.friction", "1.5", "(0, 1]"),
    ("sampler=csghmc sampler.hparams.friction=0", "sampler.hparams.friction", "0", "(0, 1]"),
    ("sampler=psgld sampler.hparams.beta=1.0", "sampler.hparams.beta", "1.0", "[0, 1)"),
    ("sampler=psgld sampler.hparams.eps=0", "sampler.hparams.eps", "0", "> 0"),
    ("sampler=asgld sampler.hparams.drift=-1", "sampler.hparams.drift", "-1", ">= 0"),
    (
        "sampler=sgld +sampler.hparams.foo=1",
        "sampler.hparams.foo",
        "1",
        "unknown key; keys of sampler sgld's hparams: none",
    ),
    (
        "sampler=psgld +sampler.hparams.rho=0.1",
        "sampler.hparams.rho",
        "0.1",
        "keys of sampler psgld's hparams: beta, eps",
    ),
    # step-size schedules
    (
        "sampler=sgld sampler.schedule.name=linear",
        "sampler.schedule.name",
        "'linear'",
        "one of constant, polynomial, cyclical",
    ),
    (
        "sampler=sgld sampler.schedule.name=polynomial +sampler.schedule.tau=0 "
        "+sampler.schedule.gamma=0.55",
        "sampler.schedule.tau",
        "0",
        "a number > 0",
    ),
    (
        "sampler=sgld sampler.schedule.name=polynomial +sampler.schedule.tau=100",
        "sampler.schedule.gamma",
        "<missing>",
        "a number >= 0",
    ),
    (
        "sampler=csgld sampler.schedule.cycle_length=1",
        "sampler.schedule.cycle_length",
        "1",
        "an integer >= 2",
    ),
    (
        "sampler=csgld sampler.schedule.exploration_fraction=1.0",
        "sampler.schedule.exploration_fraction",
        "1.0",
        "null or a number in [0, 1)",
    ),
    (
        "sampler=csgld sampler.schedule.cycle_length=2 sampler.schedule.exploration_fraction=0.6",
        "sampler.schedule.exploration_fraction",
        "0.6",
        "at most (cycle_length - 1) / cycle_length = 0.5",
    ),
    (
        "sampler=csghmc +sampler.schedule.tau=5",
        "sampler.schedule.tau",
        "5",
        "keys of the cyclical schedule: name, cycle_length, exploration_fraction",
    ),
    # the chain's step arithmetic (ChainPlan.validate)
    (
        "sampler=sgld sampler.max_steps=100",
        "sampler.max_steps",
        "100",
        "need 300 warm-up + 200 burn-in + 10 samples x thin 20 = 700 steps but max_steps=100",
    ),
    (
        "sampler=csgld sampler.max_steps=699",
        "sampler.max_steps",
        "699",
        "leaves 100 sampling-stage steps per cycle",
    ),
    # BLoB (sampler.blob; the nearest key is suggested)
    ("sampler=blob sampler.blob.num_draws=0", "sampler.blob.num_draws", "0", "an integer >= 1"),
    (
        "sampler=blob sampler.blob.init_std_fraction=0",
        "sampler.blob.init_std_fraction",
        "0",
        "a number > 0 (the initial std of q as a fraction of the prior's sigma_A)",
    ),
    ("sampler=blob sampler.blob.rho_lr_scale=-1", "sampler.blob.rho_lr_scale", "-1", "> 0"),
    (
        "sampler=blob +sampler.blob.num_draw=3",
        "sampler.blob.num_draw",
        "3",
        "unknown key (did you mean sampler.blob.num_draws?); keys of sampler.blob: num_draws,",
    ),
    (
        "sampler=swag +sampler.swag.ranks=3",
        "sampler.swag.ranks",
        "3",
        "unknown key (did you mean sampler.swag.rank?)",
    ),
    (
        "sampler=sgld +sampler.blob.num_draws=3",
        "sampler.blob",
        "{'num_draws': 3}",
        "given exactly when sampler.algorithm is blob (here sgld)",
    ),
    # MAP
    ("+sampler.hparams.foo=1", "sampler.hparams.foo", "1", "keys of sampler map's hparams: none"),
    ("sampler.lr=0", "sampler.lr", "0", "a number > 0 (AdamW learning rate)"),
    ("sampler.weight_decay=-0.1", "sampler.weight_decay", "-0.1", "a number >= 0"),
    ("sampler.warmup_ratio=1.0", "sampler.warmup_ratio", "1.0", "a number in [0, 1)"),
    # trainer and callbacks
    ("trainer.max_epochs=0", "trainer.max_epochs", "0", "an integer >= 1, or -1"),
    ("trainer.precision=16-true", "trainer.precision", "'16-true'", "one of 32-true"),
    ("trainer.devices=0", "trainer.devices", "0", "an integer >= 1, -1 (all), auto"),
    (
        "callbacks.early_stopping.patience=-1",
        "callbacks.early_stopping.patience",
        "-1",
        "an integer >= 0",
    ),
    (
        "callbacks.checkpoint.every_n_train_steps=0",
        "callbacks.checkpoint.every_n_train_steps",
        "0",
        "an integer >= 1",
    ),
    ("callbacks.samples.flush_every=0", "callbacks.samples.flush_every", "0", "an integer >= 1"),
    # causal LMs and MCQA tasks
    ("data=obqa", "data.task", "'obqa'", "MCQA tasks need a causal LM (model=smollm2"),
    ("model=tiny_causal", "data.task", "'mrpc'", "an MCQA task for a causal LM"),
    ("model=tiny_causal data=mmlu", "data.task", "'mmlu'", "mmlu is evaluation-only"),
    ("model=tiny_causal data=obqa model.dtype=float16", "model.dtype", "'float16'", "bfloat16"),
    ("model=smollm2 data=obqa model.kind=decoder", "model.kind", "'decoder'", "encoder, causal"),
    (
        "model=tiny_causal data=obqa model.lora.target_modules=[query]",
        "model.lora.target_modules",
        "['query']",
        "names of tiny causal linear layers: q_proj, k_proj",
    ),
    (
        "model=llama data=arc_e model.lora.modules_to_save=[score]",
        "model.lora.modules_to_save",
        "['score']",
        "Llama head modules among",
    ),
    ("model=smollm2 data=boolq model.max_length=9000", "model.max_length", "9000", "8192"),
]


def test_groups_write_only_their_node() -> None:
    """Selecting a SWAPPABLE group's config changes that node and nothing else."""
    default = OmegaConf.to_container(_compose_groups(()))
    for group in SWAPPABLE:
        for choice in options(group):
            chosen = OmegaConf.to_container(_compose_groups((f"{group}={choice}",)))
            assert chosen.keys() == default.keys(), f"{group}={choice}"
            changed = [k for k in default if k != group and chosen[k] != default[k]]
            assert not changed, f"{group}={choice} also writes {changed}"


@pytest.mark.parametrize(("overrides", "key", "shown", "allowed"), BAD, ids=[c[0] for c in BAD])
def test_bad_value_is_refused(overrides: str, key: str, shown: str, allowed: str) -> None:
    cfg = compose_train(overrides.split())
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message, f"expected exactly one error, got:\n{message}"
    assert f"{key}={shown} is not allowed: " in message
    assert allowed in message


def test_all_errors_are_reported_at_once() -> None:
    cfg = compose_train(["sampler=sgld", "model.lora.r=0", "sampler.temperature=-1"])
    with pytest.raises(ConfigError, match="2 config errors") as info:
        validate_config(cfg)
    assert "model.lora.r=0" in str(info.value)
    assert "sampler.temperature=-1" in str(info.value)


def test_train_refuses_before_loading_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    import bayesian_lora.train as train_mod

    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was loaded before the config was validated")

    monkeypatch.setattr(train_mod, "build_datamodule", must_not_load)
    with pytest.raises(ConfigError, match="sampler.max_steps=100"):
        train_mod.train(compose_train(["sampler=sgld", "sampler.max_steps=100"]))


# ---------------------------------------------------------------- no false alarms
SAMPLERS, MODELS = options("sampler"), options("model")
COMBOS = [(s, m) for s in SAMPLERS for m in MODELS]


def trainable_data(model: str) -> list[str]:
    """The data configs a model can train on: MCQA for causal LMs, text tasks for encoders."""
    causal = OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{model}.yaml").get("kind") == "causal"
    return [
        d
        for d in options("data")
        if TASKS[d].is_mcqa == causal and TASKS[d].train_split is not None
    ]


def matrix_picks(i: int, model: str) -> list[str]:
    groups = {"data": trainable_data(model), **{g: options(g) for g in ("trainer", "logger")}}
    return [f"{g}={names[i % len(names)]}" for g, names in groups.items()]


@pytest.mark.parametrize(("sampler", "model"), COMBOS, ids=[f"{s}-{m}" for s, m in COMBOS])
def test_shipped_combinations_pass(sampler: str, model: str) -> None:
    """Every sampler x model; data (of the model's kind), trainer and logger configs rotate."""
    picks = matrix_picks(COMBOS.index((sampler, model)), model)
    validate_config(compose_train([f"sampler={sampler}", f"model={model}", *picks]))


def test_every_data_trainer_and_logger_config_is_in_the_matrix() -> None:
    seen = {p for i, (_, model) in enumerate(COMBOS) for p in matrix_picks(i, model)}
    evaluation_only = {f"data={d}" for d in options("data") if TASKS[d].train_split is None}
    for group in ("data", "trainer", "logger"):
        expected = {f"{group}={n}" for n in options(group)} - evaluation_only
        assert {p for p in seen if p.startswith(f"{group}=")} == expected, group


@pytest.mark.parametrize("debug", options("debug"))
@pytest.mark.parametrize("sampler", ["map", "csghmc"])
def test_debug_configs_pass(debug: str, sampler: str) -> None:
    validate_config(compose_train([f"debug={debug}", f"sampler={sampler}", "model=tiny"]))


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_pass(experiment: str) -> None:
    """Each experiment, and each value of each key its sweep varies (one key at a time)."""
    validate_config(compose_train([f"experiment={experiment}"]))
    full = compose_config("train", [f"experiment={experiment}"], hydra_config=True)
    sweep = full.hydra.sweeper.get("params") or {}
    parser = OverridesParser.create()
    for key, values in sweep.items():
        (override,) = parser.parse_overrides([f"{key}={values}"])
        for value in override.sweep_string_iterator():
            validate_config(compose_train([f"experiment={experiment}", f"{key}={value}"]))


@pytest.mark.parametrize(
    "overrides",
    [
        "seed=0 sampler=sgld sampler.temperature=0.5 sampler.lr=1e-3",
        "sampler=sghmc sampler.hparams.friction=1",
        "sampler=psgld sampler.hparams.beta=0",
        "sampler=sam_sgld_r1 sampler.hparams.direction_scale=-1",
        "sampler=sgld sampler.max_steps=700",
        "sampler=csgld sampler.max_steps=700 sampler.schedule.exploration_fraction=0",
        "sampler=sgld sampler.schedule.name=polynomial +sampler.schedule.tau=100 "
        "+sampler.schedule.gamma=0.55",
        "trainer.max_epochs=-1 trainer.devices=auto grad_clip=1.0",
        "trainer=gpu trainer.devices=[0,1] data.max_train_samples=64",
        "model.name_or_path=my/local-model model.lora.target_modules=[anything]",
    ],
)
def test_boundary_values_pass(overrides: str) -> None:
    validate_config(compose_train(overrides.split()))


def test_existing_folders_pass(tmp_path: Path) -> None:
    validate_config(compose_train([f"resume={tmp_path}"]))
    validate_config(compose_train(["sampler=sgld", f"sampler.warmup.from_run={tmp_path}"]))


@pytest.mark.parametrize(
    "chain", ["mrpc_minilm_sgld_cpu", "mrpc_minilm_swag_cpu", "mrpc_minilm_blob_cpu"]
)
def test_cpu_chain_experiment_has_the_map_experiments_budget_and_seed(chain: str) -> None:
    """README's SGLD-versus-MAP pairing: equal step budgets (MRPC: 3,301 train pairs, batch 32)."""
    from bayesian_lora.config import build_chain_plan

    steps_per_epoch = -(-3301 // 32)
    map_cfg = compose_train(["experiment=mrpc_minilm_map_cpu"])
    sgld_cfg = compose_train([f"experiment={chain}"])
    plan = build_chain_plan(sgld_cfg, steps_per_epoch)
    assert plan is not None and plan.num_samples >= 10 and plan.burn_in > 0
    assert plan.total_steps() == int(map_cfg.trainer.max_epochs) * steps_per_epoch
    assert plan.warmup_steps == 3 * steps_per_epoch  # the warm start is a 3-epoch MAP schedule
    assert sgld_cfg.seed == map_cfg.seed and sgld_cfg.data == map_cfg.data


@pytest.mark.parametrize(
    ("experiment", "twin"),
    [
        ("sst2_minilm_sam_sgld_cpu", "sst2_minilm_sgld_cpu"),
        ("mrpc_minilm_asgld_cpu", "mrpc_minilm_sgld_cpu"),
    ],
)
def test_cpu_twins_differ_only_in_the_sampler(experiment: str, twin: str) -> None:
    """README's CPU twins compare at one budget: same data, model, seed and chain plan."""
    a, b = compose_train([f"experiment={experiment}"]), compose_train([f"experiment={twin}"])
    assert a.sampler.name != b.sampler.name
    assert a.data == b.data and a.model == b.model and a.seed == b.seed
    chain_keys = ("lr", "temperature", "warmup", "burn_in", "thin", "num_samples", "schedule")
    assert all(a.sampler[k] == b.sampler[k] for k in chain_keys)
