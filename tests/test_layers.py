"""The package is layered: data -> curriculum, losses -> config -> pipeline -> training -> generation ->
evaluation -> world -> experiments -> cli.

No module imports from a layer above its own (lazy imports inside functions included), so each
layer can be read, tested and reused without the ones above it.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "currydpo"
LAYER = {"errors": 0, "io": 0, "device": 0, "userfn": 0, "lifetime": 0, "trl_names": 0, "progress": 0, "cache": 0,
         "api": 10,
         "data": 1, "curriculum": 2, "losses": 2, "config": 3,
         "pipeline": 4, "training": 5, "generation": 6, "evaluation": 7, "world": 8, "experiments": 9, "cli": 10,
         "__init__": 0, "__main__": 11}
# Nothing is exempt: the registries (formats, builders, measures, schedules, losses) sit below config and
# validate their own sections; config validates the rest.
ALLOWED: set[tuple[str, str]] = set()


def upward_imports():
    found = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        mine = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = list(parts[:-1])[: len(parts) - node.level] if node.level > 1 else list(parts[:-1])
                target = (base + (node.module.split(".") if node.module else [node.names[0].name]))[0]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("currydpo."):
                target = node.module.split(".")[1]
            else:
                continue
            if LAYER.get(target, 0) > LAYER[mine] and (mine, target) not in ALLOWED:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports from {target}")
    return found


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports() == []


def test_every_top_level_module_has_a_layer():
    assert {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())} <= set(LAYER)


def module_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports, lazy (in-function) imports included."""
    modules = {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        pkg = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")[:-1]
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                stem = base + (node.module.split(".") if node.module else [])
                candidates = [".".join(stem + [a.name]) for a in node.names] + [".".join(stem)]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("currydpo."):
                stem = node.module.split(".")[1:]
                candidates = [".".join(stem + [a.name]) for a in node.names] + [".".join(stem)]
            else:
                continue
            out |= {c for c in candidates if c in modules and c != name and not c.endswith("__init__")}
        graph[name] = out
    return graph


def test_no_import_cycle_lazy_imports_included():
    graph = module_imports()

    def reaches(a, b):
        todo, seen = [a], {a}
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt == b:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    assert sorted(f"{u} <-> {v}" for u in graph for v in graph[u] if reaches(v, u)) == []
