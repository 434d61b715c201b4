"""A pretrained embedder against cleanface's own model: flags of injected noise on LFW and CelebA.

Noisy sets (20% noise by default, ``inject_noise`` seed 1: r/2 close-set, r/2 open-set, one
merged pair, one split identity):

* LFW: exactly the set of ``benchmarks/lfw_noise.py`` (DevTrain people with >= 4 images, open-set
  faces from DevTrain people with 1-3), built in the same place (``bench-out/lfw_noise``), so
  either script reuses what the other trained;
* CelebA (``../shared/data/celeba``, 112x112 dlib chips): identities with >= 20 images are the
  pool, the faces of the identities with fewer are the open-set noise (``bench-out/celeba_noise``).

Methods, each scored with :func:`cleanface.purify.outputs.truth_metrics`:

a. ``own``: cleanface's sub-center ArcFace K=3 (compact backbone, 64x64, 6 epochs, the settings of
   ``lfw_noise.py``), then ``purify`` with default settings; flagged = action not ``keep``;
b. ``dlib``: dlib's pretrained ResNet (``benchmarks/dlib_embed.py``) embeddings, through the same
   ``decide`` with centres computed from the embeddings: the per-identity mean (K=1), and K=3
   sub-centres from ``cleanface.purify.kmeans`` when that module exists; at purify's default
   threshold and at the threshold purify advises from the data (no ground truth); and the plain
   rule "angle to the leave-one-out identity mean above 60 / 65 degrees";
c. combinations: ``own AND dlib`` / ``own OR dlib`` of the flags, and the concatenation
   ``[own | dlib] / sqrt(2)`` through ``decide`` with K=1 means at the advised threshold.

No threshold is tuned on the truth of the set it is reported on.

Usage (one step per process; every step is skipped when its output exists)::

    python benchmarks/pretrained_noise.py own  --dataset lfw     # train sub-center K=3 + purify
    python benchmarks/pretrained_noise.py dlib --dataset lfw     # dlib embeddings of the noisy set
    python benchmarks/pretrained_noise.py compare --dataset lfw  # all flags -> OUT/rate_20/pretrained.json
    python benchmarks/pretrained_noise.py render                 # bench-out/pretrained_noise.md

Exits with a message when the data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import lfw_noise as ln  # noqa: E402

DATA = {"lfw": REPO.parent / "shared" / "data" / "lfw", "celeba": REPO.parent / "shared" / "data" / "celeba"}
OUTS = {"lfw": REPO / "bench-out" / "lfw_noise", "celeba": REPO / "bench-out" / "celeba_noise"}
# the own model's input: LFW 250x250 deep-funneled -> 128 px centre crop; CelebA chips are whole faces already
CROP = {"lfw": 128, "celeba": None}


def args_for(dataset: str, epochs: int) -> argparse.Namespace:
    return argparse.Namespace(out=str(OUTS[dataset]), epochs=epochs)


def settings_for(dataset: str, epochs: int) -> dict:
    s = ln.train_settings(args_for(dataset, epochs), 0)
    s["crop"] = CROP[dataset]
    return s


def build(dataset: str, rate: float, seed: int, timings) -> Path:
    """The noisy set at ``rate``: ``OUT/rate_XX/noisy`` with its ``noise_truth.csv``."""
    out = OUTS[dataset]
    root = DATA[dataset]
    if dataset == "lfw":
        if not (root / "images_deepfunneled").is_dir():
            sys.exit(f"LFW not found at {root}")
        pool, outside = ln.build_pool(root, out, quick=False)
    else:
        if not (root / "images").is_dir():
            sys.exit(f"CelebA not found at {root}")
        from cleanface.data.index import DatasetIndex
        from cleanface.data.open import open_dataset

        if (out / "pool.npz").is_file() and (out / "outside.npz").is_file():
            pool, outside = DatasetIndex.load(out / "pool.npz"), DatasetIndex.load(out / "outside.npz")
        else:
            pool, outside, verify = split_celeba(open_dataset(root / "images", silent=True))
            out.mkdir(parents=True, exist_ok=True)
            pool.save(out / "pool.npz")
            outside.save(out / "outside.npz")
            verification_pairs(verify, out / "verify")
    ln.log(f"{dataset}: pool {pool.num_identities} identities, {len(pool)} images; outside {len(outside)} images")
    # open-set noise takes half the rate when the outside faces suffice (share s of the output needs s/(1-s) x pool images)
    fits = 0.9 * len(outside) / (len(pool) + 0.9 * len(outside))
    return ln.noisy_set(pool, outside, out / ln.rate_tag(rate), rate, seed, timings, open_set=min(rate / 2, round(fits, 2)))


def split_celeba(everyone):
    """CelebA by identity: >= 20 images the pool; the others alternately (sorted by name) open-set noise or verification.

    No identity is in two of the three, so the verification pairs share no person with any training set.
    """
    counts = everyone.counts()
    small = [c for c in np.argsort(everyone.names) if counts[c] < 20]
    noise_ids, verify_ids = set(small[0::2]), set(small[1::2])
    pool = everyone.subset(np.flatnonzero(counts[everyone.labels] >= 20))
    outside = everyone.subset(np.flatnonzero([int(c) in noise_ids for c in everyone.labels]))
    verify = everyone.subset(np.flatnonzero([int(c) in verify_ids for c in everyone.labels]), renumber=True)
    return pool, outside, verify


def verification_pairs(verify, folder: Path, num_pairs: int = 3000) -> Path:
    """``folder/images/<id>/<id>_<NNNN>.jpg``, copies of the verification faces, and a 10-fold ``folder/pairs.txt`` over them."""
    import shutil

    from cleanface.data.synthetic import make_pairs

    images = folder / "images"
    for i in range(len(verify)):
        name = verify.names[int(verify.labels[i])]
        same = np.flatnonzero(verify.labels[: i + 1] == verify.labels[i])
        copy = images / name / f"{name}_{len(same):04d}.jpg"
        copy.parent.mkdir(parents=True, exist_ok=True)
        if not copy.is_file():
            shutil.copyfile(verify.abspath(i), copy)
    return make_pairs(images, folder / "pairs.txt", num_pairs=num_pairs, folds=10, seed=0)


def own_suffix(epochs: int) -> str:
    """Run directories of the own model: ``sub_k3``/``purify``/``emb_k3`` at lfw_noise.py's 6 epochs, ``..._eE`` otherwise."""
    return "" if epochs == 6 else f"_e{epochs}"


