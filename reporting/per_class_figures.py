"""The per-class figure of main_report.py: each method's robust accuracy class by class, under the protocol's
PGD at the tables' radius, from the reports' per-class counts (reporting/fairness.py reads them). Up to 20
classes, bars: one group per method, a bar per class, the method's average as a black line across its group.
For 100 or 200 classes, each method's per-class accuracies sorted from the worst class up, the worst 10% shaded."""
from typing import List, Optional, Sequence

import numpy as np

from evaluation.per_class import WORST_FRACTION_PERCENT, worst_count
from evaluation.protocols import PROTOCOLS, TITLES

from .fairness import per_class_accuracies, result_entries
from .figures import DPI, SIZE, WIDE, plt, save
from .tables import Table

MOST_BARS = 20  # classes drawn as bars; beyond, sorted curves


def mean_per_class(models: Sequence[Sequence[Optional[float]]]) -> List[Optional[float]]:
    """Per class, the mean over the models (seeds) that have examples of it."""
    means = []
    for values in zip(*models):
        known = [v for v in values if v is not None]
        means.append(sum(known) / len(known) if known else None)
    return means


def series_of(table: Table, attack: str):
    """(row, per-class mean accuracies, seeds, class names) of each row with per-class counts of `attack`."""
    found = []
    for row in table.rows:
        models = [a for a in map(per_class_accuracies, result_entries(row, table.eps_255, attack)) if a is not None]
        if models:
            names = next((r.get("class_names") for r in row.reports if r.get("class_names")), None)
            found.append((row, mean_per_class(models), len(models), names))
    return found


def per_class_figures(tables: Sequence[Table], folder: str) -> List[str]:
    written = []
    for table in tables:
        attack = PROTOCOLS[table.protocol].pgd
        series = series_of(table, attack)
        if not series:
            continue
        classes = len(series[0][1])
        title = (f"{table.dataset}, {table.model}: {TITLES[attack]} accuracy per class at eps {table.eps_255:g}/255 "
                 f"({table.protocol} protocol)")
        if classes <= MOST_BARS:
            fig = bars(table, attack, series, classes)
        else:
            fig = sorted_curves(attack, series, classes)
        fig.axes[0].set_title(title, fontsize=9)
        written += save(fig, folder, f"per_class-{table.name}")  # one per table: radius and selection too
    return written


def bars(table: Table, attack: str, series, classes: int):
    fig, ax = plt.subplots(figsize=WIDE, dpi=DPI, constrained_layout=True)
    cmap = plt.get_cmap("tab10" if classes <= 10 else "tab20")
    width = 0.8 / classes
    names = next((s[3] for s in series if s[3]), None) or [f"class {i}" for i in range(classes)]
    for position, (row, means, seeds, _) in enumerate(series):
        left = position - 0.4
        for index, value in enumerate(means):
            if value is not None:
                ax.bar(left + (index + 0.5) * width, value, width, color=cmap(index % cmap.N),
                       label=names[index] if position == 0 else None)
        average = row.cells[attack].mean
        if average is not None:
            ax.hlines(average, left, left + 0.8, color="black", linewidth=1.2,
                      label="average (all images)" if position == 0 else None)
    ax.set_xticks(range(len(series)), [f"{row.label} ({seeds})" for row, _, seeds, _ in series], fontsize=7)
    ax.set(xlabel="method (seeds); each class's bar is its mean over the seeds",
           ylabel=f"{TITLES[attack]} accuracy (%)",
           xlim=(-0.6, len(series) - 0.4))
    top = max(v for _, means, _, _ in series for v in means if v is not None)
    ax.set_ylim(0, max(top * 1.3, 1.0))  # room for the legend above the bars
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=6, ncol=min(classes + 1, 6), loc="upper center")
    return fig


def sorted_curves(attack: str, series, classes: int):
    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI, constrained_layout=True)
    cmap = plt.get_cmap("tab10")
    shown = 0
    for i, (row, means, seeds, _) in enumerate(series):
        values = np.sort(np.array([v for v in means if v is not None], dtype=float))
        shown = max(shown, len(values))
        ax.plot(np.arange(1, len(values) + 1), values, color=cmap(i % 10), label=f"{row.label} ({seeds})")
    worst = worst_count(shown)
    ax.axvspan(0.5, worst + 0.5, color="grey", alpha=0.15, label=f"worst {WORST_FRACTION_PERCENT}% ({worst} classes)")
    ax.set(xlabel=f"class, sorted from the worst (of {classes})", ylabel=f"{TITLES[attack]} accuracy (%)",
           xlim=(0.5, shown + 0.5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="method (seeds)", title_fontsize=7)
    return fig
