import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from cleanface.errors import ConfigError
from cleanface.purify._faiss import build_index, choose_factory, search
from cleanface.purify.decisions import ACTIONS, IN_OUTPUT, REASONS, decide, drop_by_angle
from cleanface.purify.settings import PurifySettings
from tests.purify.conftest import D, axis, basis_centers, toward

FREE = 15  # axes from here on belong to no sub-center of the 5 basis identities


def act(d, i):
    return ACTIONS[d.action[i]]


def why(d, i):
    return REASONS[d.reason[i]]


def cluster(center_axis: int, n: int, start: int = 0, degrees: float = 15.0) -> list[np.ndarray]:
    """n samples at ``degrees`` from an axis, each leaning toward a different free axis."""
    return [toward(center_axis, FREE + (start + j) % (D - FREE), degrees) for j in range(n)]


def test_threshold_edge():
    assert drop_by_angle(np.array([75.0, np.nextafter(75.0, 90), 74.999, np.nan]), 75.0).tolist() == [False, True, False, False]
    rows = cluster(0, 5) + [toward(0, 20, 74.9), toward(0, 21, 75.1)] + cluster(3, 4)
    labels = np.array([0] * 7 + [1] * 4)
    d = decide(np.stack(rows), labels, basis_centers(2))
    assert act(d, 5) == "keep" and act(d, 6) == "drop" and why(d, 6) == "angle above threshold"
    assert d.angle[5] == pytest.approx(74.9, abs=1e-3) and d.angle[6] == pytest.approx(75.1, abs=1e-3)
    d = decide(np.stack(rows), labels, basis_centers(2), PurifySettings(threshold=75.2))
    assert act(d, 6) == "keep"


def test_relabel_and_its_limits():
    rows = cluster(0, 5) + cluster(3, 5) + [toward(3, 20, 20), toward(3, 21, 60)]
    labels = np.array([0] * 5 + [1] * 5 + [0, 0])
    d = decide(np.stack(rows), labels, basis_centers(2), names=["ann", "bob"])
    assert act(d, 10) == "relabel" and d.new_label[10] == 1 and d.best_other[10] == 1
    assert d.best_other_angle[10] == pytest.approx(20, abs=1e-3)
    assert act(d, 11) == "drop" and d.best_other_angle[11] == pytest.approx(60, abs=1e-3)  # not below relabel_angle
    d = decide(np.stack(rows), labels, basis_centers(2), PurifySettings(relabel=False))
    assert act(d, 10) == "drop" and d.best_other[10] == 1  # still reported


def test_relabel_margin():
    # in the plane of the two dominant sub-centers (axes 0 and 3): angle phi to own, 90 - phi to the other
    rows = cluster(0, 5) + cluster(3, 5) + [toward(0, 3, 47), toward(0, 3, 62)]
    labels = np.array([0] * 5 + [1] * 5 + [0, 0])
    d = decide(np.stack(rows), labels, basis_centers(2), PurifySettings(threshold=40))
    assert act(d, 10) == "drop"  # 43 deg from the other, but only 4 deg closer than to its own
    assert act(d, 11) == "relabel" and d.new_label[11] == 1


def merge_case():
    centers = basis_centers(3)
    centers[1, 0] = toward(0, 3, 20)  # identity 1's dominant sub-center lies 20 deg from identity 0's
    rows = cluster(0, 6) + [toward(0, 3, 20) * 0.9 + 0.1 * axis(FREE + j) for j in range(5)] + cluster(6, 5)
    labels = np.array([0] * 6 + [1] * 5 + [2] * 5)
    return np.stack(rows), labels, centers


def test_merge_two_identities():
    emb, labels, centers = merge_case()
    d = decide(emb, labels, centers, names=["ann", "bob", "cy"])
    assert [act(d, i) for i in range(6, 11)] == ["merge"] * 5
    assert d.new_label[6:11].tolist() == [0] * 5 and why(d, 6) == "identity merged"
    assert len(d.merges) == 1 and d.merges[0]["identities"] == ["ann", "bob"] and d.merges[0]["into"] == "ann"
    assert d.merges[0]["min_angle"] == pytest.approx(20, abs=1e-2)
    assert all(act(d, i) == "keep" for i in list(range(6)) + list(range(11, 16)))
    report_only = decide(emb, labels, centers, PurifySettings(merge=False), names=["ann", "bob", "cy"])
    assert report_only.action_counts()["merge"] == 0 and report_only.merges[0]["merged"] is False
    wide = decide(emb, labels, centers, PurifySettings(merge_angle=19.0))
    assert wide.merges == []


