"""Helpers of the report tests: run and purify directories made by hand (real tiny images), link checks."""

from __future__ import annotations

import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image

COLUMNS = ("index", "location", "old_identity", "new_identity", "action", "reason", "angle", "nearest_subcenter",
           "dominant_subcenter", "best_other_identity", "best_other_angle")
SCORE_COLUMNS = ("noise_score", "loo_angle")  # written since the calibrated drop rule
CALIBRATION = {"used": True, "noise_rate": 0.2857, "clean_mean": 31.2, "clean_std": 8.4, "impostor_median": 84.0, "threshold": 56.5,
               "cut": 0.5, "iterations": 37, "angles": 21, "impostors": 44}
FALLBACK_REASON = ("fewer than 20 images with a leave-one-out mean or impostor angles; "
                   "dropped above 65 degrees from the dominant sub-center instead")


def write_images(root: Path, identities: dict[str, int], *, size: int = 32, seed: int = 0) -> list[tuple[str, Path]]:
    """``identities`` name -> count of images; returns (identity, path) in folder order."""
    rng = np.random.default_rng(seed)
    out = []
    for name, count in identities.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, 3)
        for j in range(count):
            pixels = np.clip(base + rng.integers(-60, 60, (size, size, 3)), 0, 255).astype(np.uint8)
            path = folder / f"{j:03d}.png"
            Image.fromarray(pixels).save(path)
            out.append((name, path))
    return out


def _scores(rows: list[list], calibration: str) -> None:
    """Append ``noise_score`` and ``loo_angle`` cells to every row: small angles and scores for kept images, large for the rest.

    ``calibration`` "used": distinct scores, rising with the angle; "fallback": angles only (the fit did not run: no scores).
    """
    rng = np.random.default_rng(2)
    for r in rows:
        if r[6] == "":
            r += ["", ""]
            continue
        loo = rng.uniform(15, 45) if r[4] == "keep" else rng.uniform(60, 100)
        score = 1 / (1 + math.exp(-(loo - CALIBRATION["threshold"]) / 4))
        r += [f"{score:.6f}" if calibration == "used" else "", f"{loo:.4f}"]


