"""main_report.py's parts: run folders and reports read and grouped (runs), the tables (tables) and
the figures (figures)."""
