"""Tables in the DGAD paper's layout (rows: methods; columns: Clean, FGSM, PGD, CW, AA), one per
dataset, student and protocol, each cell the mean ± standard deviation over seeds with the seed
count; the published numbers of the same setting beside ours, with the difference. Written as
Markdown, LaTeX (booktabs) and CSV."""
import csv
import io
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from evaluation.protocols import PROTOCOLS, TITLES
from evaluation.report import is_number, load_json, radius_key

from training.selection import selection_text

from .runs import Group

PUBLISHED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published.json")
HEADERS = {"natural": "Clean", "aa": "AA"}  # the papers' column names; the rest as main_eval prints them
DASH = "–"
PUBLISHED_NAMES = ("dataset", "model", "protocol", "source")


@dataclass
class Cell:
    values: List[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return sum(self.values) / self.n if self.values else None

    @property
    def std(self) -> Optional[float]:
        """The sample standard deviation (n - 1); None for fewer than two seeds."""
        if self.n < 2:
            return None
        mean = self.mean
        return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (self.n - 1))


@dataclass
class Row:
    label: str
    method: str
    seeds: int
    cells: Dict[str, Cell]
    published: Dict[str, float] = field(default_factory=dict)
    reports: List[Dict] = field(default_factory=list)  # its runs' reports the cells come from (reporting/fairness.py)


@dataclass
class Table:
    dataset: str
    model: str
    protocol: str
    eps_255: float
    teachers: List[str]
    n_examples: List[int]
    attacks: List[str]
    rows: List[Row]
    published_source: Optional[str] = None
    published_attacks: List[str] = field(default_factory=list)
    # How every row's runs chose the checkpoint they report: on the test set (0) or on this many held-out
    # training images (--val_images). Runs chosen another way are in another table, never in a row of this one.
    val_images: int = 0

    @property
    def selection(self) -> str:
        return selection_text(self.val_images)

    @property
    def name(self) -> str:
        held_out = f"-val{self.val_images}" if self.val_images else ""
        return f"{self.dataset}-{self.model}-{self.protocol}-eps{self.eps_255:g}{held_out}"

    def caption(self) -> str:
        teachers = f" (the distilled ones from {', '.join(self.teachers)})" if self.teachers else ""
        images = ("the whole test set" if not self.n_examples else
                  f"the first {'/'.join(map(str, self.n_examples))} test images")
        text = (f"{self.dataset}, {self.model} students{teachers}: accuracy (%) under the {self.protocol} "
                f"protocol ({PROTOCOLS[self.protocol].description}) at eps {self.eps_255:g}/255, on {images}; "
                f"mean ± standard deviation over seeds, the seed count in parentheses. Checkpoints "
                + (f"{self.selection} held out of training; the test set only measured them." if self.val_images
                   else "selected on test, as the papers do (the test set chose the epoch it then measures)."))
        if self.published_source:
            text += f" Published: {self.published_source}; Δ = ours − published."
        return text


def distilled_from(config: Dict) -> Optional[str]:
    """The teacher a run distilled from: a run folder's config.json names the teacher's file hash
    only when the method read one (every config names a --teacher_model); a report's labels say."""
    if "teacher_sha256" in config:
        return config["teacher_model"] if config["teacher_sha256"] else None
    return config.get("teacher_model")


def load_published(path: str = PUBLISHED) -> List[Dict]:
    """The published tables in `path`; ValueError naming the first entry that is not one."""
    data = load_json(path)
    tables = data.get("tables") if isinstance(data, dict) else None
    if not isinstance(tables, list):
        raise ValueError('no "tables" list')
    for i, entry in enumerate(tables):
        numbers = entry.get("numbers") if isinstance(entry, dict) else None
        if not (isinstance(numbers, dict) and all(isinstance(entry.get(k), str) for k in PUBLISHED_NAMES)
                and is_number(entry.get("eps_255"))
                and all(isinstance(row, dict) and all(is_number(v) for v in row.values()) for row in numbers.values())):
            raise ValueError(f"tables[{i}] is not an object with {', '.join(PUBLISHED_NAMES)}, a numeric eps_255 and "
                             f"numbers {{method: {{attack: accuracy}}}}")
    return tables


def published_for(table: Table, published: Sequence[Dict]) -> Optional[Dict]:
    for entry in published:
        if (entry["dataset"], entry["model"], entry["protocol"]) == (table.dataset, table.model, table.protocol) \
                and float(entry["eps_255"]) == table.eps_255 \
                and (not table.teachers or entry.get("teacher_model") in table.teachers):
            return entry
    return None


