"""Run folders and evaluation folders of a sweep, read and grouped into configurations.

A run folder (``manifest.json`` + ``metrics.json``) holds the training-end test evaluation of its
kept samples (a Laplace run folder: the test evaluation at the end of the fit); an evaluation
folder (``python -m bayesian_lora.evaluate``: a ``metrics.json`` with ``runs`` and ``kind``) holds
a later evaluation of one or several run folders (OOD, temperature scaling, MC dropout, the GLM
predictive, ...). Runs whose saved ``config.yaml`` agree on everything but the seed (and paths)
are one configuration (a :class:`Group`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf

from bayesian_lora.evaluation.write import METRICS_FILE, json_load
from bayesian_lora.runs import LAPLACE, MAP, RunFolder, SampleFileError
from bayesian_lora.runs import find_run_folders as _find_runs

# Config keys that differ between seeds of one configuration, only say where things are, or
# only say how a run shows and saves its progress (the samples do not depend on them: resume is
# bit-identical, flushes are atomic), so runs launched with other display settings still group.
IGNORED = (
    "seed",
    "paths",
    "resume",
    "tags",
    "logger",
    "task_name",
    "hydra",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "sampler.warmup.from_run",
    "sampler.from_run",  # a Laplace run's MAP run
    "callbacks.progress",
    "callbacks.checkpoint.every_n_train_steps",
    "callbacks.samples.flush_every",
    "callbacks.trace.flush_every_steps",
)


@dataclass
class SweepRun:
    """One run folder of a sweep."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, float]
    compute: dict[str, Any] = field(default_factory=dict)  # the manifest's compute block
    posterior: dict[str, Any] = field(default_factory=dict)  # the manifest's posterior block

    @property
    def model(self) -> str:
        return str(self.config["model"]["name"])

    @property
    def task(self) -> str:
        return str(self.config["data"]["task"])

    @property
    def sampler(self) -> str:
        return str(self.config["sampler"]["name"])

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def is_map(self) -> bool:
        return self.sampler == MAP

    @property
    def method(self) -> str:
        """The sampler's name, with the curvature structure of a Laplace run (``laplace (kron)``)."""
        structure = self.config["sampler"].get("structure")
        laplace = self.sampler == LAPLACE and structure
        return f"{self.sampler} ({structure})" if laplace else self.sampler

    @property
    def independent_draws(self) -> bool:
        """The samples are independent draws from a fitted distribution (SWAG, Laplace, BLoB:
        a manifest ``posterior`` block), not a Markov chain."""
        return bool(self.posterior)

    @property
    def temperature(self) -> float | None:
        t = self.config["sampler"].get("temperature")
        return None if t is None or self.is_map else float(t)

    @property
    def step_size(self) -> float | None:
        lr = self.config["sampler"].get("lr")  # MAP's is AdamW's learning rate: not shown
        return None if lr is None or self.is_map else float(lr)


@dataclass
class Group:
    """Runs of one configuration (seeds); ``label`` names the method in tables."""

    key: tuple[tuple[str, str], ...]
    runs: list[SweepRun] = field(default_factory=list)
    label: str = ""

    @property
    def first(self) -> SweepRun:
        return self.runs[0]

    @property
    def is_map(self) -> bool:
        return self.first.is_map


