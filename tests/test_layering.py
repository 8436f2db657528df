"""Which parts of archlab may import which (every import statement counts, including the ones
inside functions): a cycle or a layer reaching up shows here before it shows as an import
error or a tangle."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


@cache
def imports(name: str) -> frozenset[str]:
    """The archlab modules that module ``name`` imports (``from pkg import mod`` counts as
    importing ``pkg.mod`` when that is a module)."""
    path = _module_file(name)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}")}
    return frozenset(m for m in out if m.startswith("archlab") and _module_file(m))


def reachable(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for m in imports(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def modules_under(package: str) -> list[str]:
    root = SRC.joinpath(*package.split("."))
    return [".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
            for p in sorted(root.rglob("*.py"))]


def components(graph: Mapping[str, Iterable[str]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` with more than one module (Tarjan 1972):
    each is a set of modules that all reach each other, i.e. an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(comps, key=min)


def cycle_in(graph: Mapping[str, Iterable[str]], comp: set[str]) -> list[str]:
    """The shortest cycle ``[a, b, ..., a]`` from the first module of component ``comp`` back
    to itself (breadth first inside the component)."""
    start = min(comp)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph.get(v, ())):
            if w == start and v != start:
                return [*paths[v], start]
            if w in comp and w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    raise AssertionError(f"{sorted(comp)} is not a cycle")


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    return [cycle_in(graph, c) for c in components(graph)]




def test_the_graph_sees_imports_inside_functions():
    assert "archlab.train.checkpoint" in imports("archlab.run")  # imported inside load_run


def test_the_graph_counts_a_package_imported_from():
    # ``from archlab.objectives import OBJECTIVES`` runs archlab/objectives/__init__.py: an
    # edge to the package (a submodule importing its own package that way closes a cycle)
    assert "archlab.objectives" in imports("archlab.train.run")


def test_the_cycle_check_finds_cycles():
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """No import cycle anywhere in src/archlab, counting every import statement (those inside
    functions too: a cycle hidden in a function still ties the two modules together)."""
    graph = {m: imports(m) for m in modules_under("archlab")}
    assert len(graph) > 50 and graph["archlab.convert.core"]  # the graph sees the source tree
    found = components(graph)
    report = "\n".join(" -> ".join(cycle_in(graph, c)) + (
        f"  (all of {', '.join(sorted(c))} reach each other)" if len(c) > 2 else "") for c in found)
    if found:
        print(f"import cycles in {SRC / 'archlab'}:\n{report}")
    assert not found, f"import cycles in src/archlab:\n{report}"


def test_checkpoints_do_not_know_run_directories():
    """archlab.run knows the run-directory layout and uses the checkpoint code; the checkpoint
    code reaches neither archlab.run nor the run config."""
    below = reachable("archlab.train.checkpoint")
    assert "archlab.run" not in below and "archlab.train.config" not in below, sorted(below)
    assert "config.yaml" not in (SRC / "archlab/train/checkpoint.py").read_text()


def test_data_does_not_reach_objectives():
    for mod in modules_under("archlab.data"):
        assert not {m for m in reachable(mod) if m.startswith("archlab.objectives")}, mod


def _imports_torch_distributed(name: str) -> bool:
    tree = ast.parse(_module_file(name).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(n == "torch.distributed" or n.startswith("torch.distributed.") for n in names):
            return True
    return False


def test_parallelism_stays_out_of_the_model_and_objectives():
    """torchtitan's rule: the model never knows it is wrapped; DDP/FSDP2 live in
    archlab.train.parallel (and the launcher in the train CLI)."""
    users = {m for m in modules_under("archlab") if _imports_torch_distributed(m)}
    assert "archlab.train.parallel" in users  # the check sees such imports
    assert users <= {"archlab.train.parallel", "archlab.train.cli"}, sorted(users)
