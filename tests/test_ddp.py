"""Data-parallel sampling (``trainer=ddp``), on CPU with two gloo processes.

One chain over two ranks with per-rank batch B/2 must be the single-process chain with batch B:
DDP averages the two half-batch gradients, both ranks draw the same Langevin noise from
identically seeded generators (so the replicas never drift apart), and the noise scale uses
``num_data`` = the full training set. Only rank zero writes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from bayesian_lora.data.datamodule import RankShard, ResumableRandomSampler
from bayesian_lora.models.module import BayesianLoRAModule
from bayesian_lora.runs import load_samples, read_manifest
from bayesian_lora.train import train
from tests.helpers import compose_train

GLOBAL_BATCH = 8
NUM_TRAIN = 32  # a multiple of GLOBAL_BATCH: every global batch is full on both sides
# No AdamW warm-up: dropout is on during warm-up and its masks depend on how the batch is split.
# burn-in 2, keep steps 3, 5, 7: 8 steps = two epochs of 4 global batches.
CHAIN = [
    "model=tiny",
    "data=mrpc",
    "sampler=sgld",
    "sampler.warmup.steps=0",
    "sampler.burn_in=2",
    "sampler.thin=2",
    "sampler.num_samples=3",
    f"data.max_train_samples={NUM_TRAIN}",
    "data.max_eval_samples=16",
    "data.eval_batch_size=16",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "seed=3",
]

# Runs train() through hydra.main exactly as ``python -m bayesian_lora.train`` does, plus two
# observers: every rank saves the samples its SampleCollector holds (all ranks collect, only
# rank zero writes) and every call of write_samples is logged with the rank that made it.
# Lightning re-runs this script (with hydra.run.dir=<the same run folder>) for rank 1.
PROBE = textwrap.dedent(
    """
    import os
    from pathlib import Path

    import hydra
    import lightning as L
    from safetensors.torch import save_file

    import bayesian_lora.callbacks.sample_collector as sample_collector
    import bayesian_lora.train as train_module
    from bayesian_lora.config import CONFIG_DIR
    from bayesian_lora.runs import RunFolder

    OUT = Path(os.environ["DDP_PROBE_OUT"])
    write_samples = RunFolder.write_samples


    def logged_write_samples(self, samples, manifest):
        with open(OUT / "writes.txt", "a") as f:
            f.write(f"{os.environ.get('LOCAL_RANK', '0')} {self.path.resolve()}\\n")
        return write_samples(self, samples, manifest)


    RunFolder.write_samples = logged_write_samples


    class SaveRankSamples(L.Callback):
        def on_train_end(self, trainer, pl_module):
            collector = next(
                c for c in trainer.callbacks if isinstance(c, sample_collector.SampleCollector)
            )
            tensors = {n: t[: collector.num_kept].clone() for n, t in collector.buffer.items()}
            for name, p in pl_module.sampled_parameters().items():
                tensors[f"final/{name}"] = p.detach().clone()
            save_file(tensors, OUT / f"rank{trainer.global_rank}.safetensors")


    build_trainer = train_module.build_trainer


    def build_trainer_with_probe(*args, **kwargs):
        trainer, collector = build_trainer(*args, **kwargs)
        trainer.callbacks.append(SaveRankSamples())
        return trainer, collector


    train_module.build_trainer = build_trainer_with_probe


    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
    def main(cfg):
        train_module.train(cfg)


    if __name__ == "__main__":
        main()
    """
)


def run_ddp(args: list[str], cwd: Path, out: Path, timeout: float = 600) -> str:
    """Start rank 0 (which starts rank 1); kill the whole process group on a hang."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DDP_PROBE_OUT": str(out)}
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the DDP run hung (killed after {timeout} s):\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    return output


def test_rank_shards_together_are_the_single_process_batches() -> None:
    n, per_rank, world = 22, 3, 2  # 22 = 3 full global batches of 6, then 4 left over
    single = ResumableRandomSampler(n, seed=5)
    single.set_epoch(1)
    order = list(single)
    shards = [RankShard(ResumableRandomSampler(n, seed=5), world, r) for r in range(world)]
    for shard in shards:
        shard.set_epoch(1)
    parts = [list(s) for s in shards]
    assert [len(p) for p in parts] == [len(s) for s in shards] == [11, 11]
    for i in range(0, 4):  # global batch i = rank 0's batch i + rank 1's batch i
        got = [x for p in parts for x in p[i * per_rank : (i + 1) * per_rank]]
        assert sorted(got) == sorted(order[i * per_rank * world : (i + 1) * per_rank * world])
    # Resuming mid-epoch: skip_next counts global positions, the rest of the epoch is unchanged.
    for shard, part in zip(shards, parts, strict=True):
        shard.sampler.skip_next(2 * per_rank * world)
        assert list(shard) == part[2 * per_rank :]
    # Odd leftovers are padded with the epoch's first indices, as DistributedSampler does.
    shards = [RankShard(ResumableRandomSampler(5, seed=0), 2, r) for r in range(2)]
    first = list(ResumableRandomSampler(5, seed=0))
    assert sorted(list(shards[0]) + list(shards[1])) == sorted(first + first[:1])


