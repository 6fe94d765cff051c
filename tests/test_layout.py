"""The house's rules, read from the imports: search/ in wings with no import cycle, a trial
process that never reaches the record or deploy wings, optim/ and models/ free of search/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("search", "optim", "models", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if ".venv" not in p.parts}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of the project that `path` imports, at the top or inside a function
    (a lazy import is an import all the same). `from a import b` names a.b where that is a
    module, else a."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {i for i in imports(path, known) if i.split(".")[0] in PACKAGES}
            for name, path in known.items()}


def ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules. An edge to a module's own parent package is left
    out: importing a submodule always runs its package's __init__ first, so that is no
    cycle of the code's making."""
    adj = {a: {b for b in bs if b in edges and b not in ancestors(a)} for a, bs in edges.items()}
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(adj[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(adj):
        if node not in state:
            visit(node)
    return found


def fresh_python(script: str) -> str:
    """What `script` prints, run in a new interpreter from the project's root."""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_reading_the_imports_finds_a_cycle_and_a_lazy_import():
    # The checker itself: a circle through a function-level import is found.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    known = modules()
    assert "search.record.plots" in imports(ROOT / "search/record/results.py", known)
    assert "search.trial.trainer" in imports(ROOT / "search/record/results.py", known)  # lazy


def test_search_has_no_import_cycle():
    edges = {k: v for k, v in graph().items() if k.startswith("search")}
    assert len(edges) > 30
    assert cycles(edges) == []


def test_the_trial_wing_imports_neither_the_record_the_deploy_wing_nor_mlflow():
    known = modules()
    trial = {name: path for name, path in known.items() if name.startswith("search.trial")}
    assert "search.trial.trainable" in trial and "search.trial.distributed.ranks" in trial
    for name, path in trial.items():
        bad = {i for i in imports(path, known)
               if i.split(".")[0] == "mlflow" or i.startswith(("search.record", "search.deploy"))}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_a_trial_process_imports_no_mlflow_and_nothing_of_the_driver_wings():
    # What a warm worker process imports (search/trial/trainable.py's preload hook and the
    # multi-worker trial), run as Ray would in a fresh interpreter.
    script = ("import sys\n"
              "import search.trial.trainable, search.trial.distributed.trial\n"
              "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'\n"
              "             or m.startswith(('search.record', 'search.deploy', 'search.run')))\n"
              "print(bad)\n")
    assert fresh_python(script).strip() == "[]"


def test_optim_and_models_never_import_search_and_the_product_never_imports_bench():
    for name, deps in graph().items():
        roots = {d.split(".")[0] for d in deps}
        if name.split(".")[0] in ("optim", "models"):
            assert not roots & {"search", "bench"}, name
        if name.split(".")[0] == "search":
            assert "bench" not in roots, name


def test_the_driver_imports_the_multi_worker_trial_only_when_a_search_uses_it():
    # Ray Train's torch side and ZeRO's torch.distributed imports cost about 0.7 s before
    # Ray starts; a search of one-worker trials never needs them.
    script = ("import sys\n"
              "import search.run\n"
              "print('search.trial.distributed.trial' in sys.modules,\n"
              "      'torch.distributed.optim' in sys.modules)\n")
    assert fresh_python(script).split() == ["False", "False"]
