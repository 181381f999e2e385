"""The package's shape: stages import only downward, no stage imports the reporting layer, no import cycles.

Layers, top to bottom: transfer -> convert -> pretrain -> results, data -> runtime. The commands (each module with
a `main`, called by the stage folders' scripts and the console scripts) sit above every stage and may import any.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mocoeval"
LAYER = {"runtime": 0, "data": 1, "results": 1, "pretrain": 2, "convert": 3, "transfer": 4}
COMMANDS = {
    "mocoeval.pretrain.train_moco",
    "mocoeval.pretrain.inspect_collapse",
    "mocoeval.pretrain.bench",
    "mocoeval.convert.to_d2",
    "mocoeval.transfer.detection.run_voc",
    "mocoeval.transfer.detection.run_coco",
    "mocoeval.transfer.run_linear",
    "mocoeval.transfer.branch_scales",
    "mocoeval.transfer.gpu_check",
    "mocoeval.results.make_tables",
    "mocoeval.results.compare",
}
REPORTING = {"mocoeval.results.tables", "mocoeval.results.plots", "mocoeval.results.compare"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """Every module's imports of mocoeval modules, at any depth (lazy imports inside functions count)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mocoeval"):
                assert node.level == 0, f"{name}: relative import"
                for alias in node.names:  # `from pkg import module` names a module
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("mocoeval"))
        graph[name] = {t for t in targets if t != name and t != "mocoeval"}
    return graph


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYER else None


def test_every_module_is_in_a_stage_or_the_runtime():
    assert all(stage(m) for m in package_imports() if m != "mocoeval"), "a module outside the stage subpackages"


def test_stages_import_only_downward_and_never_the_reporting_layer():
    wrong = []
    for module, targets in package_imports().items():
        if module in COMMANDS or stage(module) is None:
            continue
        for target in targets:
            same_stage = stage(target) == stage(module)
            if not same_stage and LAYER[stage(target)] >= LAYER[stage(module)]:
                wrong.append(f"{module} -> {target}")
            if target in REPORTING and stage(module) != "results":
                wrong.append(f"{module} -> {target} (reporting)")
    assert not wrong, wrong


def test_no_import_cycles():
    graph = package_imports()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_stage_folders_scripts_are_thin_shims():
    for script in sorted((PACKAGE.parent).glob("*/*.py")):
        if script.parent.name not in ("pretrain", "convert", "transfer", "results"):
            continue
        code = [ln for ln in script.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        assert len(code) <= 12, f"{script}: {len(code)} lines; the logic belongs in the package"
