"""Imports run one way: no module-import cycles, and no layer imports a higher one.

The layers (design.md): ``rl`` < ``models`` < ``data`` < ``rollout``, ``bridge`` < ``reward`` < ``config`` <
``trainer``; every top-level module has a rank too (``RANKS``). Imports are read with ``ast`` from every
module under ``grlhf/``: module level and inside functions, ``import x`` and ``from x import y`` (``y`` a
submodule or a name), relative imports resolved. An edge goes to the most specific module named; the
implicit import of a parent package's ``__init__`` is not an edge (it would make every package that
re-exports its submodules a loop).

``python tests/test_layers.py`` prints the verdicts on the current tree.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "grlhf"

# rank of each layer: a module may import its own layer, an equal rank or a lower one. Subpackages are
# layers; so is each top-level module, at the lowest rank consistent with what it imports and what
# imports it (x.5: just above that layer, below the next).
RANKS: dict[str, tuple[float, str]] = {
    "grlhf": (-1, "the package root (__init__.py): __version__ only, imports nothing"),
    "caches": (-0.5, "the on-disk cache directory and JAX's compilation cache: imports nothing of grlhf"),
    "host_memory": (-0.5, "glibc's mallopt for XLA:CPU's buffers, set by the CLIs first: imports nothing of grlhf"),
    "errors": (-0.5, "UserError and the CLI's error handling (exit 2, no traceback): imports nothing of grlhf, "
                     "every layer may raise its errors"),
    "rl": (0, "the functional core: pure array math, imports nothing of grlhf but rl"),
    "models": (1, "the Flax Qwen-VL, its checkpoints, weight table and sharding"),
    "convert": (1.5, "HF safetensors <-> orbax CLI: models' checkpoint code and weight table; nothing imports it"),
    "data": (2, "datasets, batching, processor, the synthetic task; uses models' rope / sharding helpers"),
    "rollout": (3, "generation backends on models and data"),
    "bridge": (3, "JAX arrays -> HF-named torch tensors (models' weight table); rollout.vllm_engine uses it"),
    "reward": (4, "judging: prompts, parsing, rules, the group judge over rollout backends"),
    "tiny": (4.5, "the tiny checkpoint: processor and synthetic corpus (data) with the judge prompt (reward); "
                  "the trainer imports it"),
    "demo": (4.5, "the judging demo on rl + reward; nothing imports it"),
    "config_schema": (-0.5, "the configuration's dataclasses: imports nothing of grlhf; config re-exports them"),
    "config": (5, "imports the choice lists of rl, models, data, rollout, reward; the trainer imports it"),
    "eval": (5.5, "the evaluations (python -m grlhf.eval): models, data, rollout, reward, tiny; the trainer's "
                  "report and its remote judge's key use them"),
    "dry_run": (5.5, "the planner of trainer.dry_run: config, models' abstract shapes and sharding, data files"),
    "trainer": (6, "the loops: everything below"),
    "train": (7, "the CLI: config + trainer"),
}


@dataclass(frozen=True)
class Site:
    path: str  # relative to the repository
    line: int
    in_function: bool

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" + (" (inside a function)" if self.in_function else "")


Graph = Mapping[str, Mapping[str, list]]  # module -> imported module -> [Site]


# ---- reading the imports ------------------------------------------------------------------------------


def module_names(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` under ``root`` (a package directory)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The most specific existing module that ``name`` names (``a.b.c`` -> ``a.b`` when ``c`` is not one)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


class _Imports(ast.NodeVisitor):
    def __init__(self) -> None:
        self.depth = 0
        self.found: list[tuple[ast.stmt, bool]] = []

    def _scope(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scope

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self.depth > 0))

    visit_ImportFrom = visit_Import


def build_graph(root: Path = PACKAGE) -> dict[str, dict[str, list[Site]]]:
    """The package-internal import graph of the package at ``root``."""
    modules = module_names(root)
    top = root.name
    graph: dict[str, dict[str, list[Site]]] = {name: {} for name in modules}
    for name, path in modules.items():
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node, in_function in visitor.found:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package[:len(package) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in modules else source)
            site = Site(str(path.relative_to(root.parent)), node.lineno, in_function)
            for target in targets:
                if target != top and not target.startswith(top + "."):
                    continue
                resolved = _resolve(target, modules)
                if resolved and resolved != name and site not in graph[name].get(resolved, []):
                    graph[name].setdefault(resolved, []).append(site)
    return graph


# ---- the verdicts -------------------------------------------------------------------------------------


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` for each import loop (see ``import_loops``)."""
    return [_cycle_through(graph, component) for component in import_loops(graph)]


