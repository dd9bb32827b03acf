"""The shape of the package: no import cycle, imports at the top (or a comment saying why not),
every product module importable on its own, and no product code leaning on the test equipment
in ``worker/devtools`` (except ``jobtracker demo``, which runs it)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Import name -> folder: the code, the installed package root, and the tables (which install as
#: ``jobtracker.models``; the repository keeps them in ``models/``).
PACKAGES = {"worker": "worker", "jobtracker": "jobtracker", "jobtracker.models": "models"}
DEVTOOLS = "worker.devtools"
#: The product modules allowed to import worker.devtools: the ``jobtracker demo`` narrative.
DEVTOOLS_ENTRY_POINTS = frozenset({"worker.cli.demo"})


def _module_name(package: str, folder: str, path: Path) -> str:
    parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(package, folder, path): path
        for package, folder in PACKAGES.items()
        for path in sorted((ROOT / folder).glob("*.py" if package == "jobtracker" else "**/*.py"))
        if "__pycache__" not in path.parts
    }


MODULES = _modules()
PRODUCT = {name: path for name, path in MODULES.items() if not name.startswith(DEVTOOLS)}


def _imported(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The project modules an import statement names: ``from a import b`` names ``a.b`` when
    that is a module, else ``a``. (Python also runs the parents' ``__init__`` first; a package
    re-exporting its submodules is not a cycle of the code, so those implicit edges are left out.)
    """
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against the importing module's package
            package = module.rsplit(".", node.level)[0]
            base = f"{package}.{base}" if base else package
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
            for alias in node.names
        ]
    return [name for name in names if name in MODULES]


def _imports(name: str, path: Path) -> tuple[set[str], list[tuple[int, str, bool]]]:
    """Module-level project imports, and every nested import as (line, module, commented)."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            top.update(_imported(node, name))
    nested: list[tuple[int, str, bool]] = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import | ast.ImportFrom):
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                commented = above.startswith("#") or "#" in lines[node.lineno - 1]
                target = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                nested.append((node.lineno, target or "", commented))
    return top, nested


def test_there_is_no_import_cycle() -> None:
    """Imports inside functions count too: hiding an edge in a function does not cut a cycle."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        top, nested = _imports(name, path)
        graph[name] = (top | {target for _, target, _ in nested if target in MODULES}) - {name}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def _unit(module: str) -> str:
    """The layer unit a module belongs to: a package of ``worker`` (``flow``), a top module of
    it (``settings``), the tables (``models``) or the package root (``jobtracker``)."""
    if module.startswith("jobtracker.models"):
        return "models"
    parts = module.split(".")
    return parts[1] if parts[0] == "worker" and len(parts) > 1 else parts[0]


def _unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        top, nested = _imports(name, path)
        for target in top | {t for _, t, _ in nested if t in MODULES}:
            if _unit(name) != _unit(target):
                graph.setdefault(_unit(name), set()).add(_unit(target))
    return graph


def test_layers_point_one_way() -> None:
    """Counted over worker's packages and top modules: no loop at all (the CLI and the API on
    top, the flow below them, observability and the settings below everything)."""
    try:
        tuple(TopologicalSorter(_unit_graph()).static_order())
    except CycleError as exc:
        pytest.fail(f"layers loop: {' -> '.join(exc.args[1])}")


#: What the product's core never imports: the ways it is run and shown.
CORE = ("flow", "providers", "webhooks", "adaptive", "lifecycle", "catalogue", "inspection")
ABOVE_CORE = ("cli", "api", "runtime", "devtools")
#: Leaves any layer may use: they import nothing but the settings, the errors and the tables.
LEAVES = {"observe": {"settings", "errors", "models"}, "catalogue": {"errors", "models"}}


def test_the_core_never_imports_the_layers_above_it() -> None:
    graph = _unit_graph()
    wrong = {
        unit: sorted(graph.get(unit, set()) & set(ABOVE_CORE))
        for unit in CORE
        if graph.get(unit, set()) & set(ABOVE_CORE)
    }
    assert not wrong, wrong
    for leaf, allowed in LEAVES.items():
        assert graph.get(leaf, set()) <= allowed, (leaf, graph.get(leaf, set()) - allowed)


def test_imports_inside_functions_say_why() -> None:
    silent = [
        f"{path.relative_to(ROOT)}:{line}: import {target}"
        for name, path in MODULES.items()
        for line, target, commented in _imports(name, path)[1]
        if not commented
    ]
    assert not silent, "imports inside functions need a comment saying why:\n" + "\n".join(silent)


def test_product_code_does_not_import_the_devtools() -> None:
    offenders = []
    for name, path in PRODUCT.items():
        top, nested = _imports(name, path)
        loaded = top | {target for _, target, _ in nested}
        if any(m == DEVTOOLS or m.startswith(DEVTOOLS + ".") for m in loaded):
            offenders.append(name)
    assert set(offenders) <= DEVTOOLS_ENTRY_POINTS, offenders
    # ... and the demo itself is loaded only when its command runs, never at a module's top.
    for name, path in PRODUCT.items():
        top, _ = _imports(name, path)
        assert not top & DEVTOOLS_ENTRY_POINTS, name


#: Run once in a fresh interpreter: import the third-party libraries the product uses (no project
#: module), then fork one child per project module, which imports it and reports. Each child
#: starts from an interpreter that has loaded no project module, as a fresh one would, without
#: paying for the interpreter and the libraries each time.
_FORKING_IMPORTER = """
import importlib, json, os, sys, traceback

job = json.load(sys.stdin)
for name in job["warm"]:
    try:
        importlib.import_module(name)
    except Exception:
        pass  # the child importing a project module that needs it reports the error
loaded = sorted(m for m in sys.modules if m.split(".")[0] in job["project"])
if loaded:
    sys.exit(f"warming up loaded project modules: {loaded}")
results = {}
for module in job["modules"]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 0
        try:
            importlib.import_module(module)
        except BaseException:
            os.write(write, traceback.format_exc()[-2000:].encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        error = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    results[module] = [os.waitstatus_to_exitcode(status), error]
print(json.dumps(results))
"""


def _third_party_imports() -> list[str]:
    """Every module outside the project that a product module imports (top or nested)."""
    project = {name.split(".")[0] for name in MODULES}
    found: set[str] = set()
    for path in PRODUCT.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
    return sorted(
        name for name in found if name.split(".")[0] not in project and name != "__future__"
    )


def test_every_product_module_imports_on_its_own() -> None:
    """Each module imported first, into an interpreter with no project module loaded: an import
    that only works after some other project module was imported first (the sign of a hidden
    cycle) fails here."""
    names = sorted(n for n in PRODUCT if not n.endswith("__main__"))
    job = {
        "warm": _third_party_imports(),
        "project": sorted({name.split(".")[0] for name in MODULES}),
        "modules": names,
    }
    done = subprocess.run(
        [sys.executable, "-c", _FORKING_IMPORTER],
        input=json.dumps(job),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert sorted(results) == names
    failed = [f"{module}:\n{err}" for module, (code, err) in results.items() if code != 0]
    assert not failed, "\n\n".join(failed)