def step_own(dataset: str, rate: float, seed: int, epochs: int) -> None:
    from cleanface._atomic import is_complete
    from cleanface.purify.runner import purify
    from cleanface.purify.settings import PurifySettings

    out = OUTS[dataset]
    timings = ln.Timings(out / f"timings_{ln.rate_tag(rate)}_own.json")
    noisy = build(dataset, rate, seed, timings)
    rate_dir = noisy.parent
    sfx = own_suffix(epochs)
    run = ln.trained(rate_dir / f"sub_k3{sfx}", noisy, timings, f"{rate_dir.name}/train-subcenter-k3{sfx}", head="subcenter-arcface",
                     settings=settings_for(dataset, epochs), k=3)
    if not is_complete(rate_dir / f"purify{sfx}"):
        with timings.step(f"{rate_dir.name}/purify{sfx}"):
            purify(run, noisy, rate_dir / f"purify{sfx}", settings=PurifySettings(), truth=noisy / "noise_truth.csv", overwrite=True, silent=True)
    index, _ = ln.open_noisy(noisy, _names(run))
    _own_embeddings(dataset, run, index, rate_dir, timings, sfx)


def _names(run: Path) -> list[str]:
    from cleanface.purify.runner import read_run_names

    return read_run_names(run)


def _own_embeddings(dataset: str, run: Path, index, rate_dir: Path, timings, sfx: str = "") -> np.ndarray:
    """The own K=3 model's embeddings of the noisy set (no flip, as purify embeds), ``rate_XX/emb_k3``."""
    from cleanface.inference.embed import embed_index
    from cleanface.inference.run import load_run

    out_dir = rate_dir / f"emb_k3{sfx}"
    loaded = load_run(run)
    if (out_dir / "embeddings.json").is_file():
        return np.asarray(embed_index(loaded.backbone, index, out_dir, size=64, crop=CROP[dataset], flip=False, silent=True), dtype=np.float32)
    with timings.step(f"{rate_dir.name}/embed-k3{sfx}"):
        return np.asarray(embed_index(loaded.backbone, index, out_dir, size=64, crop=CROP[dataset], flip=False, silent=True), dtype=np.float32)


