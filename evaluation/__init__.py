"""Robustness evaluation (docs/methods.md section 7): accuracy under attack and feature moments
(accuracy.py), the two protocols (protocols.py), AutoAttack through its reference package
(autoattack.py), sanity checks (checks.py), the JSON report (report.py), and the command line of
main_eval.py and main_eval_tinyimagenet.py (cli.py)."""
