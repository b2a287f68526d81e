"""Imports go one way: ui -> app -> engine.protocol. The GUI process never loads torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(folder: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / folder).glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[path.name] = names
    return found


def test_gui_side_imports_no_torch():
    gui = [f"{p.parent.name}.{p.stem}" for d in ("app", "ui") for p in (ROOT / d).glob("*.py")]
    code = (
        f"import sys, importlib; [importlib.import_module(m) for m in {sorted(gui)!r}];"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers')))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_app_has_no_widgets_and_engine_knows_no_gui():
    for name, modules in imported_modules("app").items():
        assert not any("QtWidgets" in m for m in modules), name
        assert not any(m.split(".")[0] in ("torch", "ui") for m in modules), name
        engine_parts = {m for m in modules if m.startswith("engine")}
        torch_free = {"engine.protocol", "engine.errors", "engine.imagefile", "engine"}
        torch_free |= {"engine.masking", "engine.buckets", "engine.args"}  # numpy, PIL only
        torch_free |= {"engine.batch", "engine.naming"}  # the pipeline only inside a function
        torch_free |= {"engine.download"}  # huggingface_hub and platformdirs only inside functions
        assert engine_parts <= torch_free, (name, engine_parts)
    for name, modules in imported_modules("engine").items():
        assert not any(m.split(".")[0] in ("app", "ui", "PySide6") for m in modules), name


def test_engine_package_init_is_empty():
    assert (ROOT / "engine" / "__init__.py").read_text().strip() == ""
