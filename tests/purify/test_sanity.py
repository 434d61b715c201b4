"""The checks that refuse a model that did not learn."""

from dataclasses import replace

import numpy as np
import pytest

from cleanface.errors import CleanfaceError, DataError, SanityError
from cleanface.purify.decisions import decide
from cleanface.purify.sanity import chance_accuracy, check_result, collapsed_embeddings, runaway_merge
from cleanface.purify.settings import PurifySettings


def spread(n: int = 500, d: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def collapsed(n: int = 500, d: int = 32, seed: int = 0, noise: float = 0.2) -> np.ndarray:
    """Rows around one direction: mean norm about 1 / sqrt(1 + noise^2 d)."""
    rng = np.random.default_rng(seed)
    return (np.ones(d) / np.sqrt(d) + noise / np.sqrt(d) * rng.standard_normal((n, d))).astype(np.float32)


def test_collapse_is_seen_in_nearly_parallel_embeddings_only():
    assert collapsed_embeddings(spread()) is None
    message = collapsed_embeddings(collapsed())
    assert "collapsed" in message and "500 sampled" in message and "--no-sanity-check" in message
    norm = float(message.split("has norm ")[1].split(" ")[0])
    assert 0.97 < norm <= 1.0
    assert collapsed_embeddings(collapsed(noise=0.6)) is None  # mean norm about 0.86: below 0.9
    assert collapsed_embeddings(collapsed(noise=0.6), max_norm=0.8) is not None


def test_collapse_ignores_broken_rows_and_samples_with_a_seed():
    x = collapsed(n=50)
    x[:45] = np.nan  # five finite rows left, still parallel
    assert "5 sampled" in collapsed_embeddings(x)
    x[:49] = 0.0
    assert collapsed_embeddings(x) is None  # one usable row: nothing to say
    big = np.concatenate([spread(3000), collapsed(3000)])
    a = collapsed_embeddings(big, sample=200, max_norm=0.0, seed=1)
    assert a == collapsed_embeddings(big, sample=200, max_norm=0.0, seed=1) and "200 sampled" in a
    assert a != collapsed_embeddings(big, sample=200, max_norm=0.0, seed=2)


def test_chance_accuracy_fires_when_the_accuracy_fell_back_to_chance():
    # the reported collapse: 20 identities, 21% early, 0% at the end
    message = chance_accuracy([0.05, 0.21, 0.08, 0.0], 20)
    assert "rose to 0.2100 and fell to 0.0000" in message and "20 identities" in message and "2 / 20 = 0.1000" in message
    assert "--no-sanity-check" in message
    assert chance_accuracy([0.3, 0.1], 20) is not None  # at most 2 / C after 2.5 times more
    assert chance_accuracy([0.24, 0.1], 20) is None  # not far enough above where it ended
    assert chance_accuracy([0.3, 0.11], 20) is None  # above 2 / C
    # a model that learns slowly under the margin stays near 0 for epochs: no evidence
    assert chance_accuracy([0.0, 0.001, 0.002, 0.004], 100) is None
    assert chance_accuracy([0.10, 0.1125], 8) is None  # a tiny run at chance throughout
    assert chance_accuracy(None, 100) is None and chance_accuracy([], 100) is None and chance_accuracy([float("nan")], 100) is None


def merge(size: int) -> dict:
    return {"identities": [f"id{i}" for i in range(size)], "into": "id0", "min_angle": 1.0, "max_angle": 2.0, "merged": True}


def test_runaway_merge_needs_more_than_two_identities_and_a_quarter_of_them():
    assert runaway_merge([], 10) is None
    assert runaway_merge([merge(2)], 4) is None  # a pair is a pair, even of 4 identities
    assert runaway_merge([merge(2), merge(3)], 12) is None  # 25% exactly is not more
    message = runaway_merge([merge(2), merge(4)], 12)
    assert "joins 4 of the 12 identities (33%" in message and "'id0'" in message and "--no-sanity-check" in message


def tidy_decisions(c: int = 12, per: int = 8, d: int = 64):
    """A healthy-looking result: c identities around random sub-centers, no merges."""
    rng = np.random.default_rng(5)
    centers = rng.standard_normal((c, 3, d)).astype(np.float32)
    labels = np.repeat(np.arange(c), per)
    emb = (centers[labels, 0] / np.linalg.norm(centers[labels, 0], axis=1, keepdims=True) * 3 + rng.standard_normal((c * per, d)) / 8)
    return emb.astype(np.float32), decide(emb, labels, centers)


def test_check_result_raises_the_first_failing_check_unless_switched_off():
    emb, d = tidy_decisions()
    settings = PurifySettings()
    assert settings.sanity_check is True and settings.to_dict()["sanity_check"] is True and d.merges == []
    assert PurifySettings.from_dict({"sanity_check": False}).sanity_check is False
    check_result(emb, d, settings, [0.5, 0.9], 12)
    check_result(emb, d, settings, None, 12)
    with pytest.raises(SanityError, match="training accuracy rose to 0.5000 and fell to 0.1000 in the last epoch, near chance for 12 identities"):
        check_result(emb, d, settings, [0.5, 0.1], 12)
    with pytest.raises(DataError, match="look collapsed"):
        check_result(collapsed(), d, settings, [0.5, 0.9], 12)
    with pytest.raises(SanityError, match="rose to 0.5000"):  # the first check wins: the training, looked at before the embeddings
        check_result(collapsed(), d, settings, [0.5, 0.1], 12)
    d.merges = [merge(4)]
    with pytest.raises(CleanfaceError, match="one merge group joins 4 of the 12"):
        check_result(emb, d, settings, [0.5, 0.9], 12)
    check_result(collapsed(), d, replace(settings, sanity_check=False), [0.5, 0.0], 12)
