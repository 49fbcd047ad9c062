"""Teachers a user can get by name: the zoo (zoo.json, zoo.py), its downloader (download.py), and any
RobustBench model (robustbench.py). See docs/teachers.md."""