def test_relabel_skips_a_merge_partner_for_the_next_candidate():
    # identities 0 and 1 merge (dominant sub-centers 20 deg apart); the last image, labelled 0 and dropped at 49 deg,
    # lies 29 deg from identity 1 (its own merge group) and 31 deg from identity 2: it goes to identity 2
    centers = basis_centers(3)
    centers[1, 0] = toward(0, 3, 20)
    centers[2, 0] = toward(0, 3, 80)
    near = lambda v, j: v * 0.99 + 0.1 * axis(FREE + j)  # noqa: E731
    rows = cluster(0, 6) + [near(toward(0, 3, 20), j) for j in range(5)] + [near(toward(0, 3, 80), j) for j in range(5)] + [toward(0, 3, 49)]
    labels = np.array([0] * 6 + [1] * 5 + [2] * 5 + [0])
    d = decide(np.stack(rows), labels, centers, PurifySettings(threshold=45), names=["ann", "bob", "cy"])
    assert d.merges[0]["identities"] == ["ann", "bob"] and act(d, 16) == "relabel" and d.new_label[16] == 2
    assert d.best_other[16] == 2 and d.best_other_angle[16] == pytest.approx(31, abs=1e-3)
    unmerged = decide(np.stack(rows), labels, centers, PurifySettings(threshold=45, merge=False))
    assert act(unmerged, 16) == "relabel" and unmerged.new_label[16] == 1 and unmerged.best_other[16] == 1


def split_case():
    rows = cluster(0, 5) + cluster(1, 4, start=2) + [toward(2, 20, 10)] + cluster(3, 5)
    labels = np.array([0] * 10 + [1] * 5)
    return np.stack(rows), labels, basis_centers(2)


def test_split_is_reported_and_applied_on_request():
    emb, labels, centers = split_case()
    d = decide(emb, labels, centers, names=["sam", "tom"])
    assert d.splits == [{"identity": "sam", "subcenters": [0, 1], "shares": [0.5, 0.4], "angle": pytest.approx(90, abs=1e-3), "applied": False}]
    assert [act(d, i) for i in range(5, 9)] == ["drop"] * 4
    d = decide(emb, labels, centers, PurifySettings(split=True), names=["sam", "tom"])
    assert [act(d, i) for i in range(5, 9)] == ["new-identity"] * 4
    assert d.names == ["sam", "tom", "sam#2"] and d.new_label[5:9].tolist() == [2] * 4
    assert act(d, 9) == "drop"  # near the third sub-center: not part of the second group
    assert decide(emb, labels, centers, PurifySettings(split_min_share=0.45)).splits == []


def test_duplicates_reported_and_deduplicated():
    v = toward(0, 20, 10)
    w = v * 0.995 + 0.1 * axis(21)
    rows = [v] + cluster(0, 4, start=2, degrees=25) + [w] + cluster(3, 5)
    labels = np.array([0] * 6 + [1] * 5)
    d = decide(np.stack(rows), labels, basis_centers(2))
    assert d.duplicate_pairs.tolist() == [[0, 5]] and d.duplicate_cos[0] >= 0.98
    assert d.action_counts()["dedup"] == 0
    d = decide(np.stack(rows), labels, basis_centers(2), PurifySettings(dedup=True))
    assert act(d, 0) == "keep" and act(d, 5) == "dedup" and d.new_label[5] == -1


def test_hdbscan_finds_groups_among_dropped_images():
    first = [toward(20, 21 + j % 3, 3 + j) for j in range(8)]  # one outside person, spread over two labels
    second = [toward(16, 17 + j % 3, 2 + j) for j in range(6)]  # another, all under one label
    scattered = [axis(7), axis(9), axis(11), axis(13), toward(8, 12, 45), toward(10, 14, 45)]  # far from everything
    rows = cluster(0, 6) + cluster(3, 6) + first + second + scattered
    labels = np.array([0] * 6 + [1] * 6 + [0, 1] * 4 + [1] * 6 + [0, 1] * 3)
    angle = PurifySettings(drop_rule="angle")  # 20 of 32 images are outliers here: the sub-center rule, not a calibration
    d = decide(np.stack(rows), labels, basis_centers(2), angle, names=["ann", "bob"])
    assert d.outlier_group[12:26].tolist() == [0] * 8 + [1] * 6
    assert (d.outlier_group[:12] == -1).all() and (d.outlier_group[26:] == -1).all()
    assert [g["size"] for g in d.outlier_groups] == [8, 6]
    assert d.outlier_groups[0]["identities"] == {"ann": 4, "bob": 4} and d.outlier_groups[1]["identities"] == {"bob": 6}
    assert all(act(d, i) == "drop" for i in range(12, 32))
    kept = decide(np.stack(rows), labels, basis_centers(2), PurifySettings(drop_rule="angle", keep_outlier_groups=True), names=["ann", "bob"])
    assert [act(kept, i) for i in range(12, 26)] == ["new-identity"] * 14
    assert kept.names[2:] == ["outlier-group-1", "outlier-group-2"]
    assert kept.new_label[12:26].tolist() == [2] * 8 + [3] * 6