# 4 global batches per epoch. Step 6: epoch 1, batch 2; step 3 + 1 retry and step 10 + 2: where
# an epoch starts (Lightning may announce another epoch there: restored at an epoch's end, its
# epoch counter runs one ahead).
@pytest.mark.parametrize(("step", "retries"), [(6, 0), (3, 1), (10, 2)])
def test_resume_skips_the_global_batches_already_used(step: int, retries: int) -> None:
    """A checkpoint at chain step t (after r divergence retries, each of which used a batch)
    restarts every rank's shard right after global batch t + r - 1, whatever epoch Lightning
    announces."""
    n, per_rank, world = 32, 4, 2
    epoch, batch = divmod(step + retries, 4)
    uninterrupted = []
    for r in range(world):
        shard = RankShard(ResumableRandomSampler(n, seed=1), world, r)
        shard.set_epoch(epoch)
        uninterrupted.append(list(shard)[batch * per_rank :])
    for r in range(world):  # each rank has its own sampler, module and counters
        sampler = ResumableRandomSampler(n, seed=1)
        datamodule = SimpleNamespace(train_sampler=sampler, batch_size=per_rank)
        trainer = SimpleNamespace(datamodule=datamodule, world_size=world)
        module = SimpleNamespace(_trainer=trainer, trainer=trainer, chain_step=step)
        module.retries_used = retries
        module._train_sampler = lambda m=module: BayesianLoRAModule._train_sampler(m)
        sampler.follow(lambda m=module: BayesianLoRAModule.data_position(m))
        shard = RankShard(sampler, world, r)
        shard.set_epoch(epoch + 1)  # ignored: the chain's batch count owns the order
        assert list(shard) == uninterrupted[r]


@pytest.mark.slow
def test_ddp_chain_equals_the_single_process_chain(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    run_dir, probe_out = tmp_path / "ddp_run", tmp_path / "probe"
    probe_out.mkdir()
    script = tmp_path / "ddp_probe.py"
    script.write_text(PROBE)
    output = run_ddp(
        [
            str(script),
            *CHAIN,
            "trainer=ddp_cpu",
            f"data.batch_size={GLOBAL_BATCH // 2}",
            f"paths.data_dir={synthetic_data_dir}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        out=probe_out,
    )
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output

    single_dir = tmp_path / "single_run"
    train(
        compose_train(
            [
                *CHAIN,
                "trainer=cpu",
                f"data.batch_size={GLOBAL_BATCH}",
                f"paths.data_dir={synthetic_data_dir}",
                f"paths.output_dir={single_dir}",
                "evaluate_on_fit_end=false",
            ]
        )
    )

    # The replicas never drift apart: both ranks held the same samples, bit for bit.
    rank0 = load_file(probe_out / "rank0.safetensors")
    rank1 = load_file(probe_out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name

    # Rank zero wrote them, and they are the single-process chain with the global batch.
    samples, manifest = load_samples(run_dir)
    reference, ref_manifest = load_samples(single_dir)
    assert manifest["status"] == "complete"
    assert manifest["steps"] == ref_manifest["steps"] == [3, 5, 7]
    assert manifest["num_data"] == ref_manifest["num_data"] == NUM_TRAIN
    for name, tensor in reference.items():
        assert torch.equal(samples[name], rank0[name]), name
        torch.testing.assert_close(samples[name], tensor, atol=1e-5, rtol=0, msg=name)
    head = next(n for n in samples if "classifier" in n and n.endswith("weight"))
    assert (samples[head][0] - samples[head][-1]).abs().max() > 1e-3, "the chain must move"

    # Only rank zero wrote, into the one run folder; rank 1 created no folder of its own.
    writers = (probe_out / "writes.txt").read_text().split("\n")[:-1]
    assert writers and all(w == f"0 {run_dir.resolve()}" for w in writers), writers
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ddp_probe.py",
        "ddp_run",
        "probe",
        "single_run",
    ]
    assert (run_dir / ".hydra" / "config.yaml").is_file()  # rank 1 runs with output_subdir=null
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same folder
    # Test evaluation ran on rank zero only, after rank 1 had left: no deadlock.
    assert read_manifest(run_dir)["num_samples"] == 3
    assert (run_dir / "metrics.json").is_file()
