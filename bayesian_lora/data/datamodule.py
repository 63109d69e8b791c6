"""Lightning data module for the text-classification tasks, plus a resumable shuffling sampler.

Splits: ``train`` and ``validation`` are carved from the task's train split (seeded by
``split_seed``; stratified by label for classification), validation drives early stopping and
model selection, and ``test`` is ``task.test_split``, a labelled split nothing is tuned on.
``setup("test")`` builds the test split alone (what shift and OOD sets need), so evaluation-only
tasks (no train split, e.g. MMLU) work there. MCQA rows are first turned into prompts with answer
letters (:mod:`bayesian_lora.data.mcqa`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import datasets
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from bayesian_lora.data.checks import check_files, check_values, content_fingerprint, split_files
from bayesian_lora.data.mcqa import CHOICE_MASK, to_classification
from bayesian_lora.data.tasks import TaskSpec, get_task
from bayesian_lora.errors import MissingInputError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "BAYESIAN_LORA_DATA_DIR"
LABELS = "labels"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The local data root: ``data_dir`` if given, else ``$BAYESIAN_LORA_DATA_DIR``, else None.

    None means "load from the Hugging Face Hub". The result has ``~`` expanded and is absolute.
    """
    value = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser().resolve() if value else None


def _missing(task: TaskSpec, path: Path, reason: str) -> MissingInputError:
    return MissingInputError(
        f"task {task.name!r} (Hub dataset {task.hub_id!r}, config {task.hub_config!r}) not found "
        f"in the local data folder {path}: {reason}. Put a copy of the Hub repo there, or point "
        f"paths.data_dir (or ${DATA_DIR_ENV}) at the folder that holds {task.hub_id}/, or leave "
        "both unset to download from the Hugging Face Hub."
    )


def local_cache_dir(path: Path, task: TaskSpec, cache_dir: str | None) -> str:
    """The ``datasets`` cache of a local copy, keyed on its files' content.

    ``datasets`` keys a local folder's cache on its README only: an edited Parquet file (or
    another folder with the same README) would be served from the old cache.
    """
    root = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE)
    return str(root / "bayesian_lora_local" / f"{task.name}-{content_fingerprint(path, task)}")


def load_task_dataset(
    task: TaskSpec,
    data_dir: Path | None,
    cache_dir: str | None = None,
    test_only: bool = False,
    val_fraction: float = 0.1,
) -> datasets.DatasetDict:
    """Load ``task`` from ``data_dir / task.hub_id`` (a local copy laid out like the Hub repo),
    or from the Hub when ``data_dir`` is None. Raises ``FileNotFoundError`` naming the folder
    when the local copy, its config or a split the task needs (train and test; only test with
    ``test_only``) is missing, and ``DataError`` naming the file when a file does not fit the
    task (``data.checks.check_files``)."""
    needed: list[str | None] = (
        [task.test_split] if test_only else [task.train_split, task.test_split]
    )
    if None in needed:
        raise ValueError(
            f"task {task.name!r} is evaluation-only (no train split): evaluate on it "
            f"(evaluate ... ood={task.name} or shift=[{task.name}]) instead of training on it"
        )
    if data_dir is None:
        dsd = datasets.load_dataset(task.hub_id, task.hub_config, cache_dir=cache_dir)
        return _check_splits(task, dsd, task.hub_id, needed)
    path = Path(data_dir) / task.hub_id
    if not path.is_dir():
        raise _missing(task, path, "no such folder")
    check_files(task, path, val_fraction, [str(n) for n in needed])
    try:
        dsd = datasets.load_dataset(
            str(path), task.hub_config, cache_dir=local_cache_dir(path, task, cache_dir)
        )
    except FileNotFoundError as err:
        raise _missing(task, path, str(err)) from err
    except ValueError as err:  # datasets: "BuilderConfig 'x' not found. Available: [...]"
        if "not found" not in str(err):
            raise
        raise _missing(task, path, str(err)) from err
    return _check_splits(task, dsd, path, needed)


def _check_splits(
    task: TaskSpec, dsd: datasets.DatasetDict, where: Path | str, needed: list[str | None]
) -> datasets.DatasetDict:
    missing = [s for s in needed if s not in dsd]
    if not missing:
        return dsd
    reason = f"splits {missing} missing (found {sorted(dsd)})"
    if task.train_split in missing and task.test_split in dsd:
        reason += f"; without {task.train_split!r} it can only be evaluated on (ood=/shift=)"
    if isinstance(where, Path):
        raise _missing(task, where, reason)
    raise MissingInputError(f"task {task.name!r}: Hub dataset {where!r}: {reason}")


