"""The package's shape: folders named for the architecture, data flowing one way (a
subpackage imports only the base modules and the subpackages its ``__init__`` docstring
allows, in a line ``May import: ...``), no import cycles, small modules and functions, no
name imported through a module that does not define it, and ``import vaelab`` without the
coder or the faces. Run as a script to print the graph:

    python tests/test_structure.py
"""
from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaelab"

# the subpackages in the order data flows; "base" is the top-level modules
ORDER = ["base", "data", "models", "runs", "training", "studies", "coding", "app"]
ENTRY = {"__init__", "__main__"}  # the package's front door imports what a user needs
MAX_LINES, MAX_FUNCTION_LINES, MAX_TOP_MODULES = 400, 60, 8


@functools.cache
def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(PACKAGE.rglob("*.py"))}


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _target(name: str, path: Path, node: ast.ImportFrom) -> str:
    parts = [] if name == "__init__" else name.split(".")
    pkg = parts if path.name == "__init__.py" else parts[:-1]
    return ".".join(pkg[:len(pkg) - node.level + 1] + (node.module.split(".")
                                                       if node.module else []))


def imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports, at the top or inside functions."""
    known, out = modules(), set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = _target(name, path, node)
            for a in node.names:  # `from . import folders` imports a module
                sub = f"{base}.{a.name}" if base else a.name
                out.add(sub if sub in known else base or "__init__")
    return out - {name}


def package(name: str) -> str:
    if name in ENTRY:
        return "entry"
    top = name.split(".")[0]
    return top if (PACKAGE / top).is_dir() else "base"


def allowed(pkg: str) -> set[str]:
    """What a subpackage's ``__init__`` docstring says it may import, and itself."""
    if pkg == "base":
        return {"base"}
    doc = ast.get_docstring(_tree(PACKAGE / pkg / "__init__.py")) or ""
    m = re.search(r"^May import: ([a-z, ]+)\.$", doc, re.M)
    assert m, f"vaelab/{pkg}/__init__.py: its docstring has no line 'May import: ...'"
    return {p.strip() for p in m.group(1).split(",")} | {pkg}


def graph() -> dict[str, set[str]]:
    return {name: imports(name, path) for name, path in modules().items()}


def test_every_subpackage_is_placed_and_says_its_job():
    found = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert found == set(ORDER) - {"base"}, f"subpackages {found}; ORDER lists {ORDER}"
    for pkg in ORDER[1:]:
        doc = ast.get_docstring(_tree(PACKAGE / pkg / "__init__.py")) or ""
        assert doc.split("\n\n")[0].count("\n") <= 1, f"{pkg}: the job in two lines"
        below = set(ORDER[:ORDER.index(pkg)])
        assert allowed(pkg) - {pkg} <= below, f"{pkg} may import only what comes before it"


def test_every_import_goes_down_the_layers():
    wrong = [f"{a} ({package(a)}) imports {b} ({package(b)})"
             for a, deps in graph().items() if a not in ENTRY
             for b in deps if b not in ENTRY and package(b) not in allowed(package(a))]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    g = {a: {b for b in deps if b not in ENTRY} for a, deps in graph().items() if a not in ENTRY}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [])


def test_the_top_level_shows_only_a_few_modules():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ENTRY)
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} top-level modules: {top}"


def test_modules_and_functions_are_small():
    big = {name: n for name, p in modules().items()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
    long = [f"{name}.{f.name}: {f.end_lineno - f.lineno + 1} lines"
            for name, p in modules().items() for f in ast.walk(_tree(p))
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


@functools.cache
def _defined(path: Path) -> set[str]:
    """Names a module defines at its top level (not those it imports)."""
    out = set()
    for node in _tree(path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                out.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return out


def test_names_come_from_the_module_that_defines_them():
    known = modules()
    wrong = []
    for name, path in known.items():
        if name in ENTRY:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.level:
                mod = _target(name, path, node)
                for a in node.names:
                    if f"{mod}.{a.name}".lstrip(".") in known:
                        continue  # a module
                    if a.name not in _defined(known[mod or "__init__"]):
                        wrong.append(f"{name}: {a.name} imported from {mod}, which does not "
                                     "define it")
    assert not wrong, "\n".join(wrong)


def _modules_of(name: str, path: Path, node: ast.AST) -> set[str]:
    """The modules an import statement loads (``from . import x`` loads the module x)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    mod = _target(name, path, node) if node.level else node.module or ""
    known = modules()
    subs = {f"{mod}.{a.name}".lstrip(".") for a in node.names}
    return (subs & set(known)) or {mod}


def test_no_function_imports_what_its_module_has_imported():
    """A function-local import is for start-up time (a module loaded only when used); one
    of a module the file imports at its top anyway is noise."""
    wrong = []
    for name, path in modules().items():
        tree = _tree(path)
        top = {m for n in tree.body for m in _modules_of(name, path, n)}
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            wrong += [f"{name}.{f.name} imports {m} again" for n in ast.walk(f)
                      for m in _modules_of(name, path, n) if m in top]
    assert not wrong, "\n".join(wrong)


def test_import_vaelab_leaves_the_coder_and_the_faces_unloaded():
    code = ("import sys, vaelab; print(sorted(m for m in sys.modules if m.startswith("
            "('vaelab.app', 'vaelab.coding', 'matplotlib', 'fastapi', 'constriction'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


if __name__ == "__main__":
    g = graph()
    for name in sorted(g, key=lambda m: (ORDER.index(package(m)) if m not in ENTRY else -1, m)):
        lines = len(modules()[name].read_text().splitlines())
        print(f"{name:24s} {package(name):9s} {lines:4d}  <- {', '.join(sorted(g[name])) or '-'}")
