"""Error codes live in one place: `dreamforge.error_codes`, documented in docs/errors.md.

The doc's tables must list exactly the catalog's codes, with the same status, retry advice and
surfaces; and no code under src/dreamforge may write a code as a string literal where it raises or
records one (read from the source, so a literal in a branch no test reaches is found too).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dreamforge.error_codes import CATALOG, HTTP_STATUS_PATTERN, ErrorCode, Surface, http_code

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "dreamforge"
CATALOG_MODULE = PACKAGE / "error_codes.py"
DOC = ROOT / "docs" / "errors.md"

# Sections of docs/errors.md, and the surface whose codes each one lists (a code that appears in
# several places is listed once, under the first of these it belongs to).
SECTIONS = {
    "API answers": Surface.api,
    "Job failure codes": Surface.job,
    "Model command codes": Surface.cli,
    "Client-made codes": Surface.client,
}
SURFACE_ORDER = list(SECTIONS.values())

# Calls whose positional argument at this index is an error code.
CODE_ARGUMENT = {"EngineError": 0, "SignatureError": 0, "ApiError": 1, "error_response": 1, "finish_job": 3}
# Keyword arguments, assignment targets and dict keys that hold an error code.
CODE_NAMES = {"code", "error_code"}


# --- the doc ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocRow:
    section: str
    code: str
    status: str
    retry: str
    where: str


def _doc_rows() -> list[DocRow]:
    """Every row of every table whose first column is `Code`, with the `##` section it is under."""
    rows: list[DocRow] = []
    section = ""
    header: list[str] | None = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section, header = line[3:].strip(), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if header[0] != "Code" or set(line) <= set("|-: "):
            continue
        named = dict(zip(header, cells, strict=True))
        code = re.fullmatch(r"`([^`]+)`", named["Code"])
        assert code, f"not a `code` cell: {line}"
        rows.append(DocRow(section, code.group(1), named["HTTP status"], named["Retry?"], named["Where"]))
    return rows


DOC_ROWS = _doc_rows()
DOC_CODES = [row for row in DOC_ROWS if "<" not in row.code]


def test_the_doc_tables_were_read() -> None:
    assert len(DOC_CODES) > 20
    assert {row.section for row in DOC_ROWS} == set(SECTIONS)


def test_the_catalog_describes_every_code_once() -> None:
    assert set(CATALOG) == set(ErrorCode)
    for code in ErrorCode:
        assert code.name == code.value, code
        assert CATALOG[code].surfaces, code
        assert CATALOG[code].meaning.strip(), code


def test_the_doc_lists_exactly_the_catalogs_codes() -> None:
    listed = [row.code for row in DOC_CODES]
    assert len(listed) == len(set(listed)), "a code is listed twice"
    assert set(listed) == {code.value for code in ErrorCode}


@pytest.mark.parametrize("row", DOC_CODES, ids=lambda row: row.code)
def test_the_doc_agrees_with_the_catalog(row: DocRow) -> None:
    info = CATALOG[ErrorCode(row.code)]
    assert row.status == ("—" if info.status is None else str(info.status))
    assert row.retry == ("yes" if info.retry else "no")
    assert row.where == ", ".join(s.value for s in SURFACE_ORDER if s in info.surfaces)
    first = min(info.surfaces, key=SURFACE_ORDER.index)
    assert SECTIONS[row.section] is first, f"{row.code} belongs under the section of `{first}`"


def test_codes_made_from_a_status_are_documented_as_a_pattern() -> None:
    assert [row.code for row in DOC_ROWS if "<" in row.code] == [HTTP_STATUS_PATTERN]
    assert http_code(502) == HTTP_STATUS_PATTERN.replace("<status>", "502")


# --- the source ------------------------------------------------------------------------------------


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _literal_values(node: ast.expr | None) -> Iterator[ast.expr]:
    """The string literals (and f-strings) `node` can evaluate to."""
    if node is None:
        return
    if (isinstance(node, ast.Constant) and isinstance(node.value, str)) or isinstance(node, ast.JoinedStr):
        yield node
    elif isinstance(node, ast.IfExp):
        yield from _literal_values(node.body)
        yield from _literal_values(node.orelse)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            yield from _literal_values(value)


def _is_member(node: ast.expr) -> bool:
    """`ErrorCode.<member>`."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "ErrorCode"
        and node.attr in ErrorCode.__members__
    )