def carve_validation(
    labels: Sequence[float] | np.ndarray | None, n: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split row ids ``0..n-1`` into (train, validation) deterministically from ``seed``.

    Validation gets ``round(val_fraction * n)`` rows (at least one, and at least one row is left
    for training when ``n >= 2``). With ``labels`` (classification) the rows are allotted to
    classes in proportion to their counts (stratified); without, a plain seeded permutation is
    used. Validation ids come back sorted; train ids in a seeded random order, so that any prefix
    is a uniform random subset.
    """
    rng = np.random.default_rng(seed)
    n_val = min(max(int(round(val_fraction * n)), 1), max(n - 1, 0))
    if labels is None:
        perm = rng.permutation(n)
        return perm[n_val:], np.sort(perm[:n_val])
    classes, class_of = np.unique(np.asarray(labels), return_inverse=True)
    quotas = _apportion(np.bincount(class_of, minlength=len(classes)), n_val)
    val_parts, train_parts = [], []
    for cls, quota in enumerate(quotas):
        ids = rng.permutation(np.flatnonzero(class_of == cls))
        val_parts.append(ids[:quota])
        train_parts.append(ids[quota:])
    return rng.permutation(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def _apportion(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes proportionally to ``counts`` (largest remainder method)."""
    exact = counts * (total / counts.sum())
    quotas = np.floor(exact).astype(int)
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[: total - quotas.sum()]] += 1
    return quotas


def _seeded_subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """All of ``0..n-1``, or a seeded uniform subset of ``limit`` of them, in ascending order."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _tokenize(
    batch: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    text_fields: tuple[str, ...],
    label_field: str,
    max_length: int,
) -> dict[str, list]:
    """Tokenise one batch: pairs go in as two segments; None/non-str texts become ''."""
    texts = [[t if isinstance(t, str) else "" for t in batch[f]] for f in text_fields]
    encoded = dict(tokenizer(*texts, truncation=True, max_length=max_length))
    encoded[LABELS] = batch[label_field]
    if CHOICE_MASK in batch:  # MCQA: which answer letters the row shows
        encoded[CHOICE_MASK] = batch[CHOICE_MASK]
    return encoded


class LabelDtypeCollator:
    """``DataCollatorWithPadding`` (dynamic padding per batch) that fixes the labels' dtype."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, label_dtype: torch.dtype) -> None:
        self.pad = DataCollatorWithPadding(tokenizer, padding="longest", return_tensors="pt")
        self.label_dtype = label_dtype

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = dict(self.pad(features))
        batch[LABELS] = torch.as_tensor(batch[LABELS]).to(self.label_dtype)
        return batch


def epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit seed hashed from (seed, epoch): distinct pairs give unrelated data orders."""
    words = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 32 | int(words[1])


class ResumableRandomSampler(Sampler[int]):
    """Random permutation per epoch that depends only on ``(seed, epoch)``, and can resume.

    Epoch ``e`` visits ``torch.randperm(n, generator=torch.Generator().manual_seed(h))`` with
    ``h = epoch_seed(seed, e)``, a hash of the pair (not ``seed + e``, which would give seed
    ``s + 1`` the orders of seed ``s`` shifted by one epoch).
    ``set_epoch`` (called by Lightning each epoch) picks the epoch; ``skip_next(k)`` makes the
    next iteration start at position ``k`` of the current permutation. ``state_dict`` records the
    number of indices handed out in the current epoch; with ``num_workers > 0`` the loader
    prefetches, so for exact resumption prefer ``skip_next(batches_done * batch_size)``.
    ``follow(where)`` hands the choice to ``where()``, asked as each iteration starts (a chain:
    the batches it has used; see :meth:`follow`).
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self._skip = 0
        self._position = 0
        self._where: Callable[[], tuple[int, int]] | None = None

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        """The full index order of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=generator)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a pending ``skip_next`` is dropped if the epoch changes."""
        if epoch != self.epoch:
            self._skip = 0
            self._position = 0
        self.epoch = epoch

    def skip_next(self, k: int) -> None:
        """Start the next iteration at position ``k`` of the current epoch's permutation."""
        if not 0 <= k <= self.num_samples:
            raise ValueError(f"skip must be in [0, {self.num_samples}], got {k}")
        self._skip = k

    def follow(self, where: Callable[[], tuple[int, int]] | None) -> None:
        """Start every iteration where ``where()`` says, ``(epoch, k)``: position ``k`` of that
        epoch's order, asked when the iteration starts (``None``: ``set_epoch`` and ``skip_next``
        choose again).

        A chain's data order has one owner, the number of batches the chain has used
        (:meth:`bayesian_lora.models.module.BayesianLoRAModule.data_position`): a resumed run
        continues the order exactly, whatever epoch Lightning announces with ``set_epoch``
        (after a stop where an epoch ends it restores its epoch counter one ahead, and runs an
        empty epoch). ``set_epoch`` and ``skip_next`` are ignored while it is set.
        """
        self._where = where

    def __iter__(self) -> Iterator[int]:
        if self._where is not None:
            epoch, skip = self._where()
            self.set_epoch(epoch)
            self.skip_next(skip)
        order = self.permutation().tolist()
        start, self._skip = self._skip, 0
        self._position = start
        for index in order[start:]:
            self._position += 1
            yield index

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, int]:
        """Seed, epoch and position (indices handed out so far in the current epoch)."""
        return {
            "num_samples": self.num_samples,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self._position,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a ``state_dict``: the next iteration continues where that one stopped."""
        if state["num_samples"] != self.num_samples:
            raise ValueError(
                f"sampler state is for {state['num_samples']} samples, not {self.num_samples}"
            )
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        self._position = state["position"]
        self.skip_next(state["position"])


class RankShard(DistributedSampler):
    """Rank ``rank`` of ``num_replicas`` takes positions ``rank, rank + R, ...`` of ``sampler``.

    With ``B`` per rank, global batch ``i`` (all ranks together) is then exactly batch ``i`` of
    a single process with batch ``B * R`` (Lightning's ``DistributedSamplerWrapper`` reshuffles
    the order instead). The order is padded to a multiple of ``R`` with the epoch's first indices,
    as ``DistributedSampler`` pads, so all ranks take the same number of steps. ``set_epoch`` is
    passed on; ``skip_next`` on ``sampler`` counts global positions.
    """

    def __init__(self, sampler: ResumableRandomSampler, num_replicas: int, rank: int) -> None:
        # DistributedSampler only takes len() of its dataset (typed Dataset): a range serves.
        positions = cast("Dataset[int]", range(sampler.num_samples))
        super().__init__(positions, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.sampler = sampler

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)
        order += self.sampler.permutation().tolist()[: -len(order) % self.num_replicas]
        return iter(order[self.rank :: self.num_replicas])

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.sampler.set_epoch(epoch)


class TextClassificationDataModule(L.LightningDataModule):
    """Tokenised train / validation / test loaders for one task (see module docstring).

    ``max_train_samples`` keeps a seeded random subset of the train part after validation is
    carved (validation does not change); ``max_eval_samples`` keeps a seeded subset of
    ``max_eval_samples`` rows of validation and of test (seeded by ``split_seed``, in original row
    order; a plain prefix would be single-class on label-sorted splits such as IMDB's test).
    """

    def __init__(
        self,
        task: str | TaskSpec,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        data_dir: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        obs_std: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.task = get_task(task) if isinstance(task, str) else task
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.data_dir = resolve_data_dir(data_dir)
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.shuffle_seed = shuffle_seed
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.obs_std = float(obs_std)  # regression tasks' observation noise (data.obs_std)
        label_dtype = torch.float32 if self.task.is_regression else torch.int64
        self.collator = LabelDtypeCollator(tokenizer, label_dtype)
        self.datasets: dict[str, datasets.Dataset] = {}
        self.split_indices: dict[str, list[int]] = {}
        self.train_sampler: ResumableRandomSampler | None = None
        self.num_train_examples: int | None = None

    def prepare_data(self) -> None:
        """Download / cache the raw dataset once (Lightning calls this on one process)."""
        load_task_dataset(self.task, self.data_dir, self.cache_dir, val_fraction=self.val_fraction)

    def setup(self, stage: str | None = None) -> None:
        """Load, split and tokenise all three splits (``"test"``: the test split alone); later
        calls are no-ops once what they need is there."""
        if "train" in self.datasets or (stage == "test" and self.datasets):
            return
        test_only = stage == "test"
        raw = load_task_dataset(self.task, self.data_dir, self.cache_dir, test_only)
        if test_only:  # only the test split is loaded, formatted and tokenised
            raw = datasets.DatasetDict({self.task.test_split: raw[self.task.test_split]})
        if self.task.is_mcqa:
            raw = to_classification(self.task, raw)
        self._check(raw)
        splits = self._select_splits(raw)
        for name, ds in splits.items():
            _check_labelled(self.task, name, ds)
        self.datasets = {name: self._tokenize(ds) for name, ds in splits.items()}
        if "train" in self.datasets:
            self.num_train_examples = len(self.datasets["train"])
            self.train_sampler = ResumableRandomSampler(self.num_train_examples, self.shuffle_seed)

    def _check(self, raw: datasets.DatasetDict) -> None:
        """Labels, targets and texts of the splits used (``data.checks``; MCQA once converted)."""
        task = self.task
        repo = self.data_dir / task.hub_id if self.data_dir is not None else None
        files = split_files(repo, task) if repo is not None and not task.is_mcqa else {}
        where = f"Hub dataset {task.hub_id} ({task.hub_config or 'default'})"
        if repo is not None and task.is_mcqa:
            where = f"{repo} ({task.hub_config or 'default'}, as prompts)"
        used = [n for n in (task.train_split, task.test_split) if n is not None and n in raw]
        check_values(
            task, {n: raw[n] for n in dict.fromkeys(used)}, files, where, self.val_fraction
        )

    def _select_splits(self, raw: datasets.DatasetDict) -> dict[str, datasets.Dataset]:
        """Carve validation from train, apply the sample limits, record the source row ids."""
        test = raw[self.task.test_split]
        test_ids = _seeded_subset(len(test), self.max_eval_samples, self.split_seed)
        if self.task.train_split not in raw:  # setup("test"): the test split alone
            self.split_indices = {"test": test_ids.tolist()}
            return {"test": test.select(test_ids)}
        source = raw[self.task.train_split]
        labels = None if self.task.is_regression else _column(source, self.task.label_field)
        train_ids, val_ids = carve_validation(
            labels, len(source), self.val_fraction, self.split_seed
        )
        if self.max_train_samples is not None:
            train_ids = train_ids[: self.max_train_samples]
        train_ids = np.sort(train_ids)
        val_ids = val_ids[_seeded_subset(len(val_ids), self.max_eval_samples, self.split_seed)]
        self.split_indices = {
            "train": train_ids.tolist(),
            "validation": val_ids.tolist(),
            "test": test_ids.tolist(),
        }
        return {
            "train": source.select(train_ids),
            "validation": source.select(val_ids),
            "test": test.select(test_ids),
        }

    def _tokenize(self, ds: datasets.Dataset) -> datasets.Dataset:
        kwargs = {
            "tokenizer": self.tokenizer,
            "text_fields": self.task.text_fields,
            "label_field": self.task.label_field,
            "max_length": self.max_length,
        }
        return ds.map(
            _tokenize,
            batched=True,
            fn_kwargs=kwargs,
            remove_columns=ds.column_names,
            desc=f"Tokenising {self.task.name}",
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by ``train_sampler`` (resumable; reshuffled per epoch via ``set_epoch``).

        Under data parallelism each rank gets its :class:`RankShard` of that order.
        """
        self._require_setup()
        sampler: Sampler[int] | None = self.train_sampler
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            assert self.train_sampler is not None, "setup('fit') builds the train sampler"
            sampler = RankShard(self.train_sampler, trainer.world_size, trainer.global_rank)
        return self._loader("train", self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader("validation", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._loader("test", self.eval_batch_size)

    def _loader(
        self, split: str, batch_size: int, sampler: Sampler[int] | None = None
    ) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Its own generator: creating an iterator then draws nothing from the global RNG
            # (dropout's), so a resumed chain repeats the warm start's dropout masks exactly.
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def _require_setup(self) -> None:
        if not self.datasets:
            raise RuntimeError("call setup() before asking for dataloaders")


def _column(ds: datasets.Dataset, name: str) -> np.ndarray:
    """One column as a numpy array (fast path through Arrow; honours ``select`` indices)."""
    return ds.select_columns([name]).with_format("arrow")[:][name].to_numpy()


def _check_labelled(task: TaskSpec, split: str, ds: datasets.Dataset) -> None:
    """Refuse splits with hidden labels (-1), e.g. GLUE's test split."""
    hidden = int(np.sum(_column(ds, task.label_field) == -1))
    if hidden:
        raise ValueError(
            f"task {task.name!r}: {hidden} of {len(ds)} rows of the {split!r} split have label -1 "
            "(unlabelled, as in GLUE's test split); they cannot be trained on or scored. "
            "Use a labelled split (GLUE tasks report on 'validation')."
        )