def import_loops(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module, sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # iterative, so deep graphs cannot overflow the recursion limit
        work = [(node, iter(sorted(graph.get(node, ()))))]
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        while work:
            current, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.get(successor, ())))))
                    break
                if successor in on_stack:
                    low[current] = min(low[current], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[current])
                if low[current] == index[current]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == current:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def _cycle_through(graph: Graph, component: list[str]) -> list[str]:
    """A shortest cycle from the component's first module back to it, inside the component."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph.get(node, ())):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if successor in members and successor not in parents:
                    parents[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"no cycle through {component}")  # unreachable for a strongly connected component


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def unranked(modules: Iterable[str], ranks: Mapping[str, tuple[float, str]] = RANKS) -> list[str]:
    return sorted({layer_of(m) for m in modules} - set(ranks))


def upward_edges(graph: Graph, ranks: Mapping[str, tuple[float, str]] = RANKS) -> list[str]:
    """Every import of a higher-ranked layer, as ``a -> b: layer x (rank) imports layer y (rank) [where]``."""
    found = []
    for source in sorted(graph):
        for target in sorted(graph[source]):
            low, high = layer_of(source), layer_of(target)
            if low in ranks and high in ranks and ranks[high][0] > ranks[low][0]:
                sites = ", ".join(str(site) for site in graph[source][target])
                found.append(f"{source} -> {target}: layer {low} (rank {ranks[low][0]:g}) imports layer {high} "
                             f"(rank {ranks[high][0]:g}) [{sites}]")
    return found


def outside_imports(graph: Graph, layer: str) -> list[str]:
    """Imports from ``layer`` of any module outside it."""
    return [f"{source} -> {target} [{', '.join(map(str, graph[source][target]))}]"
            for source in sorted(graph) if layer_of(source) == layer
            for target in sorted(graph[source]) if layer_of(target) != layer]


def format_loop(graph: Graph, members: list[str]) -> str:
    """The loop's modules, a shortest cycle through the first, and every import among the modules."""
    edges = [f"{a} -> {b} [{', '.join(map(str, graph[a][b]))}]"
             for a in members for b in sorted(graph[a]) if b in members]
    return (f"{', '.join(members)}: {' -> '.join(_cycle_through(graph, members))}\n      "
            + "\n      ".join(edges))


def report(graph: Graph) -> str:
    lines = [f"unranked layer {name}: add it to RANKS with a reason" for name in unranked(graph)]
    lines += [f"cycle among {format_loop(graph, members)}" for members in import_loops(graph)]
    lines += [f"upward: {edge}" for edge in upward_edges(graph)]
    lines += [f"rl imports outside rl: {edge}" for edge in outside_imports(graph, "rl")]
    return "\n".join(lines) or "no violations"


# ---- the tree -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
    return build_graph()


def test_every_layer_has_a_rank(graph):
    missing = unranked(graph)
    assert not missing, f"layers without a rank in RANKS (add one with a reason): {missing}"


def test_no_import_cycles(graph):
    loops = import_loops(graph)
    assert not loops, "import cycles:\n" + "\n".join(f"  {format_loop(graph, m)}" for m in loops)


def test_imports_only_run_down_the_layers(graph):
    edges = upward_edges(graph)
    assert not edges, "upward imports:\n" + "\n".join(f"  {edge}" for edge in edges)


def test_rl_imports_only_rl(graph):
    edges = outside_imports(graph, "rl")
    assert not edges, "grlhf.rl must import nothing of grlhf but grlhf.rl:\n" + "\n".join(f"  {e}" for e in edges)


