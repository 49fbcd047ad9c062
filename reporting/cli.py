"""main_report.py: the tables and figures of a set of runs, from their folders and evaluation reports."""
import argparse
import os
import sys
from typing import Optional, Sequence

from methods import method_names
from runtime.checkpoints import atomic_write_text
from evaluation.report import check_radius
from runtime.errors import OneLineParser, UserError, exit_on_user_error, warn
from runtime.help import HelpFormatter

from . import fairness
from .runs import LeftOut, find_runs, group_runs
from .tables import PUBLISHED, build_tables, csv_text, latex, load_published, markdown


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("inputs", nargs="+",
                   help="run folders, folders holding run folders (searched recursively), glob patterns, or "
                        "evaluation reports (JSON) of checkpoints trained elsewhere")
    p.add_argument("--out", default="report",
                   help="folder for tables.md, tables.tex, tables.csv, fairness.csv (worst-class accuracy) and the "
                        "figures")
    p.add_argument("--eps", type=float, default=8, help="the tables' radius, in 1/255 units")
    p.add_argument("--checkpoint", default=None,
                   help="whose evaluation reports a run folder contributes (default: best_PGD10_acc_model.pth, as "
                        "the papers; best_clean_acc_model.pth for Natural training; SAAD's and PeerAiD's SWA "
                        "average); e.g. best_PGD10_acc_ema_model.pth or ema_model.pth for the --ema average, "
                        "best_PGD10_acc_swa_model.pth or swa_model.pth for the --swa_start one")
    p.add_argument("--published", default=PUBLISHED, help="published numbers shown beside ours (JSON)")
    p.add_argument("--title", default=None, help="a heading for tables.md")
    p.add_argument("--no_figures", action="store_true", help="tables only")
    return p


def report(args) -> int:
    check_radius("--eps", args.eps, "--eps 8")
    found = find_runs(args.inputs, args.checkpoint)
    for item in found.left_out:  # each input not used, named before anything is written
        warn(str(item))
    if not found.runs:
        raise UserError(f"no readable run folder or evaluation report under {', '.join(args.inputs)}: "
                        f"{left_out_text(found.left_out)} (named above)")
    runs = found.runs
    groups = group_runs(runs, method_names())
    try:
        published = load_published(args.published)
    except (OSError, ValueError) as exc:
        raise UserError(f"--published {args.published}: not a table of published numbers ({exc})") from None
    tables = build_tables(groups, args.eps, published)
    worst_class_tables = fairness.build_fairness_tables(tables)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {args.out}: {exc.strerror}") from None
    evaluated = sum(1 for run in runs if run.reports)
    skipped = f"; {left_out_text(found.left_out)}" if found.left_out else ""
    print(f"{len(runs)} runs in {len(groups)} groups; {evaluated} evaluated{skipped}", flush=True)
    written = []
    if not args.no_figures:
        from .figures import FIGURES  # matplotlib: only when figures are drawn
        from .per_class_figures import per_class_figures
        for draw in FIGURES:
            written += draw(groups, args.out)
        written += per_class_figures(tables, args.out)
    heading = f"# {args.title}\n\n" if args.title else ""
    text = markdown(tables) if tables else f"No evaluation report at eps {args.eps:g}/255 among these runs.\n"
    text += ("\n" + fairness.markdown(worst_class_tables)) if worst_class_tables else ""
    text += left_out_markdown(found.left_out)
    # tables.md last: reproduce.py takes it as the sign that the report is complete.
    for name, content in (("tables.tex", latex(tables) + fairness.latex(worst_class_tables)
                           + left_out_comment(found.left_out)),
                          ("tables.csv", csv_text(tables)), ("fairness.csv", fairness.csv_text(worst_class_tables)),
                          ("tables.md", heading + text)):
        atomic_write_text(os.path.join(args.out, name), content)
        written.append(os.path.join(args.out, name))
    print(heading + text)
    for path in written:
        print(f"wrote {path}")
    return 0


def left_out_text(left_out: Sequence[LeftOut]) -> str:
    return f"{len(left_out)} input{'s' if len(left_out) != 1 else ''} left out"


def left_out_markdown(left_out: Sequence[LeftOut]) -> str:
    """The inputs the tables do not use, under them: a number in a table is only ever of its run."""
    if not left_out:
        return ""
    lines = [f"\n**{left_out_text(left_out)}** (unreadable, or not of their run's checkpoint):\n"]
    lines += [f"- `{item.path}`: {item.reason}; {item.consequence}" for item in left_out]
    return "\n".join(lines) + "\n"


def left_out_comment(left_out: Sequence[LeftOut]) -> str:
    return "".join(f"% {item}\n" for item in left_out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    with exit_on_user_error():
        try:
            return report(build_parser().parse_args(argv))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
