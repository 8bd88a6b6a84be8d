"""The layering of docs/architecture.md, checked on the source: each folder imports only what it
may, no module reaches into another's private names, and no module grows past the size limit.

Static (ast) checks of every module of study/ and kernels/, plus one dynamic check: importing
`kernels.tuned` and loading a tuning table pulls in nothing from study/.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 420  # "at most about 400 lines"
# Kept whole on purpose: the Triton kernel reads top to bottom like Triton's fused-attention
# tutorial (its launcher, valid() and the interpreter helpers belong with it).
LONG_ON_PURPOSE = {"kernels/builtin/triton_flash.py"}

# What each layer may import from this project (prefixes of module names). Everything else
# (stdlib, torch, optuna, ...) is free. Keep in step with docs/architecture.md.
ALLOWED: dict[str, tuple[str, ...]] = {
    "kernels": ("kernels",),
    "study.measure": ("kernels", "study.measure", "study.errors"),
    "study.search": ("study.search", "study.errors"),
    "study.landscape": (
        "study.landscape",
        "study.search",
        "study.config",
        "study.errors",
        "study.objective",
        "study.space",
        "study.storage",
    ),
    "study.results": ("kernels", "study.results", "study.measure", "study.errors", "study.storage"),
    # the core: config, space, objective, storage, pool, cli and the command modules
    "study": ("kernels", "study"),
}
COMMANDS = tuple(
    f"study.{c}"
    for c in ("run", "selfcheck", "record", "replay", "export", "dashboard", "evaluate")
)
CORE = (
    "study.config",
    "study.space",
    "study.objective",
    "study.storage",
    "study.errors",
    "study.registration",
    "study.seal",
    "study.integrity",
)


def modules() -> list[tuple[str, Path]]:
    found = []
    for top in ("kernels", "study"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append((".".join(parts), path))
    return found


def layer_of(module: str) -> str:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def project_imports(module: str, tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every import of a study/kernels module."""
    out = []
    package = module if module.endswith("__init__") else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("study", "kernels"):
                    out.append((node.lineno, alias.name, []))
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([name] if name else []))
            if name.split(".")[0] in ("study", "kernels"):
                out.append((node.lineno, name, [a.name for a in node.names]))
    return out


def test_layers_import_only_what_they_may() -> None:
    bad = []
    for module, path in modules():
        tree = ast.parse(path.read_text())
        layer = layer_of(module)
        allowed = ALLOWED[layer]
        for line, target, names in project_imports(module, tree):
            targets = [target] + [f"{target}.{n}" for n in names]
            if not any(t == a or t.startswith(a + ".") for t in targets for a in allowed):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            if layer == "study" and module in CORE:
                # the core never imports a command, the results or the landscape
                for t in targets:
                    if t.startswith(("study.results", "study.landscape")) or t in COMMANDS:
                        bad.append(f"{path.relative_to(ROOT)}:{line} (core) imports {t}")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_module() -> None:
    """`from x import _name` and `x._name` on one of our modules are reaching into its insides."""
    ours = {m for m, _ in modules()}
    bad = []
    for module, path in modules():
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}
        for line, target, names in project_imports(module, tree):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{n}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in ours:
                        aliases[a.asname or a.name] = full
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in ours:
                        aliases[a.asname or a.name.split(".")[0]] = a.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and aliases[node.value.id] != module
            ):
                bad.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} uses "
                    f"{aliases[node.value.id]}.{node.attr}"
                )
    assert not bad, "\n".join(bad)


def test_modules_stay_small() -> None:
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for _, path in modules()
        if str(path.relative_to(ROOT)) not in LONG_ON_PURPOSE
        and (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, "\n".join(long)


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    ours = {m for m, _ in modules()}
    for module, path in modules():
        deps = set()
        for _, target, names in project_imports(module, ast.parse(path.read_text())):
            for t in [f"{target}.{n}" for n in names] + [target]:
                if t in ours and t != module:
                    deps.add(t)
                    break
        graph[module] = deps
    # a package's __init__ importing its own submodules is not a cycle
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if node.startswith(dep + ".") or dep.startswith(node + "."):
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_kernels_tuned_loads_without_study(tmp_path: Path) -> None:
    """What a model imports at deploy time stands alone: loading a tuning table and running its
    winner (with a mutation) loads no module of study/."""
    table = tmp_path / "tuned.json"
    script = f"""
import json, sys, torch
from kernels import Problem, tuned
problem = Problem(batch=1, heads_q=2, heads_kv=2, seq_q=8, seq_kv=8, head_dim=16,
                  dtype="float32", causal=False, scale=None, device="cpu")
q = torch.randn(1, 2, 8, 16)
slug = tuned.device_slug(q.device)
entry = {{"variant": "chunked", "device_type": "cpu", "device": slug, "latency_us": 1.0,
          "problem": problem.to_dict(),
          "spec": {{"variant": "chunked", "params": {{"chunk": 4}},
                    "mutations": {{"layout": "bshd_contiguous", "threads": 1}}}}}}
doc = {{"format": tuned.FORMAT, "version": tuned.VERSION,
        "entries": {{problem.signature(): {{slug: entry}}}}}}
open({str(table)!r}, "w").write(json.dumps(doc))
attn = tuned.load({str(table)!r})
out = attn(q, q, q)
ref = torch.nn.functional.scaled_dot_product_attention(q, q, q)
assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
print(json.dumps(sorted(m for m in sys.modules if m == "study" or m.startswith("study."))))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
