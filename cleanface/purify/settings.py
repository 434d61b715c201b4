"""Every purification setting, its default and the reason for it.

All angles are in degrees. Images are dropped by a noise score
calibrated on the data (``drop_rule = "calibrated"``, :mod:`cleanface.purify.calibration`);
the sub-center ArcFace rule (drop above 75 degrees from the dominant sub-center) is
``drop_rule = "angle"``. Merges and splits are likewise scored on the data
(``merge_rule = split_rule = "calibrated"``, :mod:`cleanface.purify.identities`): a
probability that two identities are one person, or that one identity holds two, with
the cuts

* ``merge_cut = 0.5``: proposed when one person is likelier than two;
* ``merge_auto_cut = 0.9``: merged without a human only on strong evidence (one wrong
  merge joins two people's images; a missed one leaves a duplicate identity);
* ``split_cut = 0.5``: proposed, applied only with ``split``.

The angle rules, and the relabel rule, use values chosen for trained ArcFace-style
embeddings, where centres of different identities lie close to 90 degrees apart and
clean images of an identity mostly lie within 50-65 degrees of its dominant sub-center:

* ``relabel_angle = 50``: an image this close to another identity's dominant
  sub-center sits well inside that identity's cluster of clean images;
* ``relabel_margin = 10``: and it is clearly closer to it than to its own, so a
  borderline image between two identities is dropped rather than moved;
* ``merge_angle = 35`` (``merge_rule = "angle"``): two dominant sub-centers this close
  share their images' neighbourhoods almost entirely (the same person under two names),
  far from the near-orthogonal angles between different people;
* ``split_angle = 60`` with ``split_min_share = 0.3`` (``split_rule = "angle"``): two
  strong sub-centers (each holding at least 30% of the images) more than 60 degrees
  apart are two clusters of comparable size, the sign of two people under one name;
  the calibrated split asks the same 30% of each of its two groups;
* ``dup_cos = 0.98`` (about 11.5 degrees): near-identical crops of one photograph;
  different photographs of one person rarely come this close.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from cleanface.errors import ConfigError

DROP_RULES = ("calibrated", "angle")
IDENTITY_RULES = ("calibrated", "angle")  # merge_rule and split_rule


@dataclass(frozen=True)
class PurifySettings:
    """Switches and thresholds of the purification rules (see the module docstring).

    Attributes
    ----------
    drop_rule : str
        ``"calibrated"`` (default): score each image by its angle to the mean of the other
        images of its identity and drop those whose noise score reaches ``noise_cut``, the
        threshold found from the data by :mod:`cleanface.purify.calibration` (no fixed
        angle; it falls back to ``threshold`` on the sub-center angle when there are too few
        images to calibrate). ``"angle"``: the sub-center ArcFace rule, drop above
        ``threshold`` degrees from the dominant sub-center.
    noise_cut : float
        The calibrated rule drops an image whose noise score (estimated probability of a
        wrong label, in (0, 1)) is at least this.
    threshold : float
        Drop an image whose angle to its identity's dominant sub-center is strictly
        greater than this (degrees), with ``drop_rule="angle"``. An angle equal to it keeps
        the image.
    drop_non_dominant : bool
        Also drop images whose nearest sub-center is not the dominant one.
    relabel, relabel_angle, relabel_margin
        Move a would-be-dropped image to another identity when its angle to that
        identity's dominant sub-center is below ``relabel_angle`` and at least
        ``relabel_margin`` smaller than its angle to its own.
    merge_rule, merge_cut, merge_auto_cut, merge, merge_angle
        ``merge_rule="calibrated"`` (default): each identity's nearest other identity by
        the similarity of their kept images (:mod:`cleanface.purify.identities`) is
        proposed when the calibrated probability that both are one person reaches
        ``merge_cut`` and each is the other's nearest; with ``merge``, proposals whose
        probability reaches ``merge_auto_cut`` become one identity, the others are only
        reported. ``merge_rule="angle"``: identities whose dominant sub-centers are closer
        than ``merge_angle`` are grouped (and merged with ``merge``).
    split_rule, split_cut, split, split_angle, split_min_share
        ``split_rule="calibrated"`` (default): each identity's kept images are cut in two
        by spherical 2-means; it is reported when both groups hold ``split_min_share`` of
        them (and 3 images) and the calibrated probability that they are two people
        reaches ``split_cut``; with ``split`` the smaller group becomes the new identity
        ``<name>#2``. ``split_rule="angle"``: an identity whose two most voted sub-centers
        each hold ``split_min_share`` of its images and lie more than ``split_angle``
        apart is reported; with ``split`` the images nearest the second one move.
    dedup, dup_cos
        Pairs of images with cosine >= ``dup_cos`` are reported; with ``dedup`` every
        group of near-duplicates keeps only its first image.
    keep_outlier_groups, outlier_min_cluster_size, outlier_cap
        HDBSCAN over the dropped images finds coherent groups (``min_cluster_size``);
        with ``keep_outlier_groups`` each group becomes a new identity. When more than
        ``outlier_cap`` images are dropped, HDBSCAN is fitted on a seeded sample of
        ``outlier_cap`` of them and the others are assigned by approximate prediction.
    exact_below : int
        FAISS uses an exact flat index below this many vectors, an IVF index above.
    flip : bool
        Embed each image as the mean of itself and its mirror image (the sub-center
        ArcFace reference embeds without flipping).
    seed : int
        Seed of every sampled step (IVF training sample, HDBSCAN sample, the sample of
        the collapse check).
    sanity_check : bool
        Refuse to write a result when the model did not learn: collapsed embeddings,
        a final training accuracy near chance or one merge joining a large share of the
        identities (:mod:`cleanface.purify.sanity`). ``--no-sanity-check`` turns it off.
    """

    drop_rule: str = "calibrated"
    noise_cut: float = 0.5
    threshold: float = 75.0
    drop_non_dominant: bool = False
    relabel: bool = True
    relabel_angle: float = 50.0
    relabel_margin: float = 10.0
    merge_rule: str = "calibrated"
    merge_cut: float = 0.5
    merge_auto_cut: float = 0.9
    merge: bool = True
    merge_angle: float = 35.0
    split_rule: str = "calibrated"
    split_cut: float = 0.5
    split: bool = False
    split_angle: float = 60.0
    split_min_share: float = 0.3
    dedup: bool = False
    dup_cos: float = 0.98
    keep_outlier_groups: bool = False
    outlier_min_cluster_size: int = 5
    outlier_cap: int = 20_000
    exact_below: int = 50_000
    flip: bool = False
    seed: int = 0
    sanity_check: bool = True

    def __post_init__(self) -> None:
        for name in ("threshold", "relabel_angle", "merge_angle", "split_angle"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 180:
                raise ConfigError(f"purify setting {name} must be an angle in degrees within [0, 180], got {value!r}")
        if self.drop_rule not in DROP_RULES:
            raise ConfigError(f"purify setting drop_rule must be one of {', '.join(DROP_RULES)}, got {self.drop_rule!r}")
        for name in ("merge_rule", "split_rule"):
            if getattr(self, name) not in IDENTITY_RULES:
                raise ConfigError(f"purify setting {name} must be one of {', '.join(IDENTITY_RULES)}, got {getattr(self, name)!r}")
        for name in ("noise_cut", "merge_cut", "merge_auto_cut", "split_cut"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(f"purify setting {name} is a probability and must lie within (0, 1), got {value!r}")
        if not 0 <= self.relabel_margin <= 180:
            raise ConfigError(f"purify setting relabel_margin must lie within [0, 180] degrees, got {self.relabel_margin!r}")
        if not 0 < self.split_min_share <= 0.5:
            raise ConfigError(f"purify setting split_min_share must lie within (0, 0.5], got {self.split_min_share!r}")
        if not -1 <= self.dup_cos <= 1:
            raise ConfigError(f"purify setting dup_cos is a cosine and must lie within [-1, 1], got {self.dup_cos!r}")
        for name in ("outlier_min_cluster_size", "outlier_cap", "exact_below"):
            if int(getattr(self, name)) < 2:
                raise ConfigError(f"purify setting {name} must be at least 2, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for ``summary.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PurifySettings":
        """Settings from a dict; an unknown key is a :class:`ConfigError` naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown purify setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)
