"""The package's shape: imports point one way (vocab -> proxies -> data -> model -> train -> evaluation ->
commands), no import circles, and no module over 400 lines.

Every import is read from the source, module-level and function-local alike, so a lazy import cannot
hide a circle.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "proxy_jax"
MAX_LINES = 400

# Layer of each module (by dotted prefix, longest match wins). A module may import from its own layer
# or from lower ones, never from a higher one.
LAYERS = {
    "proxy_jax": 0,  # the package itself (its __init__ only), never a prefix of another module's layer
    "proxy_jax.vocab": 0,
    "proxy_jax.text_format": 0,  # how a run writes a document: vocab and numpy only
    "proxy_jax.config": 0,
    "proxy_jax.recipes": 0,
    "proxy_jax.storage": 0,
    "proxy_jax.interrupts": 0,
    "proxy_jax.progress": 0,  # bars and plain progress lines: the standard library and tqdm only
    "proxy_jax.model": 1,  # a leaf network library: M1 of the neural proxy runs it
    "proxy_jax.proxies": 2,
    "proxy_jax.data": 3,
    "proxy_jax.sharding": 4,
    "proxy_jax.optimizer": 4,
    "proxy_jax.train_step": 4,
    "proxy_jax.checkpoint": 4,
    "proxy_jax.checkpoint_failures": 4,
    "proxy_jax.preemption": 4,
    "proxy_jax.health": 4,
    "proxy_jax.metrics": 4,
    "proxy_jax.tracking": 4,  # TensorBoard and W&B: where metrics.MetricsWriter sends its rows
    "proxy_jax.profiling": 4,
    "proxy_jax.generate": 4,
    "proxy_jax.evaluation": 4,  # the package and its maths: they never see the training loop
    "proxy_jax.codeeval": 4,  # sandboxed execution, pass@k, problem sets: leaves
    "proxy_jax.speculative": 4,
    "proxy_jax.scaling": 4,  # fits, compute matching and the report: no training code
    "proxy_jax.run_record": 4,
    "proxy_jax.workdir": 5,
    "proxy_jax.restore": 5,
    "proxy_jax.assemble": 6,
    "proxy_jax.train": 7,
    "proxy_jax.scaling.sweep": 7,  # runs sweeps: calls the training loop
    "proxy_jax.scaling.setup": 7,  # what a sweep makes once first: M1 (the training loop), preprocessed shards
    "proxy_jax.preprocess_pool": 7,  # local processes sharing a preprocess (assemble.preprocess each)
    "proxy_jax.huggingface": 7,  # restores a run (workdir) and writes it for transformers
    "proxy_jax.export": 8,
    "proxy_jax.evaluation.score": 7,
    "proxy_jax.evaluation.sampler": 7,  # restores a run (assemble) and generates in its layout
    "proxy_jax.evaluation.codegen": 7,  # code tasks and probes of a run: sampler + codeeval
    "proxy_jax.evaluation.lm_eval_backend": 7,  # a run as an lm-evaluation-harness model: sampler + bpb
    "proxy_jax.evaluation.lm_eval_tasks": 7,  # lm-eval tasks scored by the training loop: the backend
    "proxy_jax.cli": 8,
    "proxy_jax.main": 8,
    "proxy_jax.evaluate": 8,
    "proxy_jax.preprocess": 8,
    "proxy_jax.lm_eval": 8,
}


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Package modules that ``name`` imports anywhere in its source (resolved to the longest known prefix)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            # A submodule importing its own parent package is not an edge (Python loads the parent first).
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def layer(name: str) -> int:
    matches = [p for p in LAYERS if name == p or (p != "proxy_jax" and name.startswith(p + "."))]
    if not matches:
        raise KeyError(name)
    return LAYERS[max(matches, key=len)]


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Components of more than one module (iterative Tarjan)."""
    index, low, on_stack, stack, result, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    result.append(comp)
    return result


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_every_module_has_a_layer(graph):
    unplaced = []
    for m in graph:
        try:
            layer(m)
        except KeyError:
            unplaced.append(m)
    assert not unplaced, f"give these modules a layer in LAYERS: {unplaced}"


def test_imports_point_one_way(graph):
    upward = sorted(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
                    for m, targets in graph.items() for t in targets if layer(t) > layer(m))
    assert not upward, "\n".join(upward)


def test_no_import_circles(graph):
    assert strongly_connected(graph) == []


def test_config_imports_nothing_from_the_package(graph):
    assert graph["proxy_jax.config"] == set()


def test_no_module_over_the_line_limit():
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in modules().items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_the_checker_sees_circles_and_local_imports(tmp_path):
    """The checks above can fail: a function-local import that closes a circle is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import x\n")
    mods = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py"}
    g = {m: imports(m, p, set(mods)) for m, p in mods.items()}
    assert g["pkg.b"] == {"pkg.a"} and strongly_connected(g) == [{"pkg.a", "pkg.b"}]
