"""The layering ARCHITECTURE.md describes, checked: workspace crates depend only on the
crates below them (and the client never on the engine or libtorch), and inside each crate
the modules import one another without cycles, so each can be read knowing only the ones it
imports."""

import re

import tomllib

from conftest import ROOT

# Each crate's layer: a crate may depend on crates of lower layers only.
LAYERS = {
    "icae-proto": 0,
    "icae-core": 1,
    "icae-client": 1,
    "icae-serving": 2,
    "encoder-svc": 3,
    "decoder-svc": 3,
    "icae-cli": 3,
    "icae-bench": 4,
    "integration-tests": 4,
}
CRATE_DIRS = {
    "icae-proto": "proto",
    "icae-core": "icae-core",
    "icae-client": "client",
    "icae-serving": "serving",
    "encoder-svc": "encoder-svc",
    "decoder-svc": "decoder-svc",
    "icae-cli": "cli",
    "icae-bench": "bench",
    "integration-tests": "integration-tests",
}


def workspace_dependencies(crate: str) -> set[str]:
    manifest = tomllib.loads((ROOT / CRATE_DIRS[crate] / "Cargo.toml").read_text())
    names = set(manifest.get("dependencies", {})) | set(manifest.get("build-dependencies", {}))
    return names


def root_exports(src) -> dict[str, str]:
    """{name: module} for what lib.rs / main.rs re-export (`pub use module::{A, b}`)."""
    exports: dict[str, str] = {}
    for root in ("lib.rs", "main.rs"):
        path = src / root
        if not path.exists():
            continue
        for module, names in re.findall(r"pub use ([a-z_0-9]+)::\{?([^;}]*)\}?;", path.read_text()):
            for name in re.split(r"[,\s]+", names):
                if name:
                    exports[name.split("::")[0]] = module
    return exports


def named_paths(code: str) -> list[str]:
    """The first segment of every `crate::` path, groups `crate::{a::X, Y}` included."""
    firsts = []
    for group, single in re.findall(r"\bcrate::(?:\{([^}]*)\}|([A-Za-z_0-9]+))", code):
        parts = group.split(",") if group else [single]
        firsts += [p.strip().split("::")[0] for p in parts if p.strip()]
    return firsts


def module_imports(crate_dir: str) -> dict[str, set[str]]:
    """{top-level module: the top-level modules its non-test code uses, directly as
    crate::module or through the crate root's re-exports}."""
    src = ROOT / crate_dir / "src"
    exports = root_exports(src)
    graph: dict[str, set[str]] = {}
    for path in src.rglob("*.rs"):
        module = path.relative_to(src).parts[0].removesuffix(".rs")
        if module in ("lib", "main") or module.endswith("_tests"):
            continue
        code = path.read_text().split("#[cfg(test)]")[0]
        code = re.sub(r"//.*", "", code)  # comments name modules without importing them
        used = {exports.get(name, name) for name in named_paths(code)}
        graph.setdefault(module, set()).update(used - {module})
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in graph:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_crates_depend_only_on_lower_layers():
    for crate, layer in LAYERS.items():
        for dependency in workspace_dependencies(crate) & set(LAYERS):
            assert LAYERS[dependency] < layer, f"{crate} depends on {dependency}"
    client = workspace_dependencies("icae-client")
    assert not client & {"icae-core", "icae-serving", "tch"}, client


def test_modules_import_one_another_without_cycles():
    for crate, crate_dir in CRATE_DIRS.items():
        graph = module_imports(crate_dir)
        assert graph, f"no modules found in {crate_dir}/src"
        assert cycles(graph) == [], f"{crate}: modules importing one another"


def test_the_cycle_check_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