@dataclass
class EvalFolder:
    """One ``evaluate`` output folder: which runs it pooled, how many members, what it holds."""

    path: Path
    runs: frozenset[Path]
    result: dict[str, Any]
    #: each run's kept samples that the evaluation used (``samples_used``; None: not recorded)
    used: Mapping[Path, tuple[int, ...] | None] = field(default_factory=dict)

    @property
    def num_members(self) -> int:
        return int(self.result.get("num_members", 0))

    @property
    def mc_dropout(self) -> int:
        return int(self.result.get("mc_dropout") or 0)

    @property
    def glm_link(self) -> str | None:
        """The link of the linearised Laplace predictive (``predictive=glm``), else None."""
        predictive = self.result.get("predictive") or {}
        return str(predictive.get("link", "mc")) if predictive.get("kind") == "glm" else None

    @property
    def on_test(self) -> bool:
        return self.result.get("split", "test") == "test"

    @property
    def plain(self) -> bool:
        """The test split, the stored members as saved (no MC dropout, not the GLM predictive)."""
        return self.on_test and not self.mc_dropout and self.glm_link is None

    @property
    def variant(self) -> str | None:
        """What makes a test evaluation a row of its own, as the row label's suffix:
        `` + MC dropout (K=10)`` (``mc_dropout=10``) or `` GLM (mc)`` (``predictive=glm``);
        None for a plain evaluation or another split."""
        if not self.on_test:
            return None
        if self.mc_dropout:
            return f" + MC dropout (K={self.mc_dropout})"
        return None if self.glm_link is None else f" GLM ({self.glm_link})"

    @property
    def calibration(self) -> dict[str, Any] | None:
        cal = self.result.get("calibration")
        return cal if isinstance(cal, dict) else None

    @property
    def ood(self) -> dict[str, Any]:
        """The report's OOD columns of this evaluation (empty without ``ood=``)."""
        ood = self.result.get("ood")
        return ood_columns(ood) if isinstance(ood, Mapping) else {}

    @property
    def eval_seconds(self) -> float | None:
        secs = (self.result.get("compute") or {}).get("eval_seconds")
        return None if secs is None else float(secs)

    @property
    def forward_passes(self) -> int:
        """Forward passes per test example as recorded (MC dropout: K x samples; the GLM
        predictive: one per run), else the member count."""
        passes = (self.result.get("compute") or {}).get("forward_passes_per_example")
        return self.num_members if passes is None else int(passes)

    @property
    def backward_passes(self) -> int | None:
        """Backward passes per test example (the GLM predictive's Jacobian: K per run)."""
        passes = (self.result.get("compute") or {}).get("backward_passes_per_example")
        return None if passes is None else int(passes)


# ----------------------------------------------------------------------------- run folders


def is_run_folder(path: Path) -> bool:
    """A finished run folder: samples and test metrics."""
    run = RunFolder(path)
    return run.is_run_folder and run.metrics_file.is_file()


def find_run_folders(folders: Sequence[str | Path]) -> list[Path]:
    """Finished run folders given directly or found anywhere below the given folders."""
    return [r.path for r in _find_runs(folders, with_metrics=True)]


def unfinished_run_folders(folders: Sequence[str | Path]) -> list[Path]:
    """Folders below ``folders`` with samples but no test metrics."""
    runs = _find_runs(folders, required=False)
    return [r.path for r in runs if not r.metrics_file.is_file()]


def load_run(path: Path) -> SweepRun:
    """Config, training-end test metrics and compute of a run folder (OOD AUROCs come from its
    evaluation folders: :class:`EvalFolder`)."""
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} is missing (not a run folder of bayesian_lora.train)"
        )
    # .hydra/config.yaml is a mapping: its container is a dict
    config = cast(
        dict[str, Any], OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
    )
    metrics = dict(json_load(path / METRICS_FILE).get("ensemble", {}))
    try:
        manifest = RunFolder(path).manifest
    except SampleFileError:
        return SweepRun(path, config, metrics)
    compute = dict(manifest.get("compute") or {})
    return SweepRun(path, config, metrics, compute, dict(manifest.get("posterior") or {}))


def ood_columns(ood: Mapping[str, Any]) -> dict[str, Any]:
    """The report's OOD columns of an evaluation's ``ood`` block."""
    return {
        "ood_auroc_entropy": ood["entropy"]["auroc"],
        "ood_auroc_mi": ood["mutual_information"]["auroc"],
        "ood_task": ood["task"],
    }


# ----------------------------------------------------------------------------- evaluation folders


def find_eval_folders(folders: Sequence[str | Path], runs: Sequence[SweepRun]) -> list[EvalFolder]:
    """Every ``evaluate`` output below ``folders`` (or inside the runs) whose runs are all known.

    Run paths in its ``metrics.json`` are matched as written, else by folder name beside the
    evaluation folder or in its run folder (so a copied sweep still matches).
    """
    known = {r.path.resolve(): r.path.resolve() for r in runs}
    by_name: dict[str, list[Path]] = {}
    for p in known:
        by_name.setdefault(p.name, []).append(p)
    candidates = {p.parent.resolve() for f in folders for p in Path(f).rglob(METRICS_FILE)}
    candidates |= {p.parent.resolve() for r in runs for p in r.path.glob(f"*/{METRICS_FILE}")}
    out = []
    for folder in sorted(candidates):
        if folder in known:
            continue  # a run folder's own training-end metrics
        try:
            result = json_load(folder / METRICS_FILE)
        except SampleFileError:
            continue
        if not isinstance(result, dict) or "runs" not in result or "kind" not in result:
            continue
        paths = [_match(str(r.get("run_dir", "")), folder, known, by_name) for r in result["runs"]]
        if paths and all(p is not None for p in paths):
            used = {
                p: None if r.get("samples_used") is None else tuple(sorted(r["samples_used"]))
                for p, r in zip(paths, result["runs"], strict=True)
                if p is not None
            }
            out.append(EvalFolder(folder, frozenset(used), result, used))
    return out


