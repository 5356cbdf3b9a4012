"""The layers stay layers: the engine core imports nothing above it, the media layer uses the engine's public API
only, there is no import cycle anywhere in edgevlm/, and the exporter and benchmarks touch no private runtime name.
Imports are read from the source (every import statement, function-level and TYPE_CHECKING ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "edgevlm"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    where = PKG.parent / dotted.replace(".", "/")
    return where.with_suffix(".py").exists() or (where / "__init__.py").exists()


def only_submodules(package: str, names: list[str]) -> bool:
    return bool(names) and all(is_module(f"{package}.{n}") for n in names)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [a.name for a in node.names]
            out.append((base, names))
            out += [(f"{base}.{n}", []) for n in names if is_module(f"{base}.{n}")]
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    g = {}
    for name, path in modules.items():
        # `from pkg import submodule` depends on the submodule, not on pkg/__init__ (which every import runs and
        # which is never counted as an edge)
        deps = imports(path)
        g[name] = {m for m, names in deps if m in modules and m != name and not only_submodules(m, names)}
    return g


def test_no_import_cycle_in_the_runtime():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m) :] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)


def test_engine_imports_nothing_above_it():
    for path in (PKG / "engine").rglob("*.py"):
        for mod, _ in imports(path):
            assert not mod.startswith(
                ("edgevlm.media", "edgevlm.vlm", "edgevlm.cli", "edgevlm.bench", "edgevlm.server", "edgevlm.archive")
            ), (path, mod)


def test_media_uses_the_engine_public_api_only():
    for path in (PKG / "media").rglob("*.py"):
        for mod, names in imports(path):
            assert not mod.startswith(
                ("edgevlm.vlm", "edgevlm.cli", "edgevlm.bench", "edgevlm.server", "edgevlm.archive")
            ), (path, mod)
            if mod.startswith("edgevlm.engine"):
                assert not [n for n in names if n.startswith("_")], (path, mod, names)


def test_server_and_archive_are_clients_of_the_public_api():
    """Like the CLI, the server and the archive runners sit on top: nothing below imports them, they import no
    private name from below."""
    for path in [*(PKG / "server").rglob("*.py"), *(PKG / "archive").rglob("*.py")]:
        for mod, names in imports(path):
            assert not mod.startswith("edgevlm.cli"), (path, mod)
            if mod.startswith(("edgevlm.engine", "edgevlm.media", "edgevlm.vlm")):
                assert not [n for n in names if n.startswith("_")], (path, mod, names)


def private_runtime_names() -> set[str]:
    names = set()
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_exporter_and_benchmarks_use_no_private_runtime_name():
    private = private_runtime_names()
    assert "_result" in private and "_read_json" in private  # the scan sees the runtime's private names
    offenders = []
    for folder in ("export", "benchmarks", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            own = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
            own |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgevlm"):
                    offenders += [(path.name, a.name) for a in node.names if a.name.startswith("_")]
                elif isinstance(node, ast.Attribute) and node.attr in private and node.attr not in own:
                    offenders.append((path.name, node.attr))
    assert not offenders, offenders


def test_every_error_class_lives_in_errors_and_is_exported():
    """One error model: a user catches edgevlm.X for every exception class the library defines (the server's
    HTTP-level classes are its own business)."""
    import edgevlm
    from edgevlm import errors

    outside = []
    for path in PKG.rglob("*.py"):
        if path.parent.name == "server" or path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", "").endswith("Error") for b in node.bases):
                outside.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not outside, outside
    defined = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)}
    assert defined <= set(edgevlm.__all__) and all(getattr(edgevlm, n) is getattr(errors, n) for n in defined)


def test_lazy_names_are_visible_to_type_checkers():
    """edgevlm imports its heavy names on first use (PEP 562); the TYPE_CHECKING block must name the same objects,
    or an IDE offers names that are not there (or misses ones that are)."""
    import edgevlm

    tree = ast.parse((PKG / "__init__.py").read_text())
    checked = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom)
                checked.update({a.name: imp.module for a in imp.names})
    assert checked == dict(edgevlm._LAZY)
    for name in edgevlm._LAZY:
        assert name in edgevlm.__all__ and getattr(edgevlm, name) is not None


def test_library_raises_only_edgevlm_errors():
    """What a caller of the library can catch is an EdgeVLMError from errors.py: no `raise ValueError(...)`,
    TypeError, RuntimeError or KeyError in edgevlm/ (one raised only to be turned into a ModelError in the same
    module says so on its line)."""
    bad = []
    for path in sorted((ROOT / "edgevlm").rglob("*.py")):
        tree = ast.parse(path.read_text())
        lines = path.read_text().splitlines()
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Raise)
                and isinstance(node.exc, ast.Call)
                and isinstance(node.exc.func, ast.Name)
                and node.exc.func.id in ("ValueError", "TypeError", "RuntimeError", "KeyError", "Exception")
                and "ModelError" not in lines[node.lineno - 1]
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, "\n".join(bad)


def test_public_options_are_keyword_only():
    """The public calls take their subject positionally (model; messages; images and question; video; source) and
    every option by name only, so options can be added or reordered without breaking callers."""
    import inspect

    import edgevlm
    from edgevlm.media.live import watch
    from edgevlm.media.timeline import timeline

    positional = {
        edgevlm.load: 1,
        edgevlm.VLM.chat: 2,
        edgevlm.VLM.ask: 3,
        edgevlm.VLM.caption: 2,
        edgevlm.VLM.caption_batch: 2,
        edgevlm.VLM.stream: 3,
        edgevlm.VLM.ask_video: 3,
        edgevlm.VLM.caption_video: 2,
        edgevlm.VLM.prepare: 2,
        edgevlm.VLM.start: 2,
        edgevlm.VLM.generator: 3,
        edgevlm.VLM.logits: 3,
        edgevlm.VLM.preprocess: 2,
        edgevlm.VLM.user_message: 2,
        edgevlm.Engine.__init__: 2,
        timeline: 2,
        watch: 2,
    }
    for fn, n in positional.items():
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
        assert all(p.kind is p.KEYWORD_ONLY for p in params[n:]), (fn.__qualname__, params[n:])
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[:n]), (fn.__qualname__, params[:n])