def step_dlib(dataset: str, rate: float) -> dict:
    """dlib embeddings of the noisy set, ``rate_XX/emb_dlib`` (LFW: detect; CelebA: the chips as they are)."""
    import dlib_embed

    rate_dir = OUTS[dataset] / ln.rate_tag(rate)
    mode = "detect" if dataset == "lfw" else "chip"
    earlier = [(d / "noisy", d / "emb_dlib") for d in sorted(REPO.glob(f"bench-out/{OUTS[dataset].name}_v*/{rate_dir.name}"))
               if (d / "emb_dlib" / "embeddings.json").is_file()]  # same images embedded for an earlier protocol
    return dlib_embed.embed_dataset(rate_dir / "noisy", rate_dir / "emb_dlib", mode=mode, reuse=earlier)


# -- the comparison ---------------------------------------------------------------------------------------
def class_means(emb: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, 1, D) L2-normalised per-identity means."""
    sums = np.zeros((num_classes, emb.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, emb)
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12))[:, None, :].astype(np.float32)


def loo_angle(emb: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Degrees from each image to the mean of the other images of its identity (180 for a lone image)."""
    from cleanface.purify.signals import loo_mean_angle

    return np.nan_to_num(loo_mean_angle(emb, labels, num_classes)[0], nan=180.0)


def kmeans_centers(emb: np.ndarray, labels: np.ndarray, num_classes: int, k: int) -> np.ndarray | None:
    """(C, k, D) sub-centres by spherical k-means (``cleanface.purify.kmeans``), or None where that module is absent."""
    try:
        from cleanface.purify.kmeans import spherical_kmeans
    except ImportError:
        return None
    return spherical_kmeans(emb, labels, num_classes, k=k, seed=0).centers


def purify_flags(emb: np.ndarray, labels: np.ndarray, centers: np.ndarray, names: list[str], threshold: float | None = None):
    """``decide`` with default settings (or another drop threshold): flagged = action not keep, and the advised threshold."""
    from cleanface.purify.codes import ACTIONS
    from cleanface.purify.decisions import decide
    from cleanface.purify.settings import PurifySettings

    settings = PurifySettings() if threshold is None else PurifySettings(threshold=float(threshold))
    d = decide(emb, labels, centers, settings, names=names, silent=True)
    return d.action != ACTIONS.index("keep"), d.advice.get("threshold"), d.action_counts()


