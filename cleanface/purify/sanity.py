"""Signs that the model behind a purification did not learn, checked before anything is written.

A model that did not learn still gives sub-centers and embeddings, and :func:`decide`
still returns decisions, but they are noise: every image dropped, or every identity
merged into one. Each check below is a pure function that returns None when all is
well, or one line naming what it saw (numbers included) and the option that overrides
it. The runner calls :func:`check_training` before embedding, :func:`check_embeddings`
before deciding and :func:`check_decisions` before writing, so a model that did not learn is
refused as early as the evidence allows; each raises :class:`cleanface.errors.SanityError`
(a :class:`~cleanface.errors.DataError`). :func:`check_result` runs all three.

* **collapsed embeddings**: the mean of (a seeded sample of) the finite unit embeddings
  has norm above ``COLLAPSE_NORM``: the vectors are nearly parallel, whereas a trained
  model spreads them (0.37-0.44 in the demo's and the tests' runs);
* **accuracy back at chance**: the last epoch's training accuracy is at most
  ``CHANCE_FACTOR / C`` for C identities after an earlier epoch was ``RISE_FACTOR`` times
  higher: the training collapsed (the reported case: 21% at epoch 1.5, 0% from epoch 11, for
  20 identities). A low accuracy alone is no evidence: a margin head's training accuracy
  is taken on the margin-penalised logits and stays near 0 for the first epochs of runs
  that learn (the demo's sub-center run is at or below 0.004 for 7 epochs); a model that
  never learned shows in the two other checks. An unknown history is not checked;
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


def check_training(settings: PurifySettings, train_accuracy: Sequence[float] | None, num_classes: int) -> None:
    """Before any work: :func:`chance_accuracy` over the run's accuracy per epoch (nothing when switched off)."""
    if settings.sanity_check:
        _raise(chance_accuracy(train_accuracy, num_classes))


def check_embeddings(settings: PurifySettings, embeddings: np.ndarray) -> None:
    """Before deciding: :func:`collapsed_embeddings` on a sample seeded with ``settings.seed``."""
    if settings.sanity_check:
        _raise(collapsed_embeddings(embeddings, seed=settings.seed))


def check_decisions(settings: PurifySettings, decisions: "Decisions", num_classes: int) -> None:
    """Before writing: :func:`runaway_merge` over ``decisions.merges``."""
    if settings.sanity_check:
        _raise(runaway_merge(decisions.merges, num_classes))


def check_result(embeddings: np.ndarray, decisions: "Decisions", settings: PurifySettings, train_accuracy: Sequence[float] | None,
                 num_classes: int) -> None:
    """All three checks at once, in the order purify runs them (training, embeddings, decisions).

    Raises :class:`~cleanface.errors.SanityError` with the message of the first failing
    check; nothing when all pass or when ``settings.sanity_check`` is False.
    """
    check_training(settings, train_accuracy, num_classes)
    check_embeddings(settings, embeddings)
    check_decisions(settings, decisions, num_classes)


def _raise(message: str | None) -> None:
    if message:
        raise SanityError(f"sanity check failed: {message}")
