"""The package is layered: data -> curriculum, losses -> config -> pipeline -> training -> generation ->
evaluation -> world -> experiments -> cli.

No module imports from a layer above its own (lazy imports inside functions included), so each
layer can be read, tested and reused without the ones above it.
"""

import ast
from pathlib import Path

import pytest

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


ENTRY_POINTS = {"cli/train_cmd.py": "run", "api.py": "train", "experiments/compare.py": "run_arm"}


def test_training_entry_points_call_the_training_layer():
    """`currydpo train`, `currydpo.train` and compare's arm runner call `training.loop.train`; the one import of
    `evaluation.online` in each sits under ``if cfg.online.enabled``: an offline run does not pass through it."""
    for file, name in ENTRY_POINTS.items():
        tree = ast.parse((PACKAGE / file).read_text())
        fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
        calls = [ast.unparse(n.func) for n in ast.walk(fn) if isinstance(n, ast.Call)]
        assert "loop.train" in calls, file
        guarded = {id(n) for branch in ast.walk(fn) if isinstance(branch, ast.If)
                   and ast.unparse(branch.test) == "cfg.online.enabled" for n in ast.walk(branch)}
        online_imports = [n for n in ast.walk(fn) if isinstance(n, ast.ImportFrom) and "evaluation" in (n.module or "")
                          and (n.module or "").endswith("online")]
        assert online_imports and all(id(n) in guarded for n in online_imports), file


class Trained(Exception):
    pass


def test_offline_runs_never_import_evaluation_and_online_runs_get_their_judge_as_a_stage_source(tmp_path,
                                                                                                monkeypatch):
    import sys

    from currydpo import api
    from currydpo.cli import train_cmd
    from currydpo.evaluation import online as judging
    from currydpo.training import loop
    from currydpo.training.online import OnlineStages

    seen = []

    def fake_train(cfg, records=None, resume=False, stages=None, hooks=None):
        seen.append(stages)
        raise Trained

    monkeypatch.setattr(loop, "train", fake_train)
    cli_args = ["train", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"), "--output",
                str(tmp_path / "out")]
    online = ["--set", "online.enabled=true", "--set", "online.judge=gold:math:fsum",
              "--set", "curriculum.schedule=iterative", "--set", "curriculum.stages=2"]
    with monkeypatch.context() as blocked:  # importing any evaluation module now fails
        for module in [m for m in sys.modules if m.startswith("currydpo.evaluation")] + ["currydpo.evaluation"]:
            blocked.setitem(sys.modules, module, None)
        for call in (lambda: api.train({"model": {"path": "m"}, "run": {"output_dir": str(tmp_path / "a")}}),
                     lambda: train_cmd.run(parse(cli_args))):
            with pytest.raises(Trained):
                call()
    assert seen == [None, None]
    for call in (lambda: api.train({"model": {"path": "m"}, "run": {"output_dir": str(tmp_path / "a")},
                                    "online": {"enabled": True, "judge": "gold:math:fsum"},
                                    "curriculum": {"schedule": "iterative", "stages": 2}}),
                 lambda: train_cmd.run(parse(cli_args + online))):
        with pytest.raises(Trained):
            call()
    assert len(seen) == 4 and all(isinstance(s, OnlineStages) and s.collect is judging.collect for s in seen[2:])


def parse(argv):
    from currydpo.cli import build_parser

    return build_parser().parse_args(argv)
