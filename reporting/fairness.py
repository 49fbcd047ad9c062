"""Worst-class robustness tables, as the robust-fairness papers (Fair-ARD, ABSLD) print them: for each method
and attack, the average accuracy beside the worst class's, and for 100 or 200 classes the mean of the worst 10%
of the classes. Built from the main tables (reporting/tables.py: the same rows, runs and reports), each number
recomputed from a report's per-class counts (evaluation/per_class.py); a report written before those counts
existed shows an empty cell. Written as Markdown (in tables.md, under the main tables), LaTeX and CSV."""
import csv
import io
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from evaluation.per_class import class_accuracies, worst_class, worst_fraction
from evaluation.report import radius_key

from .tables import DASH, Cell, Row, Table, cell_text, header, latex_escape

HEADING = "## Worst-class robustness"


@dataclass
class FairnessRow:
    row: Row
    average: Dict[str, Cell]
    worst: Dict[str, Cell]  # per model its worst class's accuracy, then over seeds
    worst_fraction: Dict[str, Cell]  # per model the mean of its worst 10% of classes, then over seeds


@dataclass
class FairnessTable:
    table: Table
    attacks: List[str]
    num_classes: Optional[int]
    rows: List[FairnessRow]

    @property
    def fractions(self) -> bool:
        """Whether the worst 10% is more than the worst class (100 or 200 classes): a column of its own."""
        return self.num_classes is not None and self.num_classes > 10

    def caption(self) -> str:
        table = self.table
        worst10 = ("; Worst 10%: the mean accuracy of the 10% of its classes it classifies worst" if self.fractions
                   else "")
        return (f"{table.dataset}, {table.model} students: average (Avg) and worst-class (Worst) accuracy (%) under "
                f"the {table.protocol} protocol at eps {table.eps_255:g}/255, of the checkpoints of table {table.name} "
                f"above ({table.selection}); Worst: the "
                f"accuracy of the class each model classifies worst{worst10}; mean ± standard deviation over seeds, "
                f"the seed count in parentheses; {DASH}: no per-class counts in the report (evaluated before "
                f"main_eval.py recorded them: evaluate the checkpoint again).")


def result_entries(row: Row, eps_255: float, attack: str) -> List[Dict]:
    """The row's result entries of `attack` at the radius, one per evaluated run."""
    key = radius_key(eps_255)
    return [report["radii"][key]["results"][attack] for report in row.reports
            if attack in report["radii"][key]["results"]]


def per_class_accuracies(entry: Dict) -> Optional[List[Optional[float]]]:
    """Each class's accuracy from a result entry's counts; None for an entry without them."""
    per_class = entry.get("per_class")
    return None if per_class is None else class_accuracies(per_class["correct"], per_class["n"])


def fairness_row(table: Table, row: Row, attacks: Sequence[str]) -> FairnessRow:
    average, worst, fraction = {}, {}, {}
    for attack in attacks:
        classes = [a for a in map(per_class_accuracies, result_entries(row, table.eps_255, attack)) if a is not None]
        classes = [a for a in classes if worst_class(a) is not None]
        average[attack] = row.cells[attack]
        worst[attack] = Cell([a[worst_class(a)] for a in classes])
        fraction[attack] = Cell([worst_fraction(a)["accuracy"] for a in classes])
    return FairnessRow(row, average, worst, fraction)


def class_count(table: Table) -> Optional[int]:
    """How many classes the table's reports count (their per-class lists' length); None without any."""
    for row in table.rows:
        for report in row.reports:
            for entry in report["radii"][radius_key(table.eps_255)]["results"].values():
                if entry.get("per_class") is not None:
                    return len(entry["per_class"]["n"])
    return None


def build_fairness_tables(tables: Sequence[Table]) -> List[FairnessTable]:
    """One worst-class table per main table, over the attacks some row has a number for."""
    found = []
    for table in tables:
        attacks = [a for a in table.attacks if any(row.cells[a].n for row in table.rows)]
        found.append(FairnessTable(table, attacks, class_count(table),
                                   [fairness_row(table, row, attacks) for row in table.rows]))
    return found


def columns(table: FairnessTable) -> List[str]:
    names = ["Method"]
    for attack in table.attacks:
        names += [f"{header(attack)} Avg", f"{header(attack)} Worst"]
        names += [f"{header(attack)} Worst 10%"] if table.fractions else []
    return names


def row_cells(table: FairnessTable, row: FairnessRow, pm: str = "±") -> List[str]:
    cells = [row.row.label]
    for attack in table.attacks:
        cells += [cell_text(row.average[attack], pm), cell_text(row.worst[attack], pm)]
        cells += [cell_text(row.worst_fraction[attack], pm)] if table.fractions else []
    return cells


def markdown(tables: Sequence[FairnessTable]) -> str:
    """The section of tables.md under the main tables; '' when there is no table."""
    if not tables:
        return ""
    parts = [HEADING]
    for table in tables:
        head = columns(table)
        lines = [f"**{table.caption()}**", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join([":---"] + [":---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(row_cells(table, row)) + " |" for row in table.rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def latex(tables: Sequence[FairnessTable]) -> str:
    """Booktabs tables, as reporting/tables.py's, the Avg/Worst pair of each attack under one header."""
    parts = []
    for table in tables:
        width = 3 if table.fractions else 2
        names = [header(a) for a in table.attacks]
        sub = ["Avg", "Worst"] + (["Worst 10%"] if table.fractions else [])
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.caption())}}}",
                 rf"\label{{tab:fairness-{table.table.name}}}",
                 rf"\begin{{tabular}}{{l{'c' * (width * len(names))}}}", r"\toprule",
                 " & ".join(["Method"] + [rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(n)}}}" for n in names])
                 + r" \\",
                 "".join(rf"\cmidrule(lr){{{2 + width * i}-{1 + width * (i + 1)}}}" for i in range(len(names))),
                 " & ".join([""] + [latex_escape(s) for _ in names for s in sub]) + r" \\", r"\midrule"]
        lines += [" & ".join(latex_escape(c) for c in row_cells(table, row)) + r" \\" for row in table.rows]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + ("\n" if parts else "")


def csv_text(tables: Sequence[FairnessTable]) -> str:
    """fairness.csv: one line per row, every number unrounded: per attack the average's, the worst class's and
    the worst 10%'s mean, std and model count."""
    attacks = list(dict.fromkeys(a for t in tables for a in t.attacks))
    fields = ["table", "dataset", "model", "protocol", "eps_255", "method", "label", "num_classes"]
    for attack in attacks:
        for part in ("avg", "worst", "worst10"):
            fields += [f"{attack}_{part}_mean", f"{attack}_{part}_std", f"{attack}_{part}_n"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        t = table.table
        for row in table.rows:
            line = {"table": t.name, "dataset": t.dataset, "model": t.model, "protocol": t.protocol,
                    "eps_255": f"{t.eps_255:g}", "method": row.row.method, "label": row.row.label,
                    "num_classes": "" if table.num_classes is None else table.num_classes}
            for attack in table.attacks:
                for part, cell in (("avg", row.average[attack]), ("worst", row.worst[attack]),
                                   ("worst10", row.worst_fraction[attack])):
                    line.update({f"{attack}_{part}_mean": "" if cell.mean is None else cell.mean,
                                 f"{attack}_{part}_std": "" if cell.std is None else cell.std,
                                 f"{attack}_{part}_n": cell.n})
            writer.writerow(line)
    return out.getvalue()
