"""The packages' boundaries, read from their imports (every import statement, at any depth):

- logitstore (the format) imports no torch, Ray, matplotlib, trainer or jobs;
- the student pass never imports the teacher pass, nor the teacher the student;
- the built-in examples are reached only through trainer.inputs.registry (by name), never imported;
- trainer never imports jobs; only jobs/plots.py imports matplotlib.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("logitstore", "trainer", "jobs")


def _type_only(tree: ast.Module) -> set[int]:
    """The ids of the nodes under `if TYPE_CHECKING:` (imports for type hints, never executed)."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }


@functools.cache
def modules() -> dict[str, set[str]]:
    """Every module of the packages -> the absolute names it imports (at any depth; imports for
    type hints only, under `if TYPE_CHECKING:`, are not imports)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            imported = set()
            tree = ast.parse(path.read_text(), str(path))
            skipped = _type_only(tree)
            for node in ast.walk(tree):
                if id(node) in skipped:
                    continue
                if isinstance(node, ast.Import):
                    imported |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            found[name] = imported
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def breaches(source: str, forbidden: tuple[str, ...], exempt: tuple[str, ...] = ()) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, imported in modules().items()
        if within(module, source) and module not in exempt
        for name in sorted(imported)
        if any(within(name, f) for f in forbidden)
    ]


def test_the_store_imports_no_torch_ray_plotting_trainer_or_jobs():
    assert breaches("logitstore", ("torch", "ray", "matplotlib", "trainer", "jobs")) == []


def test_the_passes_never_import_each_other():
    assert breaches("trainer.student", ("trainer.teacher",)) == []
    assert breaches("trainer.teacher", ("trainer.student",)) == []


def test_built_ins_are_reached_only_through_the_registry():
    outside = [m for m in modules() if not within(m, "trainer.builtin")]
    assert [b for m in outside for b in breaches(m, ("trainer.builtin",)) if b.startswith(m + " ")] == []
    from trainer.inputs import registry

    makers = [b.maker for r in (registry.MODELS, registry.DATASETS, registry.AUGMENTS) for b in r.values()]
    assert makers and all(m.startswith("trainer.builtin.") for m in makers)


def test_trainer_never_imports_jobs_and_only_the_jobs_plot():
    assert breaches("trainer", ("jobs",)) == []
    assert (
        breaches("trainer", ("matplotlib",)) == [] and breaches("jobs", ("matplotlib",), exempt=("jobs.plots",)) == []
    )


def test_importing_the_light_modules_loads_no_torch_nor_ray():
    """The store (every module but its pytest classes), the spec checks and both passes' configs."""
    code = (
        "import importlib, pkgutil, sys\nimport logitstore\n"
        "names = [m.name for m in pkgutil.walk_packages(logitstore.__path__, 'logitstore.')]\n"
        "names += ['trainer.inputs.specs', 'trainer.teacher.config', 'trainer.student.config']\n"
        "names += ['trainer.student.sweep']\n"
        "for name in names:\n    if '.testing' not in name:\n        importlib.import_module(name)\n"
        "print([m for m in ('torch', 'ray', 'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def import_cycles(package: str) -> list[list[str]]:
    """Cycles among `package`'s modules, every import statement counted (function-level ones too)."""
    graph = modules()
    inside = {m for m in graph if within(m, package)}
    edges = {m: sorted(n for n in graph[m] if n in inside and n != m) for m in inside}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for start in sorted(inside):
        if start not in state:
            visit(start, [start])
    return cycles


def test_the_store_has_no_import_cycle():
    """Not even one held together by imports inside functions (the storage layer sits beneath the
    writer, the reader and the manifest: nothing below imports what is above)."""
    assert import_cycles("logitstore") == []