def _match(
    written: str, folder: Path, known: Mapping[Path, Path], by_name: Mapping[str, list[Path]]
) -> Path | None:
    path = Path(written)
    if path.resolve() in known:
        return known[path.resolve()]
    for guess in (folder.parent / path.name, folder.parent.parent / path.name):
        if guess.resolve() in known:
            return known[guess.resolve()]
    if folder.parent.name == path.name and folder.parent.resolve() in known:
        return folder.parent.resolve()
    near = [p for p in by_name.get(path.name, []) if p.parent == folder.parent]
    return near[0] if len(near) == 1 else None


def eval_folders_of(
    evals: Sequence[EvalFolder],
    runs: Sequence[SweepRun],
    members: int | None = None,
    samples: Sequence[Iterable[int]] | None = None,
) -> list[EvalFolder]:
    """The plain test evaluations of exactly these runs (and ``members``, if given; and, with
    ``samples``, the kept-sample indices of each run in ``runs``' order, exactly those samples
    wherever the evaluation recorded them)."""
    want = frozenset(r.path.resolve() for r in runs)
    chosen = {
        r.path.resolve(): tuple(sorted(int(i) for i in s))
        for r, s in zip(runs, samples or [], strict=False)
    }
    return [
        e
        for e in evals
        if e.runs == want
        and e.plain
        and (members is None or e.num_members == members)
        and all(e.used.get(p) in (None, s) for p, s in chosen.items())
    ]


def evals_of(evals: Sequence[EvalFolder], runs: Sequence[SweepRun]) -> list[EvalFolder]:
    """Every evaluation of exactly these runs (any kind)."""
    want = frozenset(r.path.resolve() for r in runs)
    return [e for e in evals if e.runs == want]


# ----------------------------------------------------------------------------- groups


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def config_key(run: SweepRun) -> tuple[tuple[str, str], ...]:
    """The run's config without seed and location keys: equal keys = seeds of one config."""
    flat = _flatten(run.config)
    keep = {
        k: repr(v)
        for k, v in flat.items()
        if not any(k == i or k.startswith(f"{i}.") for i in IGNORED)
    }
    return tuple(sorted(keep.items()))


def group_runs(runs: Sequence[SweepRun]) -> list[Group]:
    """Groups of seeds, labelled by method (the sampler; a Laplace run's with its structure)
    plus the keys that tell same-method groups apart."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        groups.setdefault(config_key(run), Group(config_key(run))).runs.append(run)
    out = sorted(
        groups.values(),
        key=lambda g: (g.first.model, g.first.task, _order(g.first.method), _t(g)),
    )
    for g in out:
        g.runs.sort(key=lambda r: r.seed)
        twins = [
            h
            for h in out
            if (h.first.model, h.first.task, h.first.method)
            == (g.first.model, g.first.task, g.first.method)
        ]
        g.label = g.first.method + _distinguishing(g, twins)
    return out


def _order(sampler: str) -> tuple[int, str]:
    return (0 if sampler == MAP else 1, sampler)


def _t(group: Group) -> float:
    """Higher temperatures first within a sampler (T = 1, the Bayes posterior, leads)."""
    t = group.first.temperature
    return -t if t is not None and math.isfinite(t) else 0.0


def _distinguishing(group: Group, twins: Sequence[Group]) -> str:
    if len(twins) < 2:
        return ""
    mine = dict(group.key)
    varying = [k for k in mine if any(dict(t.key).get(k) != mine[k] for t in twins)]
    return " (" + ", ".join(f"{k}={mine[k]}" for k in varying[:3]) + ")"
