"""Signs that the model behind a purification did not learn, checked before anything is written.

A model that did not learn still gives sub-centers and embeddings, and :func:`decide`
still returns decisions, but they are noise: every image dropped, or every identity
merged into one. Each check below is a pure function that returns None when all is
well, or one line naming what it saw (numbers included) and the option that overrides
it; :func:`check_result` runs them all and raises :class:`cleanface.errors.SanityError`
(a :class:`~cleanface.errors.DataError`) with the first message.

* **collapsed embeddings**: the mean of (a seeded sample of) the finite unit embeddings
  has norm above ``COLLAPSE_NORM``: the vectors are nearly parallel, whereas a trained
  model spreads its identities over the sphere (mean norm near 0);
* **chance accuracy**: the final training accuracy is at most ``CHANCE_FACTOR / C`` for C
  identities (checked only for ``C >= MIN_CLASSES_FOR_CHANCE``: with few identities twice
  chance is no evidence; an unknown accuracy is not checked). The training accuracy of a
  margin head is taken on the margin-penalised logits, so it stays low for long: the
  demo's sub-center run ends at 0.033 for 100 identities, above the 0.02 limit;
* **runaway merge**: the largest merge group holds more than 2 identities and more than
  ``MERGE_SHARE`` of all of them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cleanface.errors import SanityError
from cleanface.purify.analysis import unit_rows
from cleanface.purify.settings import PurifySettings

if TYPE_CHECKING:  # only for annotations: decisions imports much more than this module needs
    from cleanface.purify.decisions import Decisions

COLLAPSE_SAMPLE = 10_000  # embeddings sampled for the collapse check
COLLAPSE_NORM = 0.9  # mean-vector norm above which the embeddings count as collapsed
CHANCE_FACTOR = 2.0  # a last-epoch accuracy at most this many times chance (1 / C) counts as chance ...
RISE_FACTOR = 2.5  # ... after an earlier epoch reached this many times max(last, chance): the training collapsed
MERGE_SHARE = 0.25  # a merge group holding more than this share of all identities (and more than 2) is a runaway
OVERRIDE = "--no-sanity-check (setting sanity_check = false)"


def collapsed_embeddings(embeddings: np.ndarray, *, sample: int = COLLAPSE_SAMPLE, max_norm: float = COLLAPSE_NORM,
                         seed: int = 0) -> str | None:
    """None, or a message when the mean of the finite unit embeddings has norm above ``max_norm``.

    ``embeddings`` (N, D), any float dtype (a memmap is fine: only the sampled rows are
    read). At most ``sample`` rows are drawn (seeded, without replacement); rows holding
    NaN or inf and zero rows are left out; fewer than 2 rows left: None.
    """
    n = len(embeddings)
    rows = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    x = np.asarray(embeddings[rows], dtype=np.float32)
    x = unit_rows(x[np.isfinite(x).all(axis=1)], dtype=np.float32)
    x = x[np.any(x != 0, axis=1)]
    if len(x) < 2:
        return None
    norm = float(np.linalg.norm(x.astype(np.float64).mean(axis=0)))
    if norm <= max_norm:
        return None
    return (f"the embeddings look collapsed: the mean of {len(x)} sampled unit embeddings has norm {norm:.3f} "
            f"(above {max_norm}; a trained model spreads them, mean near 0), so the model did not learn; "
            f"retrain it, or pass {OVERRIDE} to purify anyway")


def chance_accuracy(accuracy: Sequence[float] | None, num_classes: int, *, factor: float = CHANCE_FACTOR,
                    rise: float = RISE_FACTOR) -> str | None:
    """None, or a message when the training accuracy rose and then fell back to chance: the training collapsed.

    ``accuracy`` is the mean training accuracy of each epoch in order
    (:func:`cleanface.inference.run.accuracy_per_epoch`); None or empty is not checked.
    It fires when the last epoch's accuracy is at most ``factor / num_classes`` while an
    earlier epoch reached ``rise`` times ``max(last, 1 / num_classes)``. A low accuracy
    alone is no evidence: the accuracy logged during training has the margin applied, and
    a model that learns can stay near 0 for its first epochs (the demo's run does for 7).
    """
    values = [float(a) for a in (accuracy or []) if a is not None and math.isfinite(a)]
    if not values or num_classes < 1:
        return None
    last, peak = values[-1], max(values)
    limit = factor / num_classes
    if last > limit or peak < rise * max(last, 1.0 / num_classes):
        return None
    return (f"the training accuracy rose to {peak:.4f} and fell to {last:.4f} in the last epoch, near chance for {num_classes} "
            f"identities (at most {factor:g} / {num_classes} = {limit:.4f}), so the training collapsed; "
            f"train again with a lower learning rate or scale, or pass {OVERRIDE} to purify anyway")


def runaway_merge(merges: list[dict], num_classes: int, *, share: float = MERGE_SHARE) -> str | None:
    """None, or a message when the largest merge group joins more than 2 identities and more than ``share`` of all.

    ``merges`` as in :attr:`cleanface.purify.decisions.Decisions.merges` (each with
    ``identities`` and ``into``; reported groups count whether merged or not).
    """
    if not merges or num_classes <= 0:
        return None
    largest = max(merges, key=lambda m: len(m["identities"]))
    size = len(largest["identities"])
    if size <= 2 or size <= share * num_classes:
        return None
    return (f"one merge group joins {size} of the {num_classes} identities ({size / num_classes:.0%}, more than {share:.0%}) "
            f"into {largest['into']!r}: their dominant sub-centers nearly coincide, so the model did not learn; "
            f"retrain it, or pass {OVERRIDE} to purify anyway")


def check_result(embeddings: np.ndarray, decisions: "Decisions", settings: PurifySettings, train_accuracy: Sequence[float] | None,
                 num_classes: int) -> None:
    """Raise :class:`~cleanface.errors.SanityError` with the message of the first failing check; nothing when all pass.

    The checks, in order: :func:`collapsed_embeddings` (sample seeded with
    ``settings.seed``), :func:`chance_accuracy` (``train_accuracy``: the accuracy of each
    epoch), :func:`runaway_merge` (over ``decisions.merges``). Does nothing when ``settings.sanity_check`` is False.
    """
    if not settings.sanity_check:
        return
    for message in (
        collapsed_embeddings(embeddings, seed=settings.seed),
        chance_accuracy(train_accuracy, num_classes),
        runaway_merge(decisions.merges, num_classes),
    ):
        if message:
            raise SanityError(f"sanity check failed: {message}")
