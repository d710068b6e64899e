"""The package's structure: no import cycle, no library module reaching up into the CLI, a fast CLI."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import keras_pneumonia

PACKAGE = Path(keras_pneumonia.__file__).parent
ENTRY_POINTS = {"cli", "__main__", "__init__"}  # the command line, and the package facade


def _imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "keras_pneumonia":
                parts = node.module.split(".")
                found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("keras_pneumonia.")}
        graph[path.stem] = {m for m in found if (PACKAGE / f"{m}.py").exists() and m != path.stem}
    return graph


def test_no_library_module_imports_the_cli():
    offenders = {m for m, deps in _imports().items() if "cli" in deps and m not in ENTRY_POINTS}
    assert not offenders, f"library modules importing the CLI: {sorted(offenders)}"


def test_the_imports_form_no_cycle():
    graph = _imports()
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                cycle = path[path.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # The layering the docs describe: decoding one image knows nothing of data sets,
    # models or figures; the file registry knows nothing of models.
    assert not graph["images"] & {"data", "models", "plots", "gradcam"}
    assert not graph["weights"] & {"models", "training", "data"}
    assert "data" not in graph["gradcam"]


def test_no_function_or_class_outgrows_one_job():
    """Issue 25's limits: functions under 120 lines, classes under 400 (an --init-weights option once broke it)."""
    too_long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            limit = {ast.FunctionDef: 120, ast.AsyncFunctionDef: 120, ast.ClassDef: 400}.get(type(node))
            if limit and node.end_lineno - node.lineno + 1 >= limit:
                too_long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not too_long, too_long


def test_help_and_version_do_not_import_tensorflow():
    code = (
        "import sys; sys.argv[0] = 'keras-pneumonia'\n"
        "from keras_pneumonia.cli import main\n"
        "from keras_pneumonia.cli import build_parser; build_parser()\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    for args in (["--version"], ["--help"]):
        run = subprocess.run([sys.executable, "-m", "keras_pneumonia", *args], capture_output=True, text=True)
        assert run.returncode == 0 and run.stderr == "", run.stderr
    assert run.stdout.startswith("usage: keras-pneumonia")


@pytest.mark.slow
def test_a_plain_import_registers_the_model_classes_with_keras():
    """Outside the CLI the whole API loads at import, so keras.saving.load_model knows PneumoniaCNN."""
    code = (
        "import keras_pneumonia, keras\n"
        "from keras_pneumonia.weights import bundled_path\n"
        "print(type(keras.saving.load_model(bundled_path('pneumonia_cnn_v1'))).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PneumoniaCNN"