# ---- the checker itself -------------------------------------------------------------------------------


def test_checker_finds_a_cycle_and_an_upward_edge_on_a_fake_graph():
    site = [Site("fake.py", 1, False)]
    fake = {
        "grlhf.rl.a": {"grlhf.rl.b": site},
        "grlhf.rl.b": {"grlhf.rl.c": site, "grlhf.models.m": site},
        "grlhf.rl.c": {"grlhf.rl.a": site},
        "grlhf.models.m": {},
        "grlhf.trainer.t": {"grlhf.trainer.t2": site},
        "grlhf.trainer.t2": {"grlhf.trainer.t": site},
        "grlhf.data.d": {"grlhf.models.m": site, "grlhf.rl.a": site},
    }
    assert find_cycles(fake) == [["grlhf.rl.a", "grlhf.rl.b", "grlhf.rl.c", "grlhf.rl.a"],
                                 ["grlhf.trainer.t", "grlhf.trainer.t2", "grlhf.trainer.t"]]
    assert import_loops(fake)[0] == ["grlhf.rl.a", "grlhf.rl.b", "grlhf.rl.c"]
    assert "grlhf.rl.c -> grlhf.rl.a [fake.py:1]" in format_loop(fake, import_loops(fake)[0])
    assert upward_edges(fake) == ["grlhf.rl.b -> grlhf.models.m: layer rl (rank 0) imports layer models (rank 1) "
                                  "[fake.py:1]"]
    assert outside_imports(fake, "rl") == ["grlhf.rl.b -> grlhf.models.m [fake.py:1]"]
    acyclic = {"grlhf.data.d": {"grlhf.models.m": site}, "grlhf.models.m": {}}
    assert find_cycles(acyclic) == [] and upward_edges(acyclic) == []
    assert unranked(["grlhf.newlayer.x", "grlhf.rl.a"]) == ["newlayer"]


def test_checker_reads_every_kind_of_import(tmp_path):
    root = tmp_path / "grlhf"
    files = {
        "__init__.py": "",
        "config.py": "def f():\n    from grlhf.trainer import loop\n",
        "rl/__init__.py": "from .kl import k\n",
        "rl/kl.py": "import grlhf.rl.losses as losses\nk = 1\n",
        "rl/losses.py": "from . import kl\n",
        "rl/adv.py": "from ..models import m\nfrom grlhf.rl import k\n",
        "models/__init__.py": "",
        "models/m.py": "import os\nimport numpy\n",
        "trainer/__init__.py": "",
        "trainer/loop.py": "from grlhf import config\nfrom grlhf.models.m import thing, other\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph = build_graph(root)
    edges = {(a, b, tuple((s.line, s.in_function) for s in sites)) for a in graph for b, sites in graph[a].items()}
    assert edges == {
        ("grlhf.config", "grlhf.trainer.loop", ((2, True),)),  # inside a function, submodule of a package
        ("grlhf.rl", "grlhf.rl.kl", ((1, False),)),  # relative, from a package's __init__
        ("grlhf.rl.kl", "grlhf.rl.losses", ((1, False),)),  # import a.b.c as x
        ("grlhf.rl.losses", "grlhf.rl.kl", ((1, False),)),  # from . import submodule
        ("grlhf.rl.adv", "grlhf.models.m", ((1, False),)),  # from ..package import submodule
        ("grlhf.rl.adv", "grlhf.rl", ((2, False),)),  # from package import name: the package's __init__
        ("grlhf.trainer.loop", "grlhf.config", ((1, False),)),  # from grlhf import module
        ("grlhf.trainer.loop", "grlhf.models.m", ((2, False),)),  # two names, one site
    }
    assert find_cycles(graph) == [["grlhf.config", "grlhf.trainer.loop", "grlhf.config"],
                                  ["grlhf.rl.kl", "grlhf.rl.losses", "grlhf.rl.kl"]]
    assert [edge.split(":")[0] for edge in upward_edges(graph)] == [
        "grlhf.config -> grlhf.trainer.loop", "grlhf.rl.adv -> grlhf.models.m"]


if __name__ == "__main__":
    print(report(build_graph()))
