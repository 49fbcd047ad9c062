"""The report's figures, PNG and PDF, drawn headless: training curves, robust accuracy against the
radius, the variance-gap diagnostic of Dong et al. (docs/methods.md section 7.4), and DGAD's loss
parts and ST fraction per epoch. Every figure has a fixed size (SIZE inches at DPI)."""
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # no display: clusters and CI have none
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from evaluation.protocols import PROTOCOLS, TITLES  # noqa: E402

from training.selection import evaluation_split  # noqa: E402

from .runs import Group  # noqa: E402

DPI = 150
SIZE = (6.4, 4.0)  # one panel: 960 x 600 pixels
WIDE = (11.0, 4.0)  # two panels: 1650 x 600 pixels


def save(fig, folder: str, name: str) -> List[str]:
    paths = [os.path.join(folder, f"{name}.{ext}") for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=DPI)  # no bbox_inches='tight': the size stays what SIZE says
    plt.close(fig)
    return paths


def settings(groups: Sequence[Group]) -> Dict[Tuple[str, str], List[Group]]:
    """Groups by (dataset, student): one figure each."""
    found: Dict[Tuple[str, str], List[Group]] = {}
    for group in groups:
        found.setdefault((group.config.get("dataset"), group.config.get("model")), []).append(group)
    return found


def mean_and_std(series: Sequence[Sequence[float]]) -> Tuple[np.ndarray, np.ndarray]:
    """Per position, over the seeds that reached it."""
    length = max(len(s) for s in series)
    table = np.full((len(series), length), np.nan)
    for i, s in enumerate(series):
        table[i, :len(s)] = s
    counts = np.sum(~np.isnan(table), axis=0)
    with warnings.catch_warnings():  # a position one seed reached: no spread; none (an empty cell): NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(table, axis=0)
        spread = np.where(counts > 1, np.nanstd(table, axis=0, ddof=1), 0.0)
    return mean, spread


def band(ax, x, series: Sequence[Sequence[float]], label: str, color) -> None:
    mean, spread = mean_and_std(series)
    x = np.asarray(x[:len(mean)], dtype=float)
    ax.plot(x, mean, label=label, color=color, marker="o", markersize=3)
    if len(series) > 1:
        ax.fill_between(x, mean - spread, mean + spread, color=color, alpha=0.2, linewidth=0)


def colors(n: int):
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def training_curves(groups: Sequence[Group], folder: str) -> List[str]:
    """The per-epoch evaluation's accuracies: one figure per dataset, student and the split that evaluation
    measured (the test set, or the held-out images of --val_images runs: never both in one figure)."""
    written = []
    for (dataset, model), members in settings(groups).items():
        for split in ("test", "val"):
            chosen = [g for g in members if any(run.history for run in g.runs)
                      and evaluation_split(g.config.get("val_images")) == split]
            if chosen:
                written += split_curves(dataset, model, split, chosen, folder)
    return written


def split_curves(dataset: str, model: str, split: str, members: Sequence[Group], folder: str) -> List[str]:
    fig, axes = plt.subplots(1, 2, figsize=WIDE, dpi=DPI, constrained_layout=True)
    for group, color in zip(members, colors(len(members))):
        runs = [run for run in group.runs if run.history]
        epochs = max((r.history for r in runs), key=len)
        x = [row["epoch"] for row in epochs]
        for ax, column in zip(axes, (f"{split}_clean_acc", f"{split}_PGD10_acc")):
            band(ax, x, [[row.get(column, math.nan) for row in run.history] for run in runs],
                 f"{group.label} ({len(runs)})", color)
    measured = "test" if split == "test" else "validation (held-out images)"
    for ax, title in zip(axes, ("clean accuracy", "PGD-10 accuracy")):
        ax.set(xlabel="epoch", ylabel=f"{title} (%)", title=f"{title}, per-epoch {measured} evaluation")
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, title="method (seeds)", title_fontsize=7)
    fig.suptitle(f"{dataset}, {model}: mean over seeds, band ±1 std", fontsize=9)
    return save(fig, folder, f"curves-{dataset}-{model}" + ("" if split == "test" else "-val"))


def radii_of(report: Dict) -> List[Tuple[float, Dict]]:
    return sorted(((float(entry["eps_255"]), entry) for entry in report.get("radii", {}).values()),
                  key=lambda item: item[0])


