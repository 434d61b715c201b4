import numpy as np
import torch

from cleanface.data.images import flip_batch, to_tensor_batch
from cleanface.training.batches import epoch_plan, mirrored, prefetch, rank_batches


def test_cached_batches_equal_the_reference_conversion_bit_for_bit():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (9, 7, 5, 3), dtype=np.uint8)
    flips = rng.random(9) < 0.5
    expected = to_tensor_batch(raw.copy())
    flip_batch(expected, torch.from_numpy(flips))
    got = to_tensor_batch(mirrored(raw.copy(), flips))
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, expected)
    assert float(got.min()) >= -1.0 and float(got.max()) <= 1.0


def test_rank_slices_cover_each_global_batch_once():
    samples = np.arange(100, 203)
    whole = list(rank_batches(samples, 3, 1, global_batch=8, rank=0, world=1))
    parts = [list(rank_batches(samples, 3, 1, global_batch=8, rank=r, world=2)) for r in range(2)]
    assert len(whole) == len(samples) // 8
    for b, (ids, flips) in enumerate(whole):
        joined = np.concatenate([parts[0][b][0], parts[1][b][0]])
        assert np.array_equal(joined, ids)
    resumed = list(rank_batches(samples, 3, 1, global_batch=8, rank=0, world=1, start=5))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(resumed, whole[5:]))
    assert not np.array_equal(epoch_plan(samples, 3, 1)[0], epoch_plan(samples, 3, 2)[0])


def test_prefetch_keeps_order_and_raises_producer_errors():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("bad batch")

    got = []
    try:
        for item in prefetch(broken()):
            got.append(item)
    except ValueError as exc:
        assert "bad batch" in str(exc)
    else:
        raise AssertionError("the producer's error was swallowed")
    assert got == [1]