def centred(emb: np.ndarray) -> np.ndarray:
    """The embeddings minus their mean over the dataset, back to unit length (no labels, no truth).

    dlib's descriptors of all faces sit in a narrow cone (identity means 14-23 degrees apart, an
    image 11-18 degrees from its own identity's mean), where purify's fixed angles (merge below 35,
    drop above 75) mean nothing; centring spreads them to 60-90 degrees between identities.
    """
    c = emb - emb.mean(axis=0, dtype=np.float64).astype(np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def variants(tag: str, emb: np.ndarray, labels: np.ndarray, names: list[str], flags: dict, thresholds: dict, advised: dict, timing: dict) -> None:
    """purify's rules with K=1 means and K=3 k-means sub-centres (default and advised threshold), and the LOO-mean rule."""
    from cleanface.purify.advice import advise_threshold
    from cleanface.purify.settings import PurifySettings

    C = len(names)
    default = PurifySettings().threshold
    for k in (1, 3):
        t0 = time.perf_counter()
        centers = class_means(emb, labels, C) if k == 1 else kmeans_centers(emb, labels, C, 3)
        if centers is None:
            continue
        label = f"{tag}, K={k} {'mean' if k == 1 else 'k-means'}"
        f, adv, _ = purify_flags(emb, labels, centers, names)
        timing[f"{label}: centres + decide"] = time.perf_counter() - t0
        flags[f"{label}, purify default"] = f
        thresholds[f"{label}, purify default"] = f"{default:g}° (purify default)"
        advised[label] = adv
        if adv is not None:
            flags[f"{label}, purify advised"] = purify_flags(emb, labels, centers, names, adv)[0]
            thresholds[f"{label}, purify advised"] = f"{adv:.1f}° (advised from the data)"
    loo = loo_angle(emb, labels, C)
    for th in (60, 65):
        flags[f"{tag}, LOO-mean angle > {th}°"] = loo > th
        thresholds[f"{tag}, LOO-mean angle > {th}°"] = f"{th}° (fixed in advance)"
    adv, _ = advise_threshold(loo[loo < 180])
    advised[f"{tag}, LOO-mean"] = adv
    if adv is not None:
        flags[f"{tag}, LOO-mean angle, advised"] = loo > adv
        thresholds[f"{tag}, LOO-mean angle, advised"] = f"{adv:.1f}° (advise_threshold of the LOO angles)"


COMBO_DLIB = "dlib centred, K=3 k-means, purify advised"  # fixed before any result: the path of purify --embeddings


def step_compare(dataset: str, rate: float, lfw_threshold: float | None, dlib_dir: Path | None = None, write: bool = True) -> dict:
    from cleanface.data.noise import align_truth, read_truth
    from cleanface.data.open import open_dataset
    from cleanface.inference.stored import read_embeddings_file
    from cleanface.purify.outputs import truth_metrics

    rate_dir = OUTS[dataset] / ln.rate_tag(rate)
    noisy = rate_dir / "noisy"
    index = open_dataset(noisy, silent=True)
    labels, names, C = index.labels, list(index.names), index.num_identities
    truth = align_truth(read_truth(noisy), index)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    dlib_dir = dlib_dir or rate_dir / "emb_dlib"
    dlib = np.asarray(read_embeddings_file(dlib_dir, index), dtype=np.float32)
    dmeta = json.loads((dlib_dir / "embeddings.json").read_text())
    dlib_c = centred(dlib)
    flags: dict[str, np.ndarray] = {}
    thresholds: dict[str, str] = {}
    advised: dict[str, float | None] = {}
    owns = {}  # own model variants: lfw_noise.py's 6 epochs, and longer trainings where they exist
    for d in sorted(rate_dir.glob("purify*")):
        if not (d / "COMPLETE").is_file() or not (rate_dir / d.name.replace("purify", "emb_k3") / "embeddings.json").is_file():
            continue
        sfx = d.name[len("purify"):]
        run_cfg = json.loads((rate_dir / f"sub_k3{sfx}" / "config.json").read_text())
        epochs = round(run_cfg["total_steps"] / run_cfg["steps_per_epoch"])
        tag = f"own K=3 ArcFace {epochs} ep"
        # purify's decisions (sample order is the folder's; match_run only renumbers labels)
        f = ln.read_decisions(d / "decisions.csv", len(index)) != "keep"
        e = np.asarray(np.load(rate_dir / f"emb_k3{sfx}" / "embeddings.npy"), dtype=np.float32)
        e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        owns[tag] = (f, e)
        flags[f"{tag} + purify"] = f
        thresholds[f"{tag} + purify"] = "75° (purify default)"
        advised[f"{tag} + purify"] = json.loads((d / "summary.json").read_text()).get("advised_threshold")
        own_loo = loo_angle(e, labels, C)  # reference: the plain rule on the own model's embeddings
        for th in (60, 65):
            flags[f"{tag} embeddings, LOO-mean angle > {th}° (reference)"] = own_loo > th
            thresholds[f"{tag} embeddings, LOO-mean angle > {th}° (reference)"] = f"{th}° (fixed in advance)"
    variants("dlib raw", dlib, labels, names, flags, thresholds, advised, timing)
    variants("dlib centred", dlib_c, labels, names, flags, thresholds, advised, timing)
    loo_c = loo_angle(dlib_c, labels, C)
    if lfw_threshold is not None:
        key = f"dlib centred, LOO-mean angle > {lfw_threshold:g}° (LFW-tuned)"
        flags[key] = loo_c > lfw_threshold
        thresholds[key] = f"{lfw_threshold:g}° (best F1 on LFW's truth, unchanged here)"
    # c. combinations, with the dlib variant fixed in advance
    dl = flags.get(COMBO_DLIB, flags.get("dlib centred, K=1 mean, purify advised"))
    for tag, (own_flags, own_emb) in owns.items():
        for key, f in (("AND", own_flags & dl), ("OR", own_flags | dl)):
            flags[f"{tag} {key} dlib ({COMBO_DLIB})"] = f
            thresholds[f"{tag} {key} dlib ({COMBO_DLIB})"] = "each its own (75° / advised)"
        cat = np.concatenate([own_emb, dlib_c], axis=1) / np.sqrt(2.0)
        variants(f"concat [{tag} | dlib centred]/√2", cat, labels, names, flags, thresholds, advised, timing)
    for k in [k for k in flags if k.startswith("concat") and "LOO" in k]:
        del flags[k], thresholds[k]
    timing["compare total"] = time.perf_counter() - t0
    prf = lambda x: dict(truth_metrics(x, truth)["overall"])  # noqa: E731
    sweep = {str(th): prf(loo_c > th) for th in range(50, 91, 5)}
    no_face = dmeta.get("no_face", [])
    res = {
        "dataset": dataset, "rate": rate, "images": len(index), "identities": C,
        "noisy": int(truth["is_noise"].sum()),
        "methods": {m: {**ln.score(f, truth), "threshold": thresholds[m]} for m, f in flags.items()},
        "advised": advised,
        "dlib_centred_loo_sweep_diagnostic": sweep,
        "dlib_embed": {k: (len(v) if isinstance(v, list) else v) for k, v in dmeta.items()},
        "dlib_no_face_noise_types": {str(k): int(v) for k, v in zip(*np.unique(truth["noise_type"][no_face], return_counts=True))} if no_face else {},
        "seconds": {k: round(v, 2) for k, v in timing.items()},
    }
    if write:
        np.savez(rate_dir / "pretrained_flags.npz", **{f"m{i}": f for i, f in enumerate(flags.values())}, names=np.array(list(flags)))
        ln.write_json(rate_dir / "pretrained.json", res)
    for m, r in res["methods"].items():
        o = r["overall"]
        ln.log(f"{dataset} {m}: P {o['precision']:.3f} R {o['recall']:.3f} F1 {o['f1']:.3f} (flagged {o['flagged']}; {thresholds[m]})")
    return res


def step_probe_celeba(per_identity: int, identities: int) -> dict:
    """CelebA chips: embed a sample of the clean pool both ways (``chip``: whole image resized to 150; ``detect``: HOG
    + landmarks + ``get_face_chip`` on the 112x112 chip) and compare detection rate and leave-one-out 1-NN identification
    on CelebA's own labels (no injected noise, no truth of the noisy set)."""
    import dlib_embed
    from cleanface.data.index import DatasetIndex

    out = OUTS["celeba"]
    pool = DatasetIndex.load(out / "pool.npz")
    rng = np.random.default_rng(0)
    chosen = rng.choice(pool.num_identities, size=identities, replace=False)
    picks = np.concatenate([rng.permutation(np.flatnonzero(pool.labels == c))[:per_identity] for c in chosen])
    labels = pool.labels[picks]
    res: dict = {"images": int(len(picks)), "identities": int(identities)}
    for mode in ("chip", "detect"):
        e = dlib_embed.DlibEmbedder(mode)
        t0 = time.perf_counter()
        chips, found = [], []
        for i in picks:
            c, f = e.chip(dlib_embed.decode_rgb(pool.read_bytes(int(i))))
            chips.append(c)
            found.append(f)
        emb = e.descriptors(chips)
        sec = time.perf_counter() - t0
        sims = emb @ emb.T
        np.fill_diagonal(sims, -np.inf)
        nn_acc = float((labels[sims.argmax(1)] == labels).mean())
        same = labels[:, None] == labels[None, :]
        np.fill_diagonal(same, False)
        diff = labels[:, None] != labels[None, :]
        ang = np.degrees(np.arccos(np.clip(emb @ emb.T, -1, 1)))
        res[mode] = {"detected": int(np.sum(found)), "nn_identification": round(nn_acc, 4), "loo_mean_angle_median": round(float(np.median(loo_angle(emb, labels, int(labels.max()) + 1))), 2),
                     "same_angle_median": round(float(np.median(ang[same])), 2), "diff_angle_median": round(float(np.median(ang[diff])), 2),
                     "seconds": round(sec, 1), "images_per_s": round(len(picks) / sec, 2)}
        ln.log(f"celeba probe {mode}: {res[mode]}")
    ln.write_json(out / "probe_chip_vs_detect.json", res)
    return res


def step_accuracy(dataset: str, arms: list[str], seeds: list[int], rate: float, epochs: int) -> None:
    """ElasticFace-Arc+ on each cleaned set (``lfw_noise.accuracy_arm``, same layout), verified on identities no training
    set holds: LFW's pairsDevTest, or CelebA's verification half (:func:`split_celeba`)."""
    from cleanface.data.open import open_dataset

    out = OUTS[dataset]
    where = {"crop": 128} if dataset == "lfw" else {"crop": None, "pairs": out / "verify" / "pairs.txt", "images_root": out / "verify" / "images"}
    rate_dir = out / ln.rate_tag(rate)
    args = argparse.Namespace(out=str(out), epochs=epochs)
    timings = ln.Timings(out / "timings_pretrained_accuracy.json")
    z = np.load(rate_dir / "pretrained_flags.npz")
    named = {str(n): z[f"m{i}"] for i, n in enumerate(z["names"])}
    choice = {"dlib": COMBO_DLIB, "or": f"own K=3 ArcFace 6 ep OR dlib ({COMBO_DLIB})", "and": f"own K=3 ArcFace 6 ep AND dlib ({COMBO_DLIB})",
              "concat": "concat [own K=3 ArcFace 6 ep | dlib centred]/√2, K=3 k-means, purify advised"}
    for seed in seeds:
        for arm in arms:
            if arm == "noisy":
                data = rate_dir / "noisy"
            elif arm == "cleanface":
                data = rate_dir / "purify" / "data"  # purify's angle rule (the default before issue 16)
            elif arm == "calibrated":
                data = rate_dir / "purify_r2" / "data"  # the calibrated rule, 2 rounds (benchmarks/cleaning_ablation.py rounds)
            elif arm == "calibrated-k3":  # the same set, the final model keeping 3 sub-centers (issue 16, item 5)
                data = rate_dir / "purify_r2" / "data"
            elif arm == "calibrated1":
                data = rate_dir / "purify_r2" / "rounds" / "round-1" / "data"  # its first round alone
            elif arm == "clean":
                data = out / "pool.npz"
            elif arm == "best-baseline":
                data = best_baseline_set(rate_dir)
            else:
                data = rate_dir / f"cleaned_pretrained_{arm}.npz"
                if not data.is_file():
                    index = open_dataset(rate_dir / "noisy", silent=True)
                    index.subset(np.flatnonzero(~named[choice[arm]]), renumber=True).save(data)
            head = {"head": "subcenter-arcface", "k": 3} if arm == "calibrated-k3" else {}
            ln.accuracy_arm(args, DATA[dataset], arm, seed, data, timings, **where, **head)


def best_baseline_set(rate_dir: Path) -> Path:
    """The noisy set minus the flags of the baseline with the best F1 in ``ablation.json`` (benchmarks/cleaning_ablation.py)."""
    from cleanface.data.open import open_dataset

    res = ln.read_json(rate_dir / "ablation.json")
    if not res:
        sys.exit(f"{rate_dir}: run benchmarks/cleaning_ablation.py baselines and compare first")
    best = max((m for m in res["methods"] if m.startswith("baseline ")), key=lambda m: res["methods"][m]["overall"]["f1"])
    name = best.split(" ", 1)[1]
    path = rate_dir / f"cleaned_baseline_{name}.npz"
    if not path.is_file():
        flags = np.load(rate_dir / "baselines.npz")[name.replace("-", "_")]
        open_dataset(rate_dir / "noisy", silent=True).subset(np.flatnonzero(~flags), renumber=True).save(path)
    ln.log(f"best baseline at {rate_dir.name}: {name} (F1 {res['methods'][best]['overall']['f1']:.3f})")
    return path


def step_render() -> str:
    """``bench-out/pretrained_noise.md`` from the JSON files."""
    md = []
    for dataset in DATA:
        r = ln.read_json(OUTS[dataset] / ln.rate_tag(0.2) / "pretrained.json")
        if not r:
            continue
        e = r["dlib_embed"]
        md.append(f"**{dataset}, 20% noise**: {r['images']:,} images, {r['identities']} identities, {r['noisy']} noisy. dlib mode `{e['mode']}`, "
                  f"{e.get('seconds')} s, {e.get('images_per_s')} img/s, no face: {e.get('no_face', 0)} {r.get('dlib_no_face_noise_types') or ''}; "
                  f"advised thresholds {r['advised']}\n")
        md.append("| Method | Threshold (how chosen) | Flagged | Precision | Recall | F1 | Close-set R | Open-set R | Clean flagged |")
        md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for m, v in r["methods"].items():
            o, pt = v["overall"], v["per_type"]
            md.append(f"| {m} | {v['threshold']} | {o['flagged']:,} | {o['precision']:.3f} | {o['recall']:.3f} | **{o['f1']:.3f}** | "
                      f"{pt.get('close-set', {}).get('recall', 0):.2f} | {pt.get('open-set', {}).get('recall', 0):.2f} | {pt['clean']['false_flag_rate']:.3f} |")
        sw = r["dlib_centred_loo_sweep_diagnostic"]
        md.append("\nDiagnostic (uses the truth; not a result): centred dlib LOO-mean rule by threshold, F1: " + ", ".join(f"{k}° {v['f1']:.3f}" for k, v in sw.items()) + "\n")
    probe = ln.read_json(OUTS["celeba"] / "probe_chip_vs_detect.json")
    if probe:
        md.append(f"**CelebA chips, chip vs detect** ({probe['images']} clean-pool images, {probe['identities']} identities): " + "; ".join(
            f"{m}: detected {probe[m]['detected']}, 1-NN identification {probe[m]['nn_identification']:.3f}, same/diff median angle "
            f"{probe[m]['same_angle_median']}/{probe[m]['diff_angle_median']}°, {probe[m]['images_per_s']} img/s" for m in ("chip", "detect")) + "\n")
    for dataset, what in (("lfw", "LFW pairsDevTest"), ("celeba", "CelebA verification half (identities in no training set)")):
        runs = {}
        for path in sorted((OUTS[dataset] / "accuracy").glob("*_s*/eval.json")):
            d = ln.read_json(path)
            if d:
                runs.setdefault(d["arm"], []).append((d["seed"], d["accuracy"], d["images"]))
        if not runs:
            continue
        md.append(f"**{what} accuracy** (ElasticFace-Arc+, compact), per training set: seeds, mean ± std (ddof 1), standard error\n")
        md.append("| Training set | Images | Seeds | Accuracies | Mean ± std | SE |")
        md.append("|---|---:|---:|---|---:|---:|")
        for arm, v in runs.items():
            acc = [a for _, a, _ in sorted(v)]
            std = np.std(acc, ddof=1) if len(acc) > 1 else float("nan")
            md.append(f"| {arm} | {v[0][2]:,} | {len(acc)} | " + ", ".join(f"{a:.4f}" for a in acc) +
                      f" | {np.mean(acc):.4f} ± {std:.4f} | {std / np.sqrt(len(acc)):.4f} |")
    text = "\n".join(md) + "\n"
    (REPO / "bench-out" / "pretrained_noise.md").write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("build", "own", "dlib", "probe", "compare", "accuracy", "render"))
    p.add_argument("--dataset", choices=tuple(DATA), default="lfw")
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--noise-seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--arms", default="noisy,cleanface,clean,dlib,or", help="accuracy: training sets (noisy, cleanface, calibrated, calibrated-k3, calibrated1, best-baseline, clean, dlib, or, and, concat)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lfw-threshold", type=float, default=None, help="a LOO-mean threshold chosen on LFW, reported unchanged (use on CelebA only)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.step == "build":
        build(args.dataset, args.rate, args.noise_seed, ln.Timings(OUTS[args.dataset] / f"timings_{ln.rate_tag(args.rate)}_own.json"))
    elif args.step == "own":
        step_own(args.dataset, args.rate, args.noise_seed, args.epochs)
    elif args.step == "dlib":
        build(args.dataset, args.rate, args.noise_seed, ln.Timings(OUTS[args.dataset] / f"timings_{ln.rate_tag(args.rate)}_own.json"))
        step_dlib(args.dataset, args.rate)
    elif args.step == "render":
        print(step_render())
    elif args.step == "probe":
        step_probe_celeba(10, 20)
    elif args.step == "accuracy":
        step_accuracy(args.dataset, args.arms.split(","), [int(x) for x in args.seeds.split(",")], args.rate, args.epochs)
    elif args.step == "compare":
        step_compare(args.dataset, args.rate, args.lfw_threshold)
    ln.log(f"{args.step} {args.dataset}: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