def _pairs(targets: list[ast.expr], value: ast.expr) -> Iterator[tuple[ast.expr, ast.expr]]:
    """(target, value) for each name an assignment binds, unpacking `a, b = x, y`."""
    for target in targets:
        if (
            isinstance(target, ast.Tuple)
            and isinstance(value, ast.Tuple)
            and len(target.elts) == len(value.elts)
        ):
            yield from zip(target.elts, value.elts, strict=True)
        else:
            yield target, value


def _error_classes(
    trees: list[ast.Module], known: frozenset[str] = frozenset({"DreamForgeError"})
) -> set[str]:
    """Names of the classes in `trees` that derive from `known` error classes, and those."""
    bases = {
        node.name: {_name(base) for base in node.bases}
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }
    found = set(known)
    while more := {name for name, of in bases.items() if of & found} - found:
        found |= more
    return found


class _Scan(ast.NodeVisitor):
    """Finds error codes written as literals; `problems` lists them as `line: what`."""

    def __init__(self, error_classes: set[str]) -> None:
        self.problems: list[str] = []
        self._error_classes = error_classes
        self._classes: list[ast.ClassDef] = []

    def _flag(self, node: ast.expr | None, where: str) -> None:
        for literal in _literal_values(node):
            self.problems.append(f"{literal.lineno}: {where} is the literal {ast.unparse(literal)}")
        if isinstance(node, ast.Attribute) and _name(node.value) == "ErrorCode" and not _is_member(node):
            self.problems.append(f"{node.lineno}: {where} names no ErrorCode member: {ast.unparse(node)}")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._classes.append(node)
        # An error class names its code with a member, never computes or spells it.
        for statement in node.body if node.name in self._error_classes else []:
            value = statement.value if isinstance(statement, ast.Assign | ast.AnnAssign) else None
            targets = statement.targets if isinstance(statement, ast.Assign) else []
            if isinstance(statement, ast.AnnAssign):
                targets = [statement.target]
            if value is not None and any(_name(t) in CODE_NAMES for t in targets) and not _is_member(value):
                self.problems.append(
                    f"{statement.lineno}: class {node.name} sets its code to {ast.unparse(value)}, "
                    "not an ErrorCode member"
                )
        self.generic_visit(node)
        self._classes.pop()

    def _callee(self, call: ast.Call) -> str | None:
        func = call.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "__init__"
            and isinstance(func.value, ast.Call)
            and _name(func.value.func) == "super"
            and self._classes
        ):
            # `super().__init__(...)` calls the base class: `OutOfMemory(EngineError)` passes a code.
            bases = [_name(base) for base in self._classes[-1].bases]
            return next((b for b in bases if b in CODE_ARGUMENT), None)
        return _name(func)

    def visit_Call(self, node: ast.Call) -> None:
        callee = self._callee(node)
        if callee in CODE_ARGUMENT and len(node.args) > CODE_ARGUMENT[callee]:
            self._flag(node.args[CODE_ARGUMENT[callee]], f"the code argument of {callee}()")
        for keyword in node.keywords:
            if keyword.arg in CODE_NAMES:
                self._flag(keyword.value, f"{keyword.arg}= of {ast.unparse(node.func)}()")
        self.generic_visit(node)

    def _assigned(self, targets: list[ast.expr], value: ast.expr | None) -> None:
        if value is None:
            return
        for target, part in _pairs(targets, value):
            if _name(target) in CODE_NAMES:
                self._flag(part, f"{ast.unparse(target)} =")

    def visit_Assign(self, node: ast.Assign) -> None:
        self._assigned(node.targets, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._assigned([node.target], node.value)
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and key.value in CODE_NAMES:
                self._flag(value, f'the "{key.value}" of a dict')
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        # Anywhere else: a string that is exactly a code is a code written by hand.
        if isinstance(node.value, str) and node.value in ErrorCode.__members__:
            self.problems.append(f"{node.lineno}: the literal {node.value!r} spells an ErrorCode")

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        # `http_<status>` is made by `error_codes.http_code` only.
        head = node.values[0] if node.values else None
        if isinstance(head, ast.Constant) and str(head.value).startswith("http_"):
            self.problems.append(f"{node.lineno}: {ast.unparse(node)} makes a code; use http_code()")
        self.generic_visit(node)


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p != CATALOG_MODULE)
TREES = {path: ast.parse(path.read_text()) for path in SOURCES}
ERROR_CLASSES = _error_classes([*TREES.values(), ast.parse(CATALOG_MODULE.read_text())])


