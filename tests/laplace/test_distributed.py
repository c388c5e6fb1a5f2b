"""Sampling over two processes (torch.distributed, gloo, CPU) against one process.

One spawn of two ranks does everything a ``torchrun`` job does (θ* broadcast, EM, a
checkpointed std map, a rank that dies); the tests compare what the ranks saved with a
single-process run of the same problem.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import tiny_problem

import dip_uq as du
from dip_uq.distributed import init_from_env, shard
from dip_uq.laplace import LinearisedLaplace, SolverConfig
from dip_uq.stages import share_fit

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

# shares of 3: batch shapes that round differently from 6 at once on the CPU (4 and 8 happen
# to round alike)
N_SAMPLES, EM_STEPS, EM_SAMPLES = 6, 2, 6


def _laplace(group=None) -> LinearisedLaplace:
    parts, noise_variance = tiny_problem()
    return LinearisedLaplace(
        **parts,
        noise_variance=100 * noise_variance,  # well conditioned: CG converges in ~90 steps
        solver=SolverConfig(iterations=100, tolerance=1e-3),  # EM's σ_y² needs more; not here
        group=group,
    )


def _run(lap: LinearisedLaplace, checkpoint=None) -> dict:
    """A std map with the samples kept, then EM: what both runs compare, each with the
    default batch (on two ranks half the samples each, in one process all at once)."""
    moments = lap.moments(N_SAMPLES, checkpoint=checkpoint, keep_samples=True)
    history = lap.fit_hyperparameters(EM_STEPS, EM_SAMPLES, fit_noise=True, fit_prior=True)
    return {"history": history, "moments": moments}


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    ctx = init_from_env(timeout=60)
    assert ctx is not None and (ctx.backend, ctx.world_size, ctx.rank) == ("gloo", 2, rank)
    # θ*: rank 0 fits the DIP, rank 1 only builds it
    parts, _ = tiny_problem()
    network = du.UNet(dim=2, scales=2, channels=4, skip_channels=2, seed=0)
    rec = du.DIP(parts["operator"], network=network, iterations=3, device="cpu", progress=False)
    if ctx.is_main:
        rec.fit(parts["y"])
    share_fit(rec, ctx)
    result = _run(_laplace(ctx), checkpoint=os.path.join(out, "batches"))
    result["dip"] = rec.predict()
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    ctx.barrier()
    # a rank that dies: rank 1 leaves without a word, rank 0's next collective must say so
    if rank == 1:
        os._exit(0)
    try:
        ctx.all_reduce_sum(torch.ones(1))
        message = "no error"
    except RuntimeError as err:
        message = str(err)
    with open(os.path.join(out, "dead-rank.txt"), "w") as f:
        f.write(message)
    # leave as rank 1 did: at interpreter exit gloo's destructor of a group whose peer is gone
    # may abort (a worker thread still joinable), which would fail the spawn after the check
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two ranks' results and a single-process run of the same problem."""
    out = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # one thread, as on the ranks: another number of threads rounds the products otherwise
    return out, ranks, _run(_laplace())


def test_shard_splits_contiguously_and_evenly():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            shares = [shard(n, r, world) for r in range(world)]
            assert [i for s in shares for i in s] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="rank 2, world_size 2"):
        shard(4, 2, 2)


def test_not_under_torchrun_means_one_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert init_from_env() is None


def test_rank_1_receives_theta_star_by_broadcast(runs):
    _, ranks, _ = runs
    assert torch.equal(ranks[0]["dip"], ranks[1]["dip"])
    assert float(ranks[0]["dip"].abs().max()) > 0


def test_em_history_is_identical_on_the_ranks_and_equals_one_process(runs):
    """The same samples (bit for bit) and their statistics summed in index order: the same
    steps as one process solving all the samples at once."""
    _, ranks, single = runs
    assert ranks[0]["history"] == ranks[1]["history"] == single["history"]
    assert len(single["history"]["noise_variance"]) == EM_STEPS + 1
    assert single["history"]["noise_variance"][-1] != single["history"]["noise_variance"][0]


def test_std_map_of_two_ranks_equals_one_process(runs):
    _, ranks, single = runs
    one, two = single["moments"], [r["moments"] for r in ranks]
    assert one.count == two[0].count == two[1].count == N_SAMPLES
    assert torch.equal(two[0].m2, two[1].m2) and torch.equal(two[0].mean, two[1].mean)
    # the same samples: each rank keeps its own, the single run's split in rank order
    assert (two[0].indices, two[1].indices) == (range(0, 3), range(3, 6))
    assert torch.equal(torch.cat([two[0].samples, two[1].samples]), one.samples)
    # their float64 moments merged in other groups: equal to round-off
    torch.testing.assert_close(two[0].std, one.std, rtol=1e-12, atol=0)


def test_resume_from_the_ranks_checkpoints_redoes_nothing(runs):
    out, ranks, _ = runs
    lap = _laplace()
    solved = []
    original = lap.sample_weights
    lap.sample_weights = lambda *a, **k: solved.append(k["start"]) or original(*a, **k)
    (out / "batches" / "moments-0000003-0000006.pt").unlink()  # rank 1 died before saving it
    # the ranks' batches, of 3 (a checkpoint is kept per batch)
    resumed = lap.moments(N_SAMPLES, batch=3, checkpoint=out / "batches")
    assert solved == [3]
    torch.testing.assert_close(resumed.m2, ranks[0]["moments"].m2, rtol=1e-12, atol=0)


def test_a_dead_rank_stops_the_others_with_a_clear_message(runs):
    out, _, _ = runs
    message = (out / "dead-rank.txt").read_text()
    assert "rank 0 of 2: all-reduce failed: another rank stopped" in message
    assert "rerun the same command to resume" in message
