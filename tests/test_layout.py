"""The design card's layout holds: its names at the root, the three leaf folders usable on their
own, datasets out of the code, and loud duplicate registration in the tables."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO

CARD = ("main.py", "main_tiny.py", "main_eval.py", "main_eval_tinyimagenet.py", "models", "attacks", "losses",
        "losses/dgad.py", "data", "checkpoints", "requirements.txt", "README.md", "tests")
LEAVES = ("models", "attacks", "losses")
ALLOWED = {"torch", "numpy", *LEAVES}


def test_the_cards_names_are_at_the_root_and_importable():
    assert [name for name in CARD if not os.path.exists(os.path.join(REPO, name))] == []
    from attacks import pgd  # noqa: F401
    from losses.dgad import dgad_loss  # noqa: F401
    from models import build_model  # noqa: F401
    assert not os.path.exists(os.path.join(REPO, "advkd"))  # no second copy under another package


def imported_roots(folder):
    for root, _, files in os.walk(os.path.join(REPO, folder)):
        for name in files:
            if name.endswith(".py"):
                tree = ast.parse(open(os.path.join(root, name)).read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        yield name, [alias.name.split(".")[0] for alias in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        yield name, [node.module.split(".")[0]]


@pytest.mark.parametrize("folder", LEAVES)
def test_leaf_folders_import_only_torch_numpy_the_standard_library_and_each_other(folder):
    foreign = {(name, module) for name, modules in imported_roots(folder) for module in modules
               if module not in ALLOWED and module not in sys.stdlib_module_names}
    assert foreign == set()


@pytest.mark.slow  # a subprocess
def test_the_three_leaf_folders_run_copied_into_an_empty_directory(tmp_path):
    for folder in LEAVES:
        shutil.copytree(os.path.join(REPO, folder), tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "import torch\n"
        "from attacks import cw_l2, fgsm, kl_sum, pgd\n"
        "from losses.dgad import dgad_loss\n"
        "from models import build_model\n"
        "torch.manual_seed(0)\n"
        "student, teacher = build_model('resnet18', 10).eval(), build_model('wideresnet10_1', 10).eval()\n"
        "x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])\n"
        "x_adv = pgd(student, x, y, eps=8 / 255, step_size=2 / 255, steps=2, loss_fn=kl_sum, init='gauss',"
        " target=teacher)\n"
        "assert 0 < (x_adv - x).abs().max() <= 8 / 255 + 1e-6\n"
        "assert (fgsm(student, x, y, eps=8 / 255) - x).abs().max() <= 8 / 255 + 1e-6\n"
        "assert cw_l2(student, x, y, max_iterations=2).shape == x.shape\n"
        "loss = dgad_loss(student(x), student(x_adv), teacher(x), teacher(x_adv), y, beta=5.0, batch_size=2)\n"
        "assert torch.isfinite(loss)\n"
        "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('runtime', 'data', 'methods', 'training', 'evaluation', 'benchmarks')))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=dict(env, OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert sorted(os.listdir(tmp_path)) == sorted(LEAVES)  # nothing of the project came along


def test_data_holds_code_only_and_the_default_data_dir_is_its_own_folder():
    files = [name for _, _, names in os.walk(os.path.join(REPO, "data")) for name in names
             if "__pycache__" not in name and not name.endswith(".pyc")]
    assert files and all(name.endswith(".py") for name in files)
    from data import DEFAULT_DATA_DIR
    from evaluation.cli import build_parser as evaluation_parser
    from training.config import build_parser as training_parser
    import main
    import main_eval
    assert DEFAULT_DATA_DIR == "./datasets"
    for parser in (training_parser(main.DEFAULTS, "t"), evaluation_parser(main_eval.DEFAULTS, "t")):
        assert parser.get_default("data_dir") == DEFAULT_DATA_DIR
    assert "/datasets/" in open(os.path.join(REPO, ".gitignore")).read().split()


def test_the_model_table_refuses_a_name_twice():
    from models import MODELS, model_table
    assert list(MODELS) == ["resnet18", "mobilenetV2", "presnet18"]
    with pytest.raises(ValueError, match="'resnet18' is registered twice"):
        model_table([("resnet18", None), ("resnet18", None)])
    with pytest.raises(ValueError, match="'wideresnet16_2' is registered twice"):  # parsed from its name already
        model_table([("wideresnet16_2", None)])
