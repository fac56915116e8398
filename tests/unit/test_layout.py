"""The code's shape, checked: imports point inward, no import circles, model.json has one writer,
no code edits sys.path, and test modules share helpers through tests/helpers.py only."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from helpers import REPO_ROOT

# Where each top-level name lives. The function's modules are flat in the Lambda image (app, api_*).
PACKAGES = ("lungscan", "lungscan_client", "training", "infrastructure")
FUNCTION_DIR = REPO_ROOT / "functions" / "classifier"
FUNCTION_MODULES = {path.stem for path in FUNCTION_DIR.glob("*.py")}


def module_name(path: Path) -> str:
    if path.parent == FUNCTION_DIR:
        return path.stem
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> dict[str, Path]:
    files = [path for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py")]
    scripts = [*(REPO_ROOT / "benchmarks").glob("*.py"), *(REPO_ROOT / "events").glob("*.py")]
    return {module_name(path): path for path in [*files, *FUNCTION_DIR.glob("*.py"), *scripts]}


MODULES = source_files()


def imported(path: Path) -> set[str]:
    """Every project module ``path`` imports, anywhere in it (functions and TYPE_CHECKING blocks too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    found = set()
    for name in names:
        while name and name not in MODULES:  # `lungscan.bundle.files.MODEL_FILE` -> `lungscan.bundle.files`
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


GRAPH = {name: imported(path) - {name} for name, path in MODULES.items()}


def layer(module: str) -> str:
    return "function" if module in FUNCTION_MODULES else module.split(".")[0]


def test_the_checker_sees_the_whole_tree():
    assert {"lungscan.bundle.store", "lungscan.uploads", "training.gate.fit", "app", "history_api"} <= set(MODULES)
    assert "lungscan.bundle.files" in GRAPH["lungscan.model.runtime"]
    assert "training.measure.evaluate" in GRAPH["training.cli"]  # `from training.measure import evaluate`


def test_there_are_no_import_circles():
    circles = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_dependencies_point_inward():
    allowed = {
        "lungscan": {"lungscan"},
        "lungscan_client": {"lungscan_client"},
        "function": {"function", "lungscan"},
        "training": {"training", "lungscan"},
        "infrastructure": {"infrastructure", "lungscan", "training", "function"},
        "benchmarks": {"benchmarks", "infrastructure", "lungscan", "function"},
        "events": {"infrastructure"},
    }
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if layer(target) not in allowed[layer(module)]
    )
    assert wrong == []


def test_package_init_files_stay_thin():
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name.count(".") >= 1:
            assert GRAPH[name] == set(), f"{path} imports: keep package __init__ files to a docstring"


def test_modules_stay_short():
    # About 400 lines: a module past that holds two jobs.
    code = {name: path for name, path in MODULES.items() if layer(name) not in ("benchmarks", "events")}
    long = {name: n for name, path in code.items() if (n := len(path.read_text().splitlines())) > 420}
    assert long == {}


def test_model_json_is_written_by_the_bundle_package_alone():
    # Written: anything that writes to a path built from the metadata file's name, spelled or imported.
    writes = re.compile(r"(METADATA_FILE|model\.json[\"'])\)?\s*\)?\.(write_text|write_bytes|open)\(|json\.dump\(")
    writers = sorted(
        name
        for name, path in MODULES.items()
        if not name.startswith("lungscan.bundle.")
        and writes.search(path.read_text())
        and "model.json" in path.read_text()
    )
    assert writers == []


def test_each_bundle_file_name_is_spelled_in_the_bundle_package_alone():
    spelled = re.compile(r"[\"'](model\.h5|model\.onnx|model\.json|MODEL_CARD\.md|split\.json|smoke\.npz)[\"']")
    found = sorted(
        f"{name}: {match}"
        for name, path in MODULES.items()
        if not name.startswith("lungscan.bundle.")
        for match in spelled.findall(path.read_text())
    )
    assert found == []


# ---------------------------------------------------------------- plumbing

# Where the import path comes from: pyproject.toml's pytest `pythonpath`, `python -m` from the repository
# root, and PYTHONPATH in the environment of the processes the code starts. Read as text, so that code
# inside a string (a snippet a test runs with `python -c`) counts too.
SYS_PATH_EDIT = re.compile(
    r"\bsys\s*\.\s*path\s*(\.\s*(insert|append|extend|remove|pop|clear)\s*\(|(\[[^\]]*\]\s*)?\+?=(?!=))"
    r"|\bfrom\s+sys\s+import\b.*\bpath\b|\bsite\s*\.\s*addsitedir\s*\("
)
SKIPPED_FOLDERS = {"build", "node_modules", "__pycache__"}


def repository_python_files() -> list[Path]:
    """Every .py file of the checkout, outside hidden folders (.venv, .venv-sam, .aws-sam, .git), build/ and
    node_modules/."""
    found = []
    for folder, subfolders, files in os.walk(REPO_ROOT):
        subfolders[:] = [name for name in subfolders if not name.startswith(".") and name not in SKIPPED_FOLDERS]
        found += [Path(folder) / name for name in files if name.endswith(".py")]
    return sorted(found)


def test_no_code_edits_the_import_path():
    files = repository_python_files()
    assert {REPO_ROOT / "tests" / "conftest.py", REPO_ROOT / "benchmarks" / "bench_predict.py"} <= set(files)
    assert not any(".venv" in path.parts for path in files)
    for edit in (".insert(0, root)", "[:0] = [root]", ".append(root)", " += [root]", "[0] = root"):
        assert SYS_PATH_EDIT.search(f"import sys\nsys.path{edit}\n"), edit
    assert SYS_PATH_EDIT.search(" ".join(["from", "sys", "import", "argv,", "path"]))
    assert SYS_PATH_EDIT.search("site" + ".addsitedir(root)")
    assert not SYS_PATH_EDIT.search("if root not in sys.path or sys.path == []:")
    edits = sorted(
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SYS_PATH_EDIT.search(line)
    )
    assert edits == []


def imported_names(tree: ast.AST) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``tree`` names, relative ones included."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            if node.module is None:  # `from . import test_page`
                names.update(alias.name for alias in node.names)
    return names


def test_test_modules_share_helpers_through_helpers_py_not_through_each_other():
    """A test module imports shared helpers from tests/helpers.py (fixtures come from conftest.py by
    name), never from another test module or from a conftest."""

    def is_test_module(name: str) -> bool:
        return any(part.startswith("test_") or part == "conftest" for part in name.split("."))

    assert is_test_module("test_core") and is_test_module("conftest") and is_test_module("browser.test_page")
    assert not is_test_module("helpers") and not is_test_module("training.measure.evaluate")
    wrong = sorted(
        f"{path.relative_to(REPO_ROOT)} imports {name}"
        for path in (REPO_ROOT / "tests").rglob("*.py")
        for name in imported_names(ast.parse(path.read_text()))
        if is_test_module(name)
    )
    assert wrong == []
