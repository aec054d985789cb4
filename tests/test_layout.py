"""The shape of edge/: what imports what, and who may touch h11's insides.

Structure the README's Layout section promises, checked from the source:
- every module imports on its own, in a fresh interpreter (an import cycle
  between modules shows up as an ImportError in one of them);
- imports between sub-packages flow one way, down the layers of LAYERS,
  with no cycle; a new upward import fails naming the file that makes it;
- h11's private internals are used from edge/http/h11_internals.py alone;
- no test module imports another test module: what tests share lives in
  tests/support/ (or conftest.py).
"""

from __future__ import annotations

import ast
import functools
import io
import re
import subprocess
import sys
import time
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / "edge"
TESTS = ROOT / "tests"

# Sub-packages from the top of the request path down: each may import the
# ones below it, never one above. login sits above proxy because it fetches
# through proxy.fetch. "edge" is the package itself (edge/__init__.py: the
# version), importable by all; "__main__" is `python -m edge`.
LAYERS = ["__main__", "cli", "runtime", "login", "proxy", "http", "access", "config", "edge"]
# The exact edges that order allows (every pair top -> below), spelled out so
# that the rule reads without code.
ALLOWED = {
    ("__main__", "cli"),
    ("cli", "runtime"), ("cli", "login"), ("cli", "proxy"), ("cli", "http"),
    ("cli", "access"), ("cli", "config"), ("cli", "edge"),
    ("runtime", "login"), ("runtime", "proxy"), ("runtime", "http"),
    ("runtime", "access"), ("runtime", "config"), ("runtime", "edge"),
    ("login", "proxy"), ("login", "http"), ("login", "access"), ("login", "config"), ("login", "edge"),
    ("proxy", "http"), ("proxy", "access"), ("proxy", "config"), ("proxy", "edge"),
    ("http", "access"), ("http", "config"), ("http", "edge"),
    ("access", "config"), ("access", "edge"),
    ("config", "edge"),
}  # fmt: skip
TIMEOUT = 60.0  # s for all the fresh-interpreter imports together; they take a few
PARALLEL = 4  # interpreters at once: the box has 2 cores and other tests run too


@functools.cache
def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(EDGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def package_of(module: str) -> str:
    """The layer a dotted module name belongs to."""
    parts = module.split(".")
    if parts == ["edge", "__main__"]:
        return "__main__"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "edge"


def imported(path: Path, module: str, source: str | None = None) -> set[str]:
    """Every edge module `path` (or `source`, as if it were that file)
    imports, wherever the import sits (module level, TYPE_CHECKING, inside a
    function); relative imports resolved. `from edge.http import flow` imports
    the package and, since flow is a module of it, that module too."""
    known = {name for name, _ in modules()}
    names: set[str] = set()
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return {n for n in names if n == "edge" or n.startswith("edge.")}


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer's package, imported package) -> the importing files."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, path in modules():
        source = package_of(module)
        for name in imported(path, module):
            target = package_of(name)
            if target != source:
                edges.setdefault((source, target), []).append(str(path.relative_to(ROOT)))
    return edges


def test_allowed_edges_follow_the_layers() -> None:
    """ALLOWED is exactly the downward pairs of LAYERS (the list and the set agree)."""
    order = {name: i for i, name in enumerate(LAYERS)}
    downward = {(a, b) for a in LAYERS for b in LAYERS if order[a] < order[b]}
    downward -= {("__main__", b) for b in LAYERS if b != "cli"}  # the entry point runs the CLI, only
    assert downward == ALLOWED


def test_imports_between_packages_flow_down_the_layers() -> None:
    wrong = {edge: files for edge, files in package_edges().items() if edge not in ALLOWED}
    assert not wrong, (
        "imports against the layering "
        + " > ".join(LAYERS)
        + ":\n"
        + "\n".join(
            f"  {a} -> {b}: {', '.join(sorted(set(files)))}" for (a, b), files in sorted(wrong.items())
        )
    )


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for a, b in package_edges():
        graph.setdefault(a, set()).add(b)
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle or [])


