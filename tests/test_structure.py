"""The package's shape: data flows one way (each module imports only its own layer or the
ones below it), no import cycles, small modules. Run as a script to print the graph:

    python tests/test_structure.py
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaelab"

# bottom first; a module may import from its own layer and the layers below
LAYERS = [
    ("base", {"registry", "config", "fetch", "hub", "distributed", "noise", "devices",
              "images"}),
    ("data", {"datasets", "folders", "data", "imagefiles"}),
    ("model", {"nets", "distributions", "likelihoods", "priors", "model", "hierarchical"}),
    ("objectives", {"objectives"}),
    ("train", {"rundir", "runlock", "schedule", "step", "board", "train"}),
    ("studies", {"evaluate", "sample", "baselines", "classifiers", "bitsback", "compress",
                 "export", "explore"}),
    ("figures and pages", {"plots", "report", "classify"}),
    ("faces", {"cli", "serve"}),
]
ENTRY = {"__init__", "__main__"}  # the package's front door imports everything
MAX_LINES = 400


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports, at the top or inside functions."""
    parts = [] if name == "__init__" else name.split(".")
    pkg = parts if path.name == "__init__.py" else parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[:len(pkg) - node.level + 1]
            if node.module:
                out.add(".".join(base + node.module.split(".")))
            else:
                out.update(".".join(base + [a.name]) for a in node.names)
    known = modules()
    return {m if m in known else m.rsplit(".", 1)[0] if "." in m else "__init__"
            for m in out} - {name}


def layer(name: str) -> int:
    top = name.split(".")[0]
    for i, (_, members) in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"vaelab.{name} belongs to no layer: add it to LAYERS in {__file__}")


def graph() -> dict[str, set[str]]:
    return {name: imports(name, path) for name, path in modules().items()}


def test_every_import_goes_down_the_layers():
    wrong = [f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})"
             for a, deps in graph().items() if a not in ENTRY
             for b in deps if b not in ENTRY and layer(b) > layer(a)]
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


def test_modules_are_small():
    big = {name: n for name, p in modules().items()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


if __name__ == "__main__":
    g = graph()
    for name in sorted(g, key=lambda m: (layer(m) if m not in ENTRY else -1, m)):
        lines = len(modules()[name].read_text().splitlines())
        where = "entry" if name in ENTRY else LAYERS[layer(name)][0]
        print(f"{name:22s} {where:18s} {lines:4d}  <- {', '.join(sorted(g[name])) or '-'}")
