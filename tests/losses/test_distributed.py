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


def _worker(rank: int, store: str, out: str) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
        g = torch.Generator().manual_seed(0)  # the same data on both ranks
        x = torch.randn(WORLD * B_LOCAL, D, generator=g)
        y = torch.randint(0, C, (WORLD * B_LOCAL,), generator=g)
        y[:3] = torch.tensor([0, 4, 8])  # both shards hold positives
        mine = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)

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
        dist.destroy_process_group()
        Path(out, f"ok{rank}").write_text("ok")
    except Exception:
        Path(out, f"error{rank}").write_text(traceback.format_exc())
        raise


def test_sharded_loss_and_gradients_equal_the_single_process_softmax(tmp_path: Path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    env = {"OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
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


def test_needs_an_initialised_group() -> None:
    from cleanface.errors import ConfigError

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(ConfigError, match="initialised torch.distributed process group"):
        DistributedPartialFC("arcface", D, C)