def module_graph(sources: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Module -> the edge modules it imports (`sources`: a module's text to
    read instead of its file)."""
    known = {module for module, _ in modules()}
    given = sources or {}
    return {
        module: {
            name for name in imported(path, module, given.get(module)) if name in known and name != module
        }
        for module, path in modules()
    }


def test_no_import_cycle_between_modules() -> None:
    """Inside a package too: TYPE_CHECKING and function-level imports count,
    since a cycle hidden there is still two modules that need each other."""
    cycle = _find_cycle(module_graph())
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    "spelling",
    ["from edge.http import connection", "from . import connection", "import edge.http.connection"],
)
def test_a_cycle_hidden_in_a_function_is_found_however_spelled(spelling: str) -> None:
    """The graph above sees a module imported by name from its package
    (connection imports flow as `from edge.http import flow`): flow.py
    importing connection back, inside a function, is a cycle it reports."""
    flow = (EDGE / "http" / "flow.py").read_text() + f"\n\ndef _late() -> None:\n    {spelling}\n"
    cycle = _find_cycle(module_graph({"edge.http.flow": flow}))
    assert cycle is not None and {"edge.http.flow", "edge.http.connection"} <= set(cycle)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in `graph` as a path that returns to its start, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_find_cycle_finds_one() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}}) is None


def test_every_module_imports_on_its_own() -> None:
    """`python -c "import edge.<package>.<module>"`, one fresh interpreter per module. The
    entry point `edge.__main__` runs the CLI when imported; `python -m edge`
    is what the end-to-end tests start."""
    pending = [m for m, _ in modules() if m != "edge.__main__"]
    running: list[tuple[str, subprocess.Popen[bytes]]] = []
    failed: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while pending or running:
            while pending and len(running) < PARALLEL:
                module = pending.pop()
                command = [sys.executable, "-c", f"import {module}"]
                proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                running.append((module, proc))
            module, proc = running[0]
            try:
                _, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"importing {module} did not finish within the test's {TIMEOUT} s")
            running.pop(0)
            if proc.returncode:
                failed.append(f"{module}:\n{err.decode(errors='replace').strip().splitlines()[-1]}")
    finally:
        for _, proc in running:
            proc.kill()
            proc.communicate()
    assert not failed, "modules that do not import on their own:\n" + "\n".join(failed)


# h11's insides, as a scan of the source finds them. Outside the one owner,
# edge may use h11's public API only: no `h11._x` module or name, no private
# keyword (`h11.Response(..., _parsed=True)`), no event built or changed
# around its __init__ (`object.__new__`, `object.__setattr__`), no assignment
# to an attribute of an h11 object, no private attribute read.
#
# Which expressions hold h11 objects is found structurally: names bound to a
# call of something from h11 (`conn = h11.Connection(...)`), or annotated
# with an h11 type (`conn: h11.Connection`, a parameter or a class field:
# `self.conn` then), and attributes of those. The attribute names below are
# caught on any object besides (an alias or a container hides the type):
# h11's private attributes that edge's internals module reads, and the
# public connection state that only h11 (or that module) may move.
H11_PRIVATE_ATTRS = frozenset(
    {"_cstate", "_reader", "_writer", "_receive_buffer", "_receive_buffer_closed", "_process_event",
     "_request_method", "_full_items", "_bytes_in_chunk", "_remaining", "_length", "_parsed"}
)  # fmt: skip
H11_STATE_ATTRS = frozenset(
    {"client_is_waiting_for_100_continue", "their_http_version", "our_state", "their_state", "our_role",
     "their_role", "states", "trailing_data"}
)  # fmt: skip
H11_OWNER = EDGE / "http" / "h11_internals.py"


class H11Scan(ast.NodeVisitor):
    """The uses of h11's insides in one module's source (code only: prose in
    comments and docstrings may name them)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.h11_names: set[str] = set()  # local names of h11 and of what was imported from it
        self.held: set[str] = set()  # expressions (as unparsed) that hold an h11 object
        self.uses: list[str] = []

    def scan(self, tree: ast.Module) -> list[str]:
        for node in ast.walk(tree):  # first what is h11's, wherever it is bound
            self._note_imports(node)
        for node in ast.walk(tree):
            self._note_held(node)
        self.visit(tree)
        return self.uses

    def _flag(self, node: ast.AST, why: str) -> None:
        self.uses.append(f"{self.where}:{getattr(node, 'lineno', 0)}: {why}: {ast.unparse(node)}")

    def _note_imports(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "h11" or alias.name.startswith("h11."):
                    self.h11_names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "h11":
            self.h11_names.update(alias.asname or alias.name for alias in node.names)

    def _from_h11(self, node: ast.AST) -> bool:
        """`node` names something of h11's (h11.X, an imported name, or an
        annotation mentioning one, quoted or not)."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval")
            except SyntaxError:
                return False
        return any(isinstance(n, ast.Name) and n.id in self.h11_names for n in ast.walk(node))

    def _note_held(self, node: ast.AST) -> None:
        call = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if (
            isinstance(node, ast.Assign | ast.AnnAssign)
            and isinstance(call, ast.Call)
            and self._from_h11(call.func)
        ):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            self.held.update(ast.unparse(t) for t in targets)
        if isinstance(node, ast.AnnAssign) and self._from_h11(node.annotation):
            self.held.add(ast.unparse(node.target))
        elif isinstance(node, ast.arg) and node.annotation is not None and self._from_h11(node.annotation):
            self.held.add(node.arg)
        elif isinstance(node, ast.ClassDef):
            for field in node.body:  # a class field holding an h11 object: self.<field> in its methods
                if not (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)):
                    continue
                if self._from_h11(field.annotation):
                    self.held.add(f"self.{field.target.id}")

    def _holds_h11(self, node: ast.expr) -> bool:
        text = ast.unparse(node)
        return text in self.held or text in self.h11_names

    def visit_Import(self, node: ast.Import) -> None:
        if any(alias.name.startswith("h11._") for alias in node.names):
            self._flag(node, "imports an h11 private module")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.startswith("h11._"):
            self._flag(node, "imports from an h11 private module")
        elif module == "h11" and any(alias.name.startswith("_") for alias in node.names):
            self._flag(node, "imports a private name of h11")

    def visit_Call(self, node: ast.Call) -> None:
        func = ast.unparse(node.func)
        if func in ("object.__setattr__", "object.__new__", "object.__delattr__"):
            # An object filling in its own frozen fields (`self`) is edge's
            # own; anything else is an object made or changed around __init__.
            if not (func != "object.__new__" and node.args and ast.unparse(node.args[0]) == "self"):
                self._flag(node, "builds or changes an object around its __init__")
        elif func in ("setattr", "delattr", "getattr") and len(node.args) >= 2:
            name = node.args[1]
            named = isinstance(name, ast.Constant) and name.value in H11_PRIVATE_ATTRS | H11_STATE_ATTRS
            if named or (func != "getattr" and self._holds_h11(node.args[0])):
                self._flag(node, f"{func} on h11's insides")
        if self._from_h11(node.func) and any((k.arg or "").startswith("_") for k in node.keywords):
            self._flag(node, "passes h11 a private keyword")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr, owner = node.attr, node.value
        private = attr.startswith("_") and not attr.startswith("__")
        is_self = isinstance(owner, ast.Name) and owner.id == "self"
        if isinstance(node.ctx, ast.Store | ast.Del):
            if (
                attr in H11_STATE_ATTRS
                or (attr in H11_PRIVATE_ATTRS and not is_self)
                or self._holds_h11(owner)
            ):
                self._flag(node, "assigns to an attribute of an h11 object")
        elif private and (self._holds_h11(owner) or (attr in H11_PRIVATE_ATTRS and not is_self)):
            self._flag(node, "reads a private attribute of h11's")
        self.generic_visit(node)


def h11_private_uses(source: str, where: str) -> list[str]:
    """Where `source` (the module `where`) touches h11's insides."""
    return H11Scan(where).scan(ast.parse(source, where))


def test_h11_internals_are_used_in_one_module() -> None:
    uses = [
        use
        for _, path in modules()
        if path != H11_OWNER
        for use in h11_private_uses(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not uses, "h11 internals outside edge/http/h11_internals.py:\n" + "\n".join(uses)


def test_the_h11_scan_sees_the_owner() -> None:
    """The scan does find the real uses, so finding none elsewhere means something."""
    assert len(h11_private_uses(H11_OWNER.read_text(), "h11_internals.py")) > 10


# Each line one way to reach h11's insides, and the scan must see each
# (line numbers are what it reports); the public uses at the end, none.
VIOLATIONS = """\
import h11
import h11._readers
from h11._receivebuffer import ReceiveBuffer
from h11 import _util
from h11 import Response as R, Connection
a = h11.Response(status_code=200, headers=[], _parsed=True)
b = R(status_code=200, headers=[], _parsed=True)
object.__setattr__(a, "status_code", 204)
c = object.__new__(h11.Request)
conn = h11.Connection(h11.SERVER)
conn.client_is_waiting_for_100_continue = False
conn.their_http_version = b"1.0"
other.our_state = h11.DONE
x.their_state = h11.IDLE
def f(d: h11.Data, k: "Connection") -> None: d.data = b""
def g(k: Connection) -> None: k.anything = 1
class Holder:
    conn: h11.Connection
    def m(self) -> None: self.conn.our_role = None
    def n(self) -> None: self.conn.extra = 1
n = conn._cstate
o = whatever._reader
p = conn._anything_private
setattr(conn, "anything", 1)
q = getattr(thing, "_receive_buffer")
conn._reader._remaining -= 1
e = h11._util
y = h11.Response(status_code=200, headers=[])
z = conn.send(h11.Data(data=b"x"))
w = conn.their_state is h11.IDLE
object.__setattr__(self, "_own_field", 1)
self._remaining = 3
"""
CLEAN_FROM = VIOLATIONS.splitlines().index("y = h11.Response(status_code=200, headers=[])") + 1


def test_the_h11_scan_sees_each_way_in() -> None:
    uses = h11_private_uses(VIOLATIONS, "snippet")
    lines = {int(use.split(":")[1]) for use in uses}
    expected = set(range(2, CLEAN_FROM))
    expected -= {5, 10, 17, 18}  # public imports, `conn = h11.Connection(...)`, `class Holder:`, its field
    assert lines == expected, "\n".join(uses)


# `edge.<package>.<module>` (maybe followed by a name in it) or
# `edge/<package>/<module>.py` as prose names them; not preceded by a path
# or word character ("conf/edge.toml").
DOTTED_RE = re.compile(r"(?<![\w/.-])edge\.([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)")
PATH_RE = re.compile(r"(?<![\w/.-])edge/([a-z_][a-z0-9_/]*\.py)\b")
NOT_MODULES = frozenset({"toml", "log", "pid", "sock"})  # file names: edge.toml, edge.log ...


def prose(path: Path) -> list[tuple[int, str]]:
    """The comments and docstrings of a Python file (a logger's name, a
    string in code, is not prose about the layout); every line of a TOML file
    after a `#`."""
    text = path.read_text()
    if path.suffix != ".py":
        return [(n, line.partition("#")[2]) for n, line in enumerate(text.splitlines(), 1)]
    found = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                start = node.body[0].lineno
                found.extend((start + i, line) for i, line in enumerate(doc.splitlines()))
    return sorted(found)


def names_a_module(parts: list[str]) -> bool:
    """A module on the way down the dotted parts, whatever follows it (a name in it)."""
    where = EDGE
    for part in parts:
        if (where / f"{part}.py").is_file():
            return True
        if not (where / part).is_dir():
            return where != EDGE and (where / "__init__.py").is_file() and part.isupper()
        where = where / part
    return True


def stale_names(paths: list[Path]) -> list[str]:
    stale = []
    for path in paths:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        for line, text in prose(path):
            for m in DOTTED_RE.finditer(text):
                parts = m.group(1).split(".")
                if parts[0] not in NOT_MODULES and not names_a_module(parts):
                    stale.append(f"{shown}:{line}: {m.group(0)}")
            for m in PATH_RE.finditer(text):
                if not (EDGE / m.group(1)).is_file():
                    stale.append(f"{shown}:{line}: {m.group(0)}")
    return stale


def test_modules_named_in_comments_and_docstrings_exist() -> None:
    """A comment naming a module by the flat name it had before the
    sub-packages sends a reader to nothing."""
    paths = [*sorted(EDGE.rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py")), ROOT / "pyproject.toml"]
    stale = stale_names(paths)
    assert not stale, "names of modules that do not exist:\n" + "\n".join(stale)


def test_the_stale_name_scan_finds_one(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""edge.decide moved; edge.access.decide.decide is fine; so is conf/edge.toml."""\n'
        "# see edge/store.py (moved) and edge/login/store.py\n"
        'log = "edge.faults"  # a logger name in code is no prose\n'
    )
    assert stale_names([sample]) == ["sample.py:1: edge.decide", "sample.py:2: edge/store.py"]


# -- the tests themselves ------------------------------------------------------------
#
# A test module importing another ties two collected files together (only
# because pytest put the other's directory on sys.path: under
# --import-mode=importlib the import fails). Whatever tests share belongs in
# tests/support/ (on sys.path, see pyproject.toml), imported from there by
# every module that needs it, the one it came from too.


def is_test_module(name: str) -> bool:
    """`name` (dotted) is a module named test_*."""
    return name.rpartition(".")[2].startswith("test_")


def imports_of_test_modules(source: str, where: str) -> list[str]:
    """Where `source` (the file `where`) imports a test module: `import
    test_x`, `from test_x import ...`, `from . import test_x`, `from
    tests.http import test_x`, or importlib.import_module / __import__ of
    such a name; anywhere in the file, a function body or TYPE_CHECKING too."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [module] if module else []
            # A test module imported by name from its package (`tests` and
            # its sub-packages, or a relative one); a function named test_*
            # imported from a helper module is no module.
            if node.level or module == "tests" or module.startswith("tests."):
                names += [f"{module}.{alias.name}" if module else alias.name for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        found += [
            f"{where}:{getattr(node, 'lineno', 0)}: imports {name}" for name in names if is_test_module(name)
        ]
    return found


def test_no_test_module_imports_another() -> None:
    found = [
        use
        for path in sorted(TESTS.rglob("*.py"))
        for use in imports_of_test_modules(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not found, (
        "test modules imported by other modules (move what they share to tests/support/):\n"
        + "\n".join(found)
    )


def test_the_test_import_scan_finds_each_way_in() -> None:
    # One line each (line numbers are what the scan reports); the last four import no test module.
    sample = "\n".join(
        [
            "import test_proxy",
            "from test_malformed import exchange",
            "import tests.http.test_protocol as protocol",
            "from tests.http import test_fuzz",
            "from . import test_flows",
            'def f() -> None: importlib.import_module("test_upstream")',
            "import upstream_server, testing, test",
            "from conftest import write_config",
            "from raw_client import exchange, test_like_name",
            "from tests.support import raw_client",
        ]
    )
    found = imports_of_test_modules(sample, "sample")
    assert [int(use.split(":")[1]) for use in found] == [1, 2, 3, 4, 5, 6], found
    assert found[3] == "sample:4: imports tests.http.test_fuzz"