def make_purify_dir(tmp: Path, *, truth: bool = True, calibration: str | None = None) -> Path:
    """A purify output directory: data/ of 4 identities (one with a '#' and a space), decisions, summary, run_info, truth.

    ``calibration``: None for an output of the angle rule from before the calibrated one (no
    ``noise_score`` / ``loo_angle`` columns, no ``drop_rule``); "used" or "fallback" for the
    calibrated drop rule that ran (:data:`CALIBRATION`) or fell back (:data:`FALLBACK_REASON`).
    """
    data = tmp / "noisy"
    people = {"alice": 7, "bob": 6, "carol #1": 5, "dave": 4}
    samples = write_images(data, people)
    rng = np.random.default_rng(1)
    rows, truth_rows = [], []
    plan = {  # (identity, position) -> (action, new identity, noise type)
        ("alice", 5): ("drop", "", "open-set"), ("alice", 6): ("relabel", "bob", "close-set"),
        ("bob", 4): ("dedup", "", "clean"), ("carol #1", 4): ("new-identity", "outlier-group-1", "open-set"),
        ("dave", 0): ("merge", "bob", "merged"), ("dave", 1): ("merge", "bob", "merged"), ("dave", 2): ("merge", "bob", "merged"),
        ("dave", 3): ("drop", "", "clean"),
    }
    position: dict[str, int] = {}
    for i, (name, path) in enumerate(samples):
        k = position[name] = position.get(name, -1) + 1
        action, new, noise = plan.get((name, k), ("keep", name, "clean"))
        nearest = 0 if k < 4 else 1
        angle = "" if (name, k) == ("bob", 5) else f"{rng.uniform(20, 60) if action == 'keep' else rng.uniform(70, 110):.4f}"
        if angle == "":
            nearest_text, dom_text = "", ""
        else:
            nearest_text, dom_text = str(nearest), "0"
        reason = {"keep": "", "drop": "angle above threshold", "relabel": "closer to another identity", "dedup": "near-duplicate",
                  "merge": "identity merged", "new-identity": "outlier group"}[action]
        rows.append([i, str(path), name, new, action, reason, angle, nearest_text, dom_text, "bob" if action == "relabel" else "", ""])
        truth_rows.append([f"{name}/{path.name}", name, name, noise, ""])
    if calibration is not None:
        _scores(rows, calibration)
    clean = tmp / "clean"
    clean.mkdir()
    with open(clean / "decisions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS + (SCORE_COLUMNS if calibration is not None else ()))
        writer.writerows(rows)
    actions = {a: sum(r[4] == a for r in rows) for a in ("keep", "drop", "relabel", "merge", "dedup", "new-identity")}
    kept = sum(r[4] not in ("drop", "dedup") for r in rows)
    summary = {
        "images_before": len(rows), "images_after": kept, "identities_before": len(people),
        "identities_after": len({r[3] for r in rows if r[4] not in ("drop", "dedup")}),
        "actions": actions, "reasons": {"angle above threshold": 2}, "settings": {"threshold": 65.0, "merge": True},
        "threshold": 65.0, "advised_threshold": 68.5, "faiss": {"subcenters": "Flat", "samples": "Flat"},
        "merges": [{"identities": ["bob", "dave"], "into": "bob", "min_angle": 20.5, "max_angle": 20.5, "merged": True}],
        "splits": [{"identity": "alice", "subcenters": [0, 1], "shares": [0.57, 0.43], "angle": 71.2, "applied": False}],
        "duplicates": [{"a": 7, "b": 10, "cos": 0.991, "a_identity": "bob", "b_identity": "bob"}],
        "outlier_groups": [{"group": 0, "size": 2, "first_indices": [5, 16], "identities": {"alice": 1, "carol #1": 1}, "new_identity": "outlier-group-1"}],
    }
    if calibration is not None:
        cal = dict(CALIBRATION) if calibration == "used" else {"used": False, "reason": FALLBACK_REASON}
        summary.update(drop_rule="calibrated", calibration=cal, calibrated_threshold=cal.get("threshold"))
    if truth:
        (data / "noise_truth.csv").write_text("path,true_identity,assigned_identity,noise_type,source\n"
                                              + "".join(",".join(r) + "\n" for r in truth_rows))
        noisy = sum(r[3] != "clean" for r in truth_rows)
        summary["truth"] = {"overall": {"precision": 0.75, "recall": 0.857, "f1": 0.8, "flagged": 8, "noisy": noisy, "images": len(rows)},
                            "per_type": {"clean": {"images": len(rows) - noisy, "flagged": 2, "false_flag_rate": 0.1}}}
        (clean / "run_info.json").write_text(json.dumps({"data": str(data), "truth": str(data / "noise_truth.csv")}))
    (clean / "summary.json").write_text(json.dumps(summary))
    return clean


def make_run_dir(root: Path, *, steps: int = 50, with_eval: bool = True) -> Path:
    """A training run directory: config.json, identities.txt, metrics.jsonl and eval.json."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"backbone": "compact", "head": "subcenter-arcface", "head_kwargs": {"k": 3, "margin": 0.5},
                                                  "num_classes": 3, "device": "cpu", "seed": 0, "optimizer": {"name": "sgd", "lr": 0.1}}))
    (root / "identities.txt").write_text("a\nb\nc\n")
    with open(root / "metrics.jsonl", "w") as handle:
        for s in range(steps):
            handle.write(json.dumps({"step": s * 10, "epoch": s / 10, "loss": 9 * math.exp(-s / 15) + 0.3, "acc": 1 - math.exp(-s / 12),
                                     "lr": 0.1 * (1 - s / steps), "images_per_s": 800 + 7 * (s % 5), "elapsed_s": 1.5 * s}) + "\n")
    if with_eval:
        far = np.logspace(-4, 0, 30)
        (root / "eval.json").write_text(json.dumps({
            "pairs": "pairs.txt", "num_pairs": 600, "accuracy": 0.9317, "accuracy_std": 0.0123, "threshold": 0.31,
            "tar_at_far": {"1e-2": 0.81, "1e-3": 0.62}, "auc": 0.9712, "roc": {"far": far.tolist(), "tar": (far ** 0.08).tolist()}}))
    (root / "COMPLETE").write_text("{}")
    return root


class LinkParser(HTMLParser):
    """Collects every href/src of a page and its visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("href", "src") and value is not None:
                self.links.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(path: Path) -> LinkParser:
    parser = LinkParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def broken_links(report: Path) -> list[str]:
    """Every href/src of every page under ``report`` that does not resolve to an existing file."""
    broken = []
    for page in sorted(report.rglob("*.html")):
        for link in parse_page(page).links:
            parts = urlsplit(link)
            if parts.scheme == "data":
                continue
            if parts.scheme or parts.netloc:
                broken.append(f"{page.name}: {link} (not relative)")
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if not target.is_file():
                broken.append(f"{page.relative_to(report)}: {link}")
    return broken
