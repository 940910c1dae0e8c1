"""The layout's dependency rule, read from the source with ast: rooms import only downwards.

Rooms rank contracts < data < ml < standards, reporting < stages < storage < tracking < kubeflow <
cli (docs/architecture.md). A module imports only from its own room or lower ones; a stage never
imports another stage; kfp, mlflow, boto3/botocore and lightning each stay in their rooms.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO

PACKAGE = REPO / "components"
RANK = {"contracts": 0, "data": 1, "ml": 2, "standards": 3, "reporting": 3, "stages": 4, "storage": 5,
        "tracking": 6, "kubeflow": 7, "cli": 8}
#: Third-party packages only some rooms may import.
LIBRARY_ROOMS = {"kfp": {"kubeflow"}, "mlflow": {"tracking"}, "boto3": {"storage"}, "botocore": {"storage"},
                 "lightning": {"ml", "stages"}}
#: Standalone files shipped as they are (the Esri raster function runs inside ArcGIS, not this package).
STANDALONE = {PACKAGE / "standards" / "esri" / "CampSegmenter.py"}


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import in ``path``, function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(path.relative_to(REPO).with_suffix("").parts[: -node.level])
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def room_of(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def crossings(path: Path, source: str | None = None) -> list[str]:
    """Every import in ``path`` (or in ``source`` as if it were there) that breaks the rule."""
    room = room_of(path)
    where = path.relative_to(REPO)
    problems = []
    for line, name in imported_modules(path, source):
        parts = name.split(".")
        top = parts[0]
        if top in LIBRARY_ROOMS and room not in LIBRARY_ROOMS[top]:
            problems.append(f"{where}:{line}: imports {name}; only {sorted(LIBRARY_ROOMS[top])} may import {top}")
        if top != "components" or len(parts) < 2 or room is None:
            continue
        target = parts[1]
        if target not in RANK:
            continue  # the package itself (components.__version__)
        if RANK[target] > RANK[room]:
            problems.append(f"{where}:{line}: {room}/ imports {name} from the higher room {target}/")
        if room == "stages" and target == "stages" and len(parts) > 2 and parts[2] != path.stem:
            problems.append(f"{where}:{line}: the stage {path.stem} imports another stage, {name}")
    return problems


def package_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p not in STANDALONE]


def test_every_module_sits_in_a_known_room():
    loose = [p.name for p in package_modules() if room_of(p) is None]
    assert sorted(loose) == ["__init__.py", "__main__.py"]
    assert {room_of(p) for p in package_modules()} - {None} == set(RANK)


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    assert crossings(path) == []


def test_the_checker_sees_crossings():
    """A module that imports upwards, another stage, or a library outside its room is caught."""
    source = ("from components.kubeflow.steps import staged_run\n"
              "import mlflow\n"
              "def f():\n    from components.stages.train import train\n")
    problems = crossings(PACKAGE / "stages" / "probe.py", source)
    assert len(problems) == 3, problems
    assert "higher room kubeflow/" in problems[0] and "only ['tracking'] may import mlflow" in problems[1]
    assert "imports another stage" in problems[2]



def test_pipeline_py_is_the_only_kfp_user_outside_kubeflow():
    """pipeline.py wires the DAG; everything else that touches kfp lives in components/kubeflow/."""
    users = [p for p in package_modules() if any(n.split(".")[0] == "kfp" for _, n in imported_modules(p))]
    assert users and all(room_of(p) == "kubeflow" for p in users)
