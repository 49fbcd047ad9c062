"""The docs stay true to the code: every relative link resolves, every `--flag` of a command in README.md and
docs/*.md is an option of the parser of the script that command runs, every `--method` and `--preset` named exists,
and every docs page is linked from the README. Each checker is also run on a broken snippet, so a check that stops
catching what it is for fails too."""
import glob
import os
import re
import shlex

import pytest

from helpers import REPO

DOCUMENTS = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
SCRIPTS = ("main.py", "main_tiny.py", "main_eval.py", "main_eval_tinyimagenet.py", "reproduce.py", "main_report.py",
           "bench.py")
# Prose tables whose first column lists one script's flags (`| `--flag` | ... |` under a `| flag |` header).
FLAG_TABLES = {"docs/training.md": "main.py", "docs/reproducing.md": "reproduce.py"}
# Prose paragraphs that list one script's flags as `--flag` code spans: (document, how the paragraph starts, script).
FLAG_PARAGRAPHS = [("docs/evaluation.md", "Flags: ", "main_eval.py"),
                   ("docs/performance.md", "Training options: ", "main.py")]
FENCE = re.compile(r"^\s*(```|~~~)")


def read(document):
    with open(os.path.join(REPO, document), encoding="utf-8") as f:
        return f.read()


# --- the parsers, built as the scripts build them ----------------------------------------------------------------

def _options(parser):
    """The option strings a user may write: every action's, but for the ones hidden from --help (refused flags)."""
    import argparse
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


_PARSERS = {}


def script_options(script):
    if script not in _PARSERS:
        import importlib
        module = importlib.import_module(script[:-len(".py")])
        if script in ("main.py", "main_tiny.py"):
            from training.config import build_parser
            parser = build_parser(module.DEFAULTS, "")
        elif script in ("main_eval.py", "main_eval_tinyimagenet.py"):
            from evaluation.cli import build_parser
            parser = build_parser(module.DEFAULTS, module.DESCRIPTION)
        elif script == "reproduce.py":
            from pipeline.cli import build_parser
            parser = build_parser()
        elif script == "main_report.py":
            from reporting.cli import build_parser
            parser = build_parser()
        else:  # bench.py adds its own group to main.py's parser inside parse_args: keep the parser it builds
            built = []
            original = module.build_parser
            module.build_parser = lambda *a, **k: built.append(original(*a, **k)) or built[-1]
            try:
                module.parse_args([])
            finally:
                module.build_parser = original
            parser = built[0]
        _PARSERS[script] = _options(parser)
    return _PARSERS[script]


# --- what the documents say -------------------------------------------------------------------------------------