def scan(source: str | ast.Module) -> list[str]:
    """Where `source` writes an error code as a literal."""
    tree = ast.parse(source) if isinstance(source, str) else source
    visitor = _Scan(_error_classes([tree], frozenset(ERROR_CLASSES)))
    visitor.visit(tree)
    return visitor.problems


def test_the_source_was_found() -> None:
    assert PACKAGE / "engines" / "base.py" in SOURCES
    assert CATALOG_MODULE not in SOURCES
    assert {"EngineError", "OutOfMemory", "RemoteNotFound", "QueueFull"} <= ERROR_CLASSES
    assert "ErrorResponse" not in ERROR_CLASSES


def test_no_error_code_is_written_as_a_literal_outside_the_catalog() -> None:
    problems = {str(path.relative_to(ROOT)): found for path, tree in TREES.items() if (found := scan(tree))}
    assert problems == {}


def test_every_code_is_used_somewhere() -> None:
    used: set[str] = set()
    for tree in TREES.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_member(node):
                used.add(node.attr)
    assert set(ErrorCode.__members__) - used == set()


@pytest.mark.parametrize(
    "source",
    [
        'raise EngineError("model_files_missing", f"model {name!r} is missing")',
        'raise EngineError(code="gpu_oom", message="m")',
        'raise ApiError(404, "not_found", "no such job")',
        'return error_response(503, "database_unavailable", "down")',
        'finish_job(s, job, JobStatus.failed, "worker_lost", "gave up")',
        'finish_job(s, job, JobStatus.failed, error_code="some_new_code")',
        "class Gone(DreamForgeError):\n    code = 'gone'\n",
        "class Gone(DreamForgeError):\n    code: str = ErrorCode.internal_error.value\n",
        "class Oom(EngineError):\n    def __init__(self, m):\n        super().__init__('oom', m)\n",
        'super().__init__(message, code="no_model_installed" if reason == "none" else None)',
        'status, code, message = JobStatus.failed, "engine_error", str(exc)',
        'ErrorResponse(code=f"http_{response.status_code}", message="x")',
        'error = {"code": "bad_thing", "message": message}',
        'CODES = {400: "bad_request"}',
        "raise EngineError(ErrorCode.no_such_member, 'typo')",
    ],
)
def test_the_scan_finds_a_literal_code(source: str) -> None:
    assert scan(source) != []


@pytest.mark.parametrize(
    "source",
    [
        'raise EngineError(ErrorCode.model_files_missing, f"model {name!r} is missing")',
        "class Gone(DreamForgeError):\n    code = ErrorCode.not_found\n    status = 404\n",
        'super().__init__(message, code=ErrorCode.no_model_installed if reason == "none" else None)',
        "finish_job(s, job, JobStatus.failed, code, message)",
        "return error_response(exc.status, exc.code, exc.message)",
        'raise fail("interrupted", code=130)',
        'log.info("%s failed with code %s", job_id, code)',
    ],
)
def test_the_scan_accepts_member_references(source: str) -> None:
    assert scan(source) == []
