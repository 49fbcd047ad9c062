"""main_report.py: the tables and figures of a set of runs, from their folders and evaluation reports."""
import argparse
import os
import sys
from typing import Optional, Sequence

from methods import method_names
from runtime.checkpoints import atomic_write_text
from runtime.errors import UserError, exit_on_user_error, require_255_units
from runtime.help import HelpFormatter

from .runs import find_runs, group_runs
from .tables import PUBLISHED, build_tables, csv_text, latex, load_published, markdown


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("inputs", nargs="+",
                   help="run folders, folders holding run folders (searched recursively), glob patterns, or "
                        "evaluation reports (JSON) of checkpoints trained elsewhere")
    p.add_argument("--out", default="report", help="folder for tables.md, tables.tex, tables.csv and the figures")
    p.add_argument("--eps", type=float, default=8, help="the tables' radius, in 1/255 units")
    p.add_argument("--checkpoint", default=None,
                   help="whose evaluation reports a run folder contributes (default: best_PGD10_acc_model.pth, as "
                        "the papers; best_clean_acc_model.pth for Natural training)")
    p.add_argument("--published", default=PUBLISHED, help="published numbers shown beside ours (JSON)")
    p.add_argument("--title", default=None, help="a heading for tables.md")
    p.add_argument("--no_figures", action="store_true", help="tables only")
    return p


def report(args) -> int:
    require_255_units("--eps", args.eps, "--eps 8")
    runs = find_runs(args.inputs, args.checkpoint)
    groups = group_runs(runs, method_names())
    try:
        published = load_published(args.published)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"--published {args.published}: not a table of published numbers ({exc})") from None
    tables = build_tables(groups, args.eps, published)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {args.out}: {exc.strerror}") from None
    evaluated = sum(1 for run in runs if run.reports)
    print(f"{len(runs)} runs in {len(groups)} groups; {evaluated} evaluated", flush=True)
    written = []
    if not args.no_figures:
        from .figures import FIGURES  # matplotlib: only when figures are drawn
        for draw in FIGURES:
            written += draw(groups, args.out)
    heading = f"# {args.title}\n\n" if args.title else ""
    text = markdown(tables) if tables else f"No evaluation report at eps {args.eps:g}/255 among these runs.\n"
    # tables.md last: reproduce.py takes it as the sign that the report is complete.
    for name, content in (("tables.tex", latex(tables)), ("tables.csv", csv_text(tables)),
                          ("tables.md", heading + text)):
        atomic_write_text(os.path.join(args.out, name), content)
        written.append(os.path.join(args.out, name))
    print(heading + text)
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    with exit_on_user_error():
        try:
            return report(build_parser().parse_args(argv))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
