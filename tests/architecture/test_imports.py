"""The shape of the code: imports only point down (front door -> jobs -> pipeline -> operators), no module imports
itself back through a cycle, and `import llava_batch` / `llava-batch --help` load neither torch nor Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Repository folder -> installed package (setup.py); llava_batch/ itself is the front door (API, CLI).
PACKAGES = {"operators": 0, "pipeline": 1, "jobs": 2, "training": 2, "llava_batch": 3}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts if parts[0] == "llava_batch" else ["llava_batch", *parts])


def layer(module: str) -> int:
    parts = module.split(".")
    return PACKAGES[parts[1]] if len(parts) > 1 and parts[1] in PACKAGES else PACKAGES["llava_batch"]


def import_graph() -> dict[str, set[str]]:
    """Every llava_batch module -> the llava_batch modules it imports (at any depth of the file: lazy ones too)."""
    files = [path for folder in PACKAGES for path in (ROOT / folder).rglob("*.py")]
    modules = {module_name(path): path for path in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llava_batch"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("llava_batch.")}
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def test_imports_only_point_down():
    upward = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if layer(target) > layer(source)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = import_graph()
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            # A package's __init__ importing its own submodules is how a package exposes them, not a cycle.
            if target.startswith(module + "."):
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_graph_sees_imports():
    graph = import_graph()  # the checks above would pass on an empty graph
    assert "llava_batch.pipeline.config" in graph["llava_batch.jobs.caption"]
    assert len(graph) > 50


def loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return set(done.stdout.split())


def test_importing_the_package_and_the_help_load_neither_torch_nor_ray():
    heavy = {"torch", "ray", "transformers"}
    assert not heavy & loaded_after("import llava_batch; llava_batch.__all__")
    help_probe = (
        "from llava_batch.cli.main import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['caption', '--help'])"
    )
    assert not heavy & loaded_after(help_probe)
    assert "ray" in loaded_after("import ray")  # the probe can see a heavy import


def test_the_format_table_is_the_one_list_of_input_formats():
    from llava_batch.pipeline.config import INPUT_FORMATS
    from llava_batch.pipeline.io.formats import FORMATS

    assert set(INPUT_FORMATS) == {"auto", *FORMATS}


def test_the_built_in_checkpoints_are_the_families():
    # operators/ cannot import pipeline.families (imports point down): the two lists are kept equal here.
    from llava_batch.operators.model_source import BUILTIN_MODELS
    from llava_batch.pipeline.families import FAMILIES

    assert BUILTIN_MODELS == FAMILIES
