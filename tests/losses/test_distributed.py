"""The sharded head on 2 CPU processes (gloo) against one process holding every class."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cleanface.losses import create_head
from cleanface.losses.distributed import DistributedPartialFC, all_gather_with_grad

WORLD, D, C, B_LOCAL = 2, 8, 9, 5  # 9 classes: shards of 4 and 5


def _reference(name: str, kwargs: dict, weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor | None):
    """Loss and gradients of one process with the whole batch, over all classes or only ``classes``."""
    head = create_head(name, D, C, **kwargs)
    with torch.no_grad():
        head.weight.copy_(weight)
    x = x.clone().requires_grad_(True)
    cos = head.cosine(x, classes)
    labels = y if classes is None else torch.searchsorted(classes, y)
    loss = torch.nn.functional.cross_entropy(head.logits_from_cosine(cos, labels), labels)
    loss.backward()
    return loss.detach(), x.grad, head.weight.grad


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two vectors without ties."""
    ra, rb = (torch.argsort(torch.argsort(v)).double() for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


ELASTIC_HEADS = ("elastic-arc+", "elastic-cos+", "elastic-arc", "elastic-cos")
ELASTIC_SEED = 20  # rank r's global generator is seeded ELASTIC_SEED + r, as the trainer seeds each rank differently


def _check_elastic_heads(rank: int, x: torch.Tensor, y: torch.Tensor, mine: slice) -> None:
    """Two training steps of each ElasticFace head, sharded, against one process seeded like rank 0.

    Every sample must get the margin one process draws for it: the same loss and
    gradients, and for the "+" heads margins in exactly the reverse order of the target
    cosines (rank correlation -1), although the ranks' own generators differ.
    """
    starts = torch.tensor([r * C // WORLD for r in range(1, WORLD)])
    owner = (y.unsqueeze(1) >= starts).sum(1)  # the rank holding each sample's class
    for name in ELASTIC_HEADS:
        torch.manual_seed(10 + rank)
        full = create_head(name, D, C).weight.detach()
        dist.broadcast(full, src=0)
        model = DistributedPartialFC(name, D, C).train()
        reference = create_head(name, D, C).train()
        with torch.no_grad():
            model.head.weight.copy_(full[model.class_start : model.class_end])
            reference.weight.copy_(full)
        target_cos = reference.cosine(x).gather(1, y.unsqueeze(1)).squeeze(1).detach()
        generator_states = {}
        for who, seed in (("reference", ELASTIC_SEED), ("ranks", ELASTIC_SEED + rank)):
            torch.manual_seed(seed)
            generator_states[who] = torch.get_rng_state()
        for step in range(2):
            torch.set_rng_state(generator_states["reference"])
            xr = x.clone().requires_grad_(True)
            ref_loss = torch.nn.functional.cross_entropy(reference(xr, y), y)
            ref_loss.backward()
            generator_states["reference"] = torch.get_rng_state()
            torch.set_rng_state(generator_states["ranks"])
            model.head.weight.grad = None
            xl = x[mine].clone().requires_grad_(True)
            loss = model(xl, y[mine])
            loss.backward()
            generator_states["ranks"] = torch.get_rng_state()
            every = [torch.empty_like(model.head.last_margins) for _ in range(WORLD)]
            dist.all_gather(every, model.head.last_margins)
            used = torch.stack(every).gather(0, owner.unsqueeze(0)).squeeze(0)  # the margin each sample's owner applied
            where = f"{name}, step {step}"
            if name.endswith("+"):
                rho = _spearman(used, target_cos)
                assert rho == pytest.approx(-1.0, abs=1e-12), f"{where}: rank correlation of margin and target cosine {rho:+.3f}, not -1"
            torch.testing.assert_close(used, reference.last_margins, rtol=0, atol=0, msg=lambda m: f"{where}: {m}")
            torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-5, atol=1e-5, msg=lambda m: f"{where}: {m}")
            torch.testing.assert_close(xl.grad, xr.grad[mine], rtol=1e-4, atol=1e-6, msg=lambda m: f"{where}: {m}")
            ref_gw = reference.weight.grad[model.class_start : model.class_end]
            torch.testing.assert_close(model.head.weight.grad, ref_gw, rtol=1e-4, atol=1e-6, msg=lambda m: f"{where}: {m}")
            reference.weight.grad = None


def _worker(rank: int, store: str, out: str, part: str) -> None:
    """One rank: ``part`` "fixed" checks the all-gather and the fixed-margin heads, "elastic" the ElasticFace heads."""
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
        g = torch.Generator().manual_seed(0)  # the same data on both ranks
        x = torch.randn(WORLD * B_LOCAL, D, generator=g)
        y = torch.randint(0, C, (WORLD * B_LOCAL,), generator=g)
        y[:3] = torch.tensor([0, 4, 8])  # both shards hold positives
        mine = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        if part == "elastic":
            _check_elastic_heads(rank, x, y, mine)
        else:
            _check_fixed_heads(rank, x, y, mine)
        dist.destroy_process_group()
        Path(out, f"ok{rank}").write_text("ok")
    except Exception:
        Path(out, f"error{rank}").write_text(traceback.format_exc())
        raise


def _check_fixed_heads(rank: int, x: torch.Tensor, y: torch.Tensor, mine: slice) -> None:
    """The autograd all-gather, then one step of each fixed-margin head (one with Partial FC sampling)."""
    # autograd all-gather: gradient of sum(w * gathered) is w's slice, summed over ranks
    z = x[mine].clone().requires_grad_(True)
    gathered = all_gather_with_grad(z)
    assert torch.equal(gathered, x)
    (gathered * (rank + 1)).sum().backward()
    assert torch.equal(z.grad, torch.full_like(z, 3.0))

    cases = [("arcface", {}, 1.0), ("subcenter-arcface", {"k": 2, "scale": 16.0}, 1.0), ("cosface", {}, 0.5)]
    for name, kwargs, rate in cases:
        torch.manual_seed(10 + rank)
        full = create_head(name, D, C, **kwargs).weight.detach()
        dist.broadcast(full, src=0)
        model = DistributedPartialFC(name, D, C, sample_rate=rate, **kwargs).train()
        k = model.head.k
        with torch.no_grad():
            model.head.weight.copy_(full[model.class_start * k : model.class_end * k])
        xl = x[mine].clone().requires_grad_(True)
        loss = model(xl, y[mine])
        loss.backward()
        classes = None
        if rate < 1.0:
            kept = [torch.zeros(C, dtype=torch.long) for _ in range(WORLD)]
            local = torch.zeros(C, dtype=torch.long)
            local[model.last_classes] = 1
            dist.all_gather(kept, local)
            classes = torch.nonzero(torch.stack(kept).sum(0)).squeeze(1)
            n_local = model.class_end - model.class_start
            assert len(model.last_classes) == max(len(set(y.tolist()) & set(range(model.class_start, model.class_end))), -(-n_local // 2))
            assert set(y.tolist()) <= set(classes.tolist())
        ref_loss, ref_gx, ref_gw = _reference(name, kwargs, full, x, y, classes)
        torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xl.grad, ref_gx[mine], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(model.head.weight.grad, ref_gw[model.class_start * k : model.class_end * k], rtol=1e-4, atol=1e-6)


def _spawn(tmp_path: Path, part: str) -> None:
    """Run ``part`` of :func:`_worker` on WORLD processes; fail with the workers' tracebacks."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    env = {"OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path), part), nprocs=WORLD, join=True)
    except Exception as exc:
        errors = "\n".join(p.read_text() for p in tmp_path.glob("error*"))
        pytest.fail(f"worker failed: {exc}\n{errors}")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert sorted(p.name for p in tmp_path.glob("ok*")) == ["ok0", "ok1"]


def test_sharded_loss_and_gradients_equal_the_single_process_softmax(tmp_path: Path) -> None:
    _spawn(tmp_path, "fixed")


def test_sharded_elastic_heads_use_the_single_process_margins(tmp_path: Path) -> None:
    """ElasticFace under 2 ranks with different generators: one draw for all, "+" ordering exact, loss as one process."""
    _spawn(tmp_path, "elastic")


def test_needs_an_initialised_group() -> None:
    from cleanface.errors import ConfigError

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(ConfigError, match="initialised torch.distributed process group"):
        DistributedPartialFC("arcface", D, C)