def split_fences(text):
    """(prose, code): the text outside fenced blocks (fenced lines blanked, so line numbers stay) and the blocks."""
    prose, blocks, block, inside = [], [], [], False
    for line in text.split("\n"):
        if FENCE.match(line):
            if inside:
                blocks.append("\n".join(block))
                block = []
            inside = not inside
            prose.append("")
        elif inside:
            block.append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def inline_code(prose):
    """Every `code span` of the prose, joined across the line breaks of its paragraph."""
    spans = []
    for paragraph in re.split(r"\n\s*\n", prose):
        spans += [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", paragraph)]
    return spans


def commands(text):
    """Command lines: each line of a fenced block (continuations joined) and each inline code span."""
    prose, blocks = split_fences(text)
    found = []
    for block in blocks:
        found += [line.strip() for line in block.replace("\\\n", " ").split("\n") if line.strip()]
    return found + inline_code(prose)


def tokens(command):
    try:
        return shlex.split(command.replace("[", " ").replace("]", " "), comments=True)
    except ValueError:  # an unbalanced quote in prose: whitespace is good enough
        return command.split()


def script_flags(command):
    """(script, [--flag, ...], {flag: value}) of a command that runs one of SCRIPTS, else None."""
    words = tokens(command)
    for i, word in enumerate(words):
        if os.path.basename(word) in SCRIPTS and (i == 0 or "=" not in word):
            rest = words[i + 1:]
            flags = [w.split("=")[0] for w in rest if w.startswith("--")]
            values = {w: rest[j + 1] for j, w in enumerate(rest[:-1]) if w.startswith("--")}
            return os.path.basename(word), flags, values
    return None


def unknown_flags(text):
    """'script --flag' for each flag of a command in text that the script's parser does not have."""
    bad = []
    for command in commands(text):
        parsed = script_flags(command)
        if parsed:
            script, flags, _ = parsed
            bad += [f"{script} {flag}  (in: {command})" for flag in flags if flag not in script_options(script)]
    return bad


def table_flag_cells(text):
    """`--flag` of the first cell of each row of a table headed `| flag |`."""
    prose, _ = split_fences(text)
    flags, in_table = [], False
    for line in prose.split("\n"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            in_table = False
        elif cells[0] == "flag":
            in_table = True
        elif in_table:
            flags += re.findall(r"`(--[A-Za-z0-9_-]+)", cells[0])
    return flags


def unknown_names(text):
    """--method and --preset values that name no method and no preset."""
    from methods import method_names
    presets = {os.path.basename(p)[:-len(".json")] for p in glob.glob(os.path.join(REPO, "presets", "*.json"))}
    bad = []
    for command in commands(text):
        words = tokens(command)
        for flag, value in zip(words, words[1:]):
            if flag == "--method" and not value.startswith(("<", "-")) and value not in method_names():
                bad.append(f"--method {value}  (in: {command})")
            if flag == "--preset" and not value.startswith(("<", "-")) and "/" not in value \
                    and not value.endswith(".json") and value not in presets:
                bad.append(f"--preset {value}  (in: {command})")
    return bad


def slug(heading):
    """GitHub's anchor of a heading: markup dropped, lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text):
    prose, _ = split_fences(text)
    seen, found = {}, set()
    for line in prose.split("\n"):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(text):
    prose, _ = split_fences(text)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)


def broken_links(document, text):
    bad = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(REPO, os.path.dirname(document), path)) if path \
            else os.path.join(REPO, document)
        if not os.path.exists(resolved):
            bad.append(f"{target} (no such file)")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(open(resolved, encoding="utf-8").read()):
            bad.append(f"{target} (no such heading)")
    return bad


# --- the checks -------------------------------------------------------------------------------------------------

def test_the_documents_are_found():
    assert "README.md" in DOCUMENTS and "docs/methods.md" in DOCUMENTS
    assert sum(len(commands(read(d))) for d in DOCUMENTS) > 50


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_flag_of_a_command_is_an_option_of_its_script(document):
    assert unknown_flags(read(document)) == []


@pytest.mark.parametrize("document", sorted(FLAG_TABLES))
def test_every_flag_of_a_flag_table_is_an_option_of_its_script(document):
    if not os.path.exists(os.path.join(REPO, document)):
        pytest.fail(f"{document} is missing")
    flags = table_flag_cells(read(document))
    script = FLAG_TABLES[document]
    assert [f for f in flags if f not in script_options(script)] == []


def paragraph_flags(text, start):
    """`--flag` code spans of the paragraph that starts with `start`."""
    prose, _ = split_fences(text)
    paragraphs = [p for p in re.split(r"\n\s*\n", prose) if p.lstrip().startswith(start)]
    assert len(paragraphs) == 1, f"no paragraph starting {start!r}"
    return re.findall(r"`(--[A-Za-z0-9_-]+)", paragraphs[0])


@pytest.mark.parametrize("document,start,script", FLAG_PARAGRAPHS)
def test_every_flag_of_a_flag_paragraph_is_an_option_of_its_script(document, start, script):
    flags = paragraph_flags(read(document), start)
    assert flags and [f for f in flags if f not in script_options(script)] == []


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_method_and_preset_named_exists(document):
    assert unknown_names(read(document)) == []


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_resolves(document):
    assert broken_links(document, read(document)) == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(t.partition("#")[0]) for t in links(read("README.md"))}
    assert [d for d in DOCUMENTS[1:] if os.path.normpath(d) not in linked] == []


def test_the_readme_is_short():
    assert len(read("README.md").split("\n")) <= 220


# --- the checkers catch what they are for ------------------------------------------------------------------------

def test_the_checks_catch_a_renamed_flag_a_wrong_name_and_a_broken_link():
    fenced = "```bash\npython main.py --method DGAD \\\n    --teacher_pth x.pt\n```\n"
    assert unknown_flags(fenced) == ["main.py --teacher_pth  (in: python main.py --method DGAD      --teacher_pth x.pt)"]
    assert unknown_flags("Run `python main_eval.py --model_path m.pt\n--epss 8` once.") != []
    assert unknown_flags("`torchrun --nproc_per_node 2 main.py --bs 64`") == []  # torchrun's flags are its own
    assert unknown_flags("`python bench.py --steps 3 --no_plain`") == []
    assert unknown_flags("`python bench.py --stepz 3`") != []
    assert unknown_flags("`python main_eval.py --steps 10`") != []  # accepted only to be refused with a pointer
    assert unknown_flags("`python reproduce.py --preset cifar10-mini --launcher slurm --gpu 2`") != []
    assert table_flag_cells("| flag | meaning |\n|---|---|\n| `--a`, `--b N` | x |\n") == ["--a", "--b"]
    assert unknown_names("`python main.py --method DGADD`") != []
    assert unknown_names("`python reproduce.py --preset cifar10-maxi`") != []
    assert unknown_names("`python reproduce.py --preset presets/any.json`") == []
    assert broken_links("README.md", "[a](docs/nowhere.md)") == ["docs/nowhere.md (no such file)"]
    assert broken_links("README.md", "[a](docs/methods.md#no-such-section)") != []
    assert broken_links("README.md", "[a](docs/methods.md#25-ablations)") == []
    assert broken_links("docs/methods.md", "[a](../README.md)") == []
    assert slug("3.11 IGDM, and the IGDM plug-in") == "311-igdm-and-the-igdm-plug-in"
    assert slug("The `cifar10-mini` table: the whole path") == "the-cifar10-mini-table-the-whole-path"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}