def test_non_finite_rows_are_dropped_with_their_reason():
    rows = np.stack(cluster(0, 5) + cluster(3, 5)).astype(np.float32)
    rows[2, 4] = np.nan
    rows[7] = np.inf
    d = decide(rows, np.array([0] * 5 + [1] * 5), basis_centers(2))
    assert [why(d, i) for i in (2, 7)] == ["non-finite embedding"] * 2
    assert act(d, 2) == "drop" and np.isnan(d.angle[2]) and d.nearest[2] == -1
    assert not np.isin([2, 7], d.duplicate_pairs).any()
    assert d.action_counts()["keep"] == 8


def test_threshold_advice_separates_two_populations():
    rng = np.random.default_rng(0)
    n_clean, n_noisy = 800, 200
    emb, labels = [], []
    for c in range(4):
        for t in rng.normal(35, 6, n_clean // 4):
            emb.append(toward(3 * c, FREE + rng.integers(0, 9), float(t)))
        for t in rng.normal(88, 3, n_noisy // 4):
            emb.append(toward(3 * c, FREE + rng.integers(0, 9), float(t)))
        labels += [c] * (n_clean // 4 + n_noisy // 4)
    d = decide(np.stack(emb), np.array(labels), basis_centers(4))
    adv = d.advice["threshold"]
    mix = d.advice["mixture"]
    assert 45 < adv < 80 and mix["means"][0] == pytest.approx(35, abs=1.5) and mix["means"][1] == pytest.approx(88, abs=1.5)
    w, m, s = (np.array(mix[key]) for key in ("weights", "means", "stds"))
    dens = lambda x, j: w[j] / s[j] * np.exp(-0.5 * ((x - m[j]) / s[j]) ** 2)  # noqa: E731
    assert dens(adv, 0) == pytest.approx(dens(adv, 1), rel=1e-6)


def test_factory_choice_and_ivf_search():
    assert choose_factory(49_999) == ("Flat", "")
    factory, params = choose_factory(1_000_000)
    assert factory == "IVF1024,Flat" and params == "nprobe=32"
    assert choose_factory(1_000_000, nprobe=4) == ("IVF1024,Flat", "nprobe=4")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16)).astype(np.float16)
    built = build_index(x, exact_below=1000)
    assert built.describe().startswith("IVF") and built.index.ntotal == 2000
    _, ids = search(built, x[:50], 1)
    assert (ids[:, 0] == np.arange(50)).mean() > 0.9


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="threshold must be an angle"):
        PurifySettings(threshold=200)
    with pytest.raises(ConfigError, match="unknown purify setting"):
        PurifySettings.from_dict({"treshold": 70})


@hsettings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.booleans(), st.booleans(), st.booleans())
def test_invariants_on_random_data(seed, dedup, split, keep_groups):
    rng = np.random.default_rng(seed)
    c, k, d, n = 6, 3, 8, 80
    centers = rng.standard_normal((c, k, d)).astype(np.float32)
    labels = rng.integers(0, c, n)
    emb = centers[labels, rng.integers(0, k, n)] + rng.normal(0, rng.uniform(0.1, 2), (n, d))
    emb[rng.random(n) < 0.05] = np.nan
    emb[1] = emb[0]  # an exact duplicate
    settings = PurifySettings(dedup=dedup, split=split, keep_outlier_groups=keep_groups, outlier_min_cluster_size=3)
    a = decide(emb, labels, centers, settings)
    b = decide(emb, labels, centers, settings)
    for name in ("action", "reason", "new_label", "angle", "best_other", "outlier_group"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert sum(a.action_counts().values()) == n
    kept = np.isin(a.action, IN_OUTPUT)
    assert ((a.new_label >= 0) == kept).all() and a.new_label.max() < len(a.names)
    assert (a.reason[a.action == 0] == 0).all() and (a.reason[a.action != 0] != 0).all()
    assert (a.action[~a.finite] == 1).all()
    if np.isfinite(emb[0]).all():
        assert [0, 1] in a.duplicate_pairs.tolist()


def test_free_memory_is_handed_back_on_glibc():
    import platform

    from cleanface.purify._memory import release_free_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is a glibc call")
    assert release_free_memory()
