"""The house's layout: ``tasks/`` is one package per pipeline stage, and imports only run down the
stages (store → data → model → run → score → publish → nightly → browse), with no import circle between
modules; each stage's ``__init__`` says what it does and what it may import; ``flows/`` composes
tasks and defines none. Read from the source with ``ast`` (imports inside functions included)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"
STAGES = ("store", "data", "model", "run", "score", "publish", "nightly", "browse")  # bottom to top


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``tasks``/``flows``/``demo`` module that ``path`` imports, anywhere in the file; for
    ``from package import name`` the module ``package.name`` when that is a module, else ``package``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (REPO / Path(*candidate.split("."))).with_suffix(".py").is_file() or \
                    (REPO / Path(*candidate.split(".")) / "__init__.py").is_file()
                found.add(candidate if is_module else node.module)
    return {m for m in found if m.split(".")[0] in ("tasks", "flows", "demo")}


def stage_of(module: str) -> str:
    return module.split(".")[1]


def task_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(TASKS.rglob("*.py"))}


def test_every_task_module_lives_in_a_stage_package():
    loose = [m for m in task_modules() if m != "tasks" and (m.count(".") < 1 or stage_of(m) not in STAGES)]
    assert not loose, f"modules outside the stage packages {STAGES}: {loose}"
    assert sorted(p.name for p in TASKS.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(STAGES)
    assert [p.name for p in TASKS.glob("*.py")] == ["__init__.py"]


def test_imports_only_run_down_the_stages():
    upward = []
    for module, path in task_modules().items():
        if module == "tasks":
            continue
        rank = STAGES.index(stage_of(module))
        for target in imported_modules(path):
            if not target.startswith("tasks.") or STAGES.index(stage_of(target)) > rank:
                upward.append(f"{module} imports {target}")
    assert not upward, "imports that run up the stages (or out of tasks/):\n" + "\n".join(upward)


def test_no_import_circle_between_modules():
    modules = task_modules()
    graph = {m: {t for t in imported_modules(p) if t in modules and t != m} for m, p in modules.items()}
    state: dict[str, str] = {}
    circles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                circles.append(" → ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_each_stage_says_what_it_does_and_may_import():
    for rank, stage in enumerate(STAGES):
        doc = ast.get_docstring(ast.parse((TASKS / stage / "__init__.py").read_text())) or ""
        assert f"Stage {rank}" in doc, f"tasks/{stage}/__init__.py does not say which stage it is"
        said = re.search(r"May import:(.*)", doc, re.S)
        assert said, f"tasks/{stage}/__init__.py does not say what it may import"
        named = set(re.findall(r"``tasks\.(\w+)``", said.group(1)))
        assert named == set(STAGES[:rank]), f"tasks/{stage} says it may import {sorted(named)}, not the stages below it"


def test_flows_compose_and_define_no_tasks():
    for path in sorted((REPO / "flows").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = {ast.unparse(d).split("(")[0] for d in node.decorator_list}
                assert not names & {"task", "prefect.task"}, f"{path.name} defines the task {node.name}: tasks live in tasks/"