def robustness_vs_eps(groups: Sequence[Group], folder: str) -> List[str]:
    written = []
    for (dataset, model), members in settings(groups).items():
        for protocol, spec in PROTOCOLS.items():
            curves = []
            for group in members:
                per_run = []
                for run in group.runs:
                    report = run.reports.get(protocol)
                    if report is None:
                        continue
                    points = {eps: entry["results"][spec.pgd]["accuracy"] for eps, entry in radii_of(report)
                              if spec.pgd in entry["results"]}
                    clean = [entry["results"]["natural"]["accuracy"] for _, entry in radii_of(report)
                             if "natural" in entry["results"]]
                    if clean:
                        points[0.0] = clean[0]
                    if len(points) >= 2:
                        per_run.append(points)
                if per_run:
                    curves.append((group, per_run))
            if not curves:
                continue
            fig, ax = plt.subplots(figsize=SIZE, dpi=DPI, constrained_layout=True)
            for (group, per_run), color in zip(curves, colors(len(curves))):
                radii = sorted(set.intersection(*(set(p) for p in per_run)))
                band(ax, radii, [[p[eps] for eps in radii] for p in per_run], f"{group.label} ({len(per_run)})",
                     color)
            ax.set(xlabel="eps (1/255); 0 = clean", ylabel=f"{TITLES[spec.pgd]} accuracy (%)",
                   title=f"{dataset}, {model}: robustness against the radius ({protocol} protocol)")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, title="method (seeds)", title_fontsize=7)
            written += save(fig, folder, f"robustness_vs_eps-{dataset}-{model}-{protocol}")
    return written


def pearson(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def variance_gap_points(groups: Sequence[Group], protocol: str) -> List[Tuple[Group, float, float, float]]:
    """(group, eps, variance gap, robust accuracy): one point per model and radius."""
    pgd = PROTOCOLS[protocol].pgd
    points = []
    for group in groups:
        for run in group.runs:
            report = run.reports.get(protocol)
            for eps, entry in radii_of(report or {}):
                gap = entry.get("variance_gap")
                if gap is not None and pgd in entry["results"] and math.isfinite(gap["value"]):
                    points.append((group, eps, gap["value"], entry["results"][pgd]["accuracy"]))
    return points


def variance_gap(groups: Sequence[Group], folder: str) -> List[str]:
    """Robust accuracy against tr Cov(f(x')) - tr Cov(f(x)), with the least-squares line and Pearson
    r; Dong et al. (ECCV 2024) report a negative linear trend."""
    written = []
    for (dataset, model), members in settings(groups).items():
        for protocol in PROTOCOLS:
            points = variance_gap_points(members, protocol)
            if len(points) < 2:
                continue
            fig, ax = plt.subplots(figsize=SIZE, dpi=DPI, constrained_layout=True)
            labels = list(dict.fromkeys(p[0].label for p in points))
            for label, color in zip(labels, colors(len(labels))):
                mine = [p for p in points if p[0].label == label]
                ax.scatter([p[2] for p in mine], [p[3] for p in mine], color=color, label=label, s=18)
                for _, eps, x, y in mine:
                    ax.annotate(f"{eps:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
            x, y = [p[2] for p in points], [p[3] for p in points]
            r = pearson(x, y)
            if r is not None:
                slope, intercept = np.polyfit(x, y, 1)
                line = np.linspace(min(x), max(x), 50)
                ax.plot(line, slope * line + intercept, color="black", linewidth=1,
                        label=f"fit: slope {slope:.3g}, Pearson r = {r:.3f}")
            pgd = TITLES[PROTOCOLS[protocol].pgd]
            ax.set(xlabel=f"variance gap tr Cov(f(x')) - tr Cov(f(x)), x' from {pgd}",
                   ylabel=f"{pgd} accuracy (%)",
                   title=f"{dataset}, {model}: variance gap ({protocol} protocol; labels: eps/255)")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            written += save(fig, folder, f"variance_gap-{dataset}-{model}-{protocol}")
    return written


def dgad_parts(groups: Sequence[Group], folder: str) -> List[str]:
    """DGAD's per-epoch loss parts (L_ST, L_AT, L_PCR) and the fraction of examples in the ST set."""
    written = []
    for group in groups:
        runs = [run for run in group.runs if run.history and "train_st_fraction" in run.history[0]]
        if group.method != "DGAD" or not runs:
            continue
        x = [row["epoch"] for row in max((r.history for r in runs), key=len)]
        fig, axes = plt.subplots(1, 2, figsize=WIDE, dpi=DPI, constrained_layout=True)
        for part, color in zip(("L_ST", "L_AT", "L_PCR"), colors(3)):
            band(axes[0], x, [[row.get(f"train_{part}", math.nan) for row in run.history] for run in runs], part, color)
        band(axes[1], x, [[row["train_st_fraction"] for row in run.history] for run in runs], "ST fraction",
             colors(1)[0])
        axes[0].set(xlabel="epoch", ylabel="mean over the epoch's examples", title="loss parts")
        axes[1].set(xlabel="epoch", ylabel="fraction",
                    title="fraction of the batch in MAP's ST set (teacher wrong on x)")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        config = group.config
        fig.suptitle(f"{group.label}: {config.get('dataset')}, {config.get('model')} ({len(runs)} seed(s))",
                     fontsize=9)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in group.label)
        written += save(fig, folder, f"dgad_parts-{config.get('dataset')}-{config.get('model')}-{safe}")
    return written


FIGURES = (training_curves, robustness_vs_eps, variance_gap, dgad_parts)