def build_tables(groups: Sequence[Group], eps_255: float = 8, published: Sequence[Dict] = ()) -> List[Table]:
    """One table per (dataset, student, protocol, selection) that some group was evaluated under at `eps_255`."""
    key = radius_key(eps_255)
    tables: Dict[tuple, Table] = {}
    for group in groups:
        for protocol in PROTOCOLS:
            reports = [run.reports[protocol] for run in group.runs
                       if protocol in run.reports and key in run.reports[protocol].get("radii", {})]
            radii = [report["radii"][key] for report in reports]
            if not radii:
                continue
            setting = (group.config.get("dataset"), group.config.get("model"), protocol, group.val_images)
            table = tables.get(setting)
            if table is None:
                table = tables[setting] = Table(*setting[:3], eps_255, [], [], list(PROTOCOLS[protocol].attacks), [],
                                                val_images=group.val_images)
            cells = {attack: Cell([r["results"][attack]["accuracy"] for r in radii if attack in r["results"]])
                     for attack in table.attacks}
            table.rows.append(Row(group.label, group.method, len(radii), cells, reports=reports))
            for run in group.runs:
                report = run.reports.get(protocol)
                if report and key in report.get("radii", {}) and report["n_examples"] not in table.n_examples:
                    table.n_examples.append(report["n_examples"])
            teacher = distilled_from(group.config)
            if teacher and teacher not in table.teachers:
                table.teachers.append(teacher)
    for table in tables.values():
        entry = published_for(table, published)
        if entry is not None:
            table.published_source = entry["source"]
            table.published_attacks = [a for a in table.attacks if any(a in v for v in entry["numbers"].values())]
            for row in table.rows:
                row.published = dict(entry["numbers"].get(row.method, {}))
    return list(tables.values())


def number(value: Optional[float]) -> str:
    return DASH if value is None else f"{value:.2f}"


def cell_text(cell: Cell, pm: str = "±") -> str:
    if cell.n == 0:
        return DASH
    if cell.std is None:
        return f"{cell.mean:.2f} ({cell.n})"
    return f"{cell.mean:.2f} {pm} {cell.std:.2f} ({cell.n})"


def delta(row: Row, attack: str) -> Optional[float]:
    cell, theirs = row.cells[attack], row.published.get(attack)
    return None if cell.n == 0 or theirs is None else cell.mean - theirs


def signed(value: Optional[float], minus: str = "−") -> str:
    if value is None:
        return DASH
    text = f"{value:+.2f}"
    return text.replace("-", minus) if value < 0 else text


def header(attack: str) -> str:
    return HEADERS.get(attack, TITLES[attack])


def columns(table: Table) -> List[str]:
    names = ["Method"] + [header(a) for a in table.attacks]
    for attack in table.published_attacks:
        names += [f"{header(attack)} (published)", f"Δ {header(attack)}"]
    return names


def row_cells(table: Table, row: Row, pm: str = "±", minus: str = "−") -> List[str]:
    cells = [row.label] + [cell_text(row.cells[a], pm) for a in table.attacks]
    for attack in table.published_attacks:
        cells += [number(row.published.get(attack)), signed(delta(row, attack), minus)]
    return cells


def markdown(tables: Sequence[Table]) -> str:
    parts = []
    for table in tables:
        head = columns(table)
        lines = [f"**{table.caption()}**", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join([":---"] + [":---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(row_cells(table, row)) + " |" for row in table.rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    text = "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)
    return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("−", "$-$").replace("–", "--")


def latex(tables: Sequence[Table]) -> str:
    """Booktabs tables, one table environment each, ready to \\input (needs \\usepackage{booktabs})."""
    parts = []
    for table in tables:
        head = columns(table)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.caption())}}}",
                 rf"\label{{tab:{table.name}}}", rf"\begin{{tabular}}{{l{'c' * (len(head) - 1)}}}", r"\toprule",
                 " & ".join(latex_escape(h) for h in head) + r" \\", r"\midrule"]
        lines += [" & ".join(latex_escape(c) for c in row_cells(table, row)) + r" \\" for row in table.rows]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def csv_text(tables: Sequence[Table]) -> str:
    """One line per table row, every number unrounded: mean, std and seed count per attack."""
    attacks = list(dict.fromkeys(a for t in tables for a in t.attacks))
    fields = ["table", "dataset", "model", "protocol", "eps_255", "selection", "method", "label", "seeds"]
    for attack in attacks:
        fields += [f"{attack}_mean", f"{attack}_std", f"{attack}_n", f"{attack}_published", f"{attack}_delta"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        for row in table.rows:
            line = {"table": table.name, "dataset": table.dataset, "model": table.model, "protocol": table.protocol,
                    "eps_255": f"{table.eps_255:g}", "selection": table.selection, "method": row.method,
                    "label": row.label, "seeds": row.seeds}
            for attack, cell in row.cells.items():
                line.update({f"{attack}_mean": "" if cell.mean is None else cell.mean,
                             f"{attack}_std": "" if cell.std is None else cell.std, f"{attack}_n": cell.n,
                             f"{attack}_published": row.published.get(attack, ""),
                             f"{attack}_delta": "" if delta(row, attack) is None else delta(row, attack)})
            writer.writerow(line)
    return out.getvalue()
