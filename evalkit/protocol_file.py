"""Reading a protocol file so that every problem can be pointed at a line and column.

PyYAML's safe loader is used for scanning and parsing, but mappings are built here from
the node tree so that duplicate keys are errors (PyYAML keeps the last one silently) and
every key and value keeps its position. Timestamps are left as text: the canonical form
hashes what the author wrote, and pydantic parses dates where a date is expected.
"""

from __future__ import annotations

import copy
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from evalkit.protocol import Problem, Protocol, consistency_problems

Path_ = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """Safe loader that does not turn dates into datetime objects."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class Issue:
    """One problem in a protocol file, with a 1-based line and column."""

    file: str
    line: int
    column: int
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.column}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


@dataclass
class Located:
    """Plain data from a YAML document plus where each key and value stands."""

    data: Any
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)  # duplicate keys (first one kept)

    def where(self, path: Path_, at_key: bool = False) -> tuple[int, int]:
        for n in range(len(path), -1, -1):
            p = path[:n]
            table = self.keys if at_key and n == len(path) else self.values
            if p in table:
                return table[p]
            if p in self.keys:
                return self.keys[p]
        return (1, 1)


class ProtocolFileError(Exception):
    """A protocol file with problems; ``issues`` lists all of them."""

    def __init__(self, issues: list[Issue]):
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _build(loader: _Loader, node: yaml.Node, path: Path_, out: Located, issues: list, file: str):
    out.values[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                line, col = _mark(key_node)
                issues.append(
                    Issue(
                        file,
                        line,
                        col,
                        f"key {key!r} is not text",
                        "keys are names such as 'title'",
                    )
                )
                continue
            if key in result:
                line, col = _mark(key_node)
                first = out.keys[(*path, key)]
                issues.append(
                    Issue(
                        file,
                        line,
                        col,
                        f"duplicate key {key!r}",
                        f"first given at line {first[0]}; keep one",
                    )
                )
                continue
            out.keys[(*path, key)] = _mark(key_node)
            result[key] = _build(loader, value_node, (*path, key), out, issues, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, child, (*path, i), out, issues, file)
            for i, child in enumerate(node.value)
        ]
    value = loader.construct_object(node, deep=True)
    if isinstance(value, float) and not math.isfinite(value):
        line, col = _mark(node)
        issues.append(
            Issue(
                file,
                line,
                col,
                f"{node.value!r} is not a finite number",
                "write an ordinary number",
            )
        )
        return None
    return value


def read_yaml(text: str, file: str) -> Located:
    """Parse one YAML document. Syntax errors raise ProtocolFileError; duplicate and
    non-text keys are collected in ``issues`` (keeping the first value) so that later
    checks can still run and report everything at once."""
    issues: list[Issue] = []
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"YAML syntax error: {exc.problem or exc.context}"
        near = text.splitlines()[max(line - 2, 0) : line]
        hint = (
            "indent with spaces, never tabs"
            if "\\t" in message or any("\t" in x for x in near)
            else "check indentation, colons and quotes on this line or the one above"
        )
        raise ProtocolFileError([Issue(file, line, col, message, hint)]) from None
    except yaml.YAMLError as exc:
        raise ProtocolFileError([Issue(file, 1, 1, f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    if root is None:
        raise ProtocolFileError(
            [
                Issue(
                    file,
                    1,
                    1,
                    "the file is empty",
                    "start from 'evalkit init NAME --template individual'",
                )
            ]
        )
    out = Located(data=None, issues=issues)
    out.data = _build(loader, root, (), out, issues, file)
    if not isinstance(out.data, dict):
        raise ProtocolFileError(
            [
                Issue(
                    file,
                    1,
                    1,
                    "a protocol is a mapping of keys to values",
                    "the first line should read like 'id: my-pilot'",
                )
            ]
        )
    return out


# --- mapping pydantic errors back to the file -----------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list):
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _model_at(data: Any, path: Path_) -> type[BaseModel] | None:
    """The model class whose keys are valid at ``path`` (for 'did you mean' hints)."""
    cls: type[BaseModel] | None = Protocol
    node = data
    for elem in path:
        if isinstance(elem, int):
            node = node[elem] if isinstance(node, list) and elem < len(node) else None
            continue
        if cls is None or elem not in cls.model_fields:
            return None
        node = node.get(elem) if isinstance(node, dict) else None
        candidates = _models_in(cls.model_fields[elem].annotation)
        if len(candidates) > 1 and isinstance(node, dict):
            tagged = [
                c
                for c in candidates
                if "method" in c.model_fields
                and node.get("method") in typing.get_args(c.model_fields["method"].annotation)
            ]
            candidates = tagged
        cls = candidates[0] if len(candidates) == 1 else None
    return cls


def _data_path(data: Any, loc: tuple) -> Path_:
    """Drop pydantic's union tags from an error location, keeping real keys and indexes;
    a key pydantic expected but the file lacks ends the path."""
    path: list[str | int] = []
    node = data
    for elem in loc:
        if isinstance(node, dict):
            if elem in node:
                node = node[elem]
                path.append(elem)
            elif elem not in (node.get("method"), node.get("from")):  # union tags, not keys
                path.append(elem)
                break
        elif isinstance(node, list) and isinstance(elem, int) and 0 <= elem < len(node):
            node = node[elem]
            path.append(elem)
    return tuple(path)


def _node(data: Any, path: Path_) -> Any:
    for elem in path:
        data = data[elem]
    return data


def _dotted(path: Path_) -> str:
    text = ""
    for p in path:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "(top level)"


def _pydantic_issues(exc: ValidationError, located: Located, file: str) -> list[Issue]:
    issues = []
    seen = set()
    for err in exc.errors():
        path = _data_path(located.data, err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            key = path[-1]
            line, col = located.where(path, at_key=True)
            model = _model_at(located.data, path[:-1])
            allowed = sorted(f.alias or n for n, f in model.model_fields.items()) if model else []
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else (f"allowed here: {', '.join(allowed)}" if allowed else "remove it")
            )
            issue = Issue(file, line, col, f"unknown key {key!r} in {_dotted(path[:-1])}", hint)
        elif kind == "missing":
            parent = _node(located.data, path[:-1])
            model = _model_at(located.data, path[:-1])
            strays = (
                [k for k in parent if model and k not in model.model_fields]
                if isinstance(parent, dict)
                else []
            )
            if difflib.get_close_matches(str(path[-1]), strays, n=1, cutoff=0.6):
                continue  # reported once, as the misspelt key with a 'did you mean'
            line, col = located.where(path[:-1], at_key=True)
            where = f" in {_dotted(path[:-1])}" if path[:-1] else ""
            issue = Issue(
                file,
                line,
                col,
                f"missing required key {path[-1]!r}{where}",
                "see protocols/schema.json or a template from 'evalkit init'",
            )
        elif kind == "union_tag_invalid":
            tag = str(err.get("ctx", {}).get("discriminator", "method")).strip("'")
            line, col = located.where((*path, tag))
            expected = err.get("ctx", {}).get("expected_tags", "")
            issue = Issue(
                file,
                line,
                col,
                f"{_dotted(path)}: unknown {tag} {err['input'].get(tag)!r}",
                f"use one of {expected}",
            )
        elif kind == "union_tag_not_found":
            line, col = located.where(path)
            tag = str(err.get("ctx", {}).get("discriminator", "method")).strip("'")
            example = "from: spells" if tag == "from" else "method: blocked"
            issue = Issue(file, line, col, f"{_dotted(path)} needs a '{tag}'", f"e.g. {example}")
        elif kind == "literal_error":
            line, col = located.where(path)
            issue = Issue(
                file,
                line,
                col,
                f"{_dotted(path)}: {err['input']!r} is not allowed",
                _hint_for(kind, err),
            )
        elif kind == "string_pattern_mismatch":
            line, col = located.where(path)
            issue = Issue(
                file,
                line,
                col,
                f"{_dotted(path)}: {err['input']!r} is not a valid name",
                _hint_for(kind, err),
            )
        else:
            line, col = located.where(path)
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            issue = Issue(file, line, col, f"{_dotted(path)}: {msg}", _hint_for(kind, err))
        if (issue.line, issue.column, issue.message) not in seen:
            seen.add((issue.line, issue.column, issue.message))
            issues.append(issue)
    return issues


def _hint_for(kind: str, err: dict) -> str:
    if kind.startswith("literal_error"):
        return f"allowed: {err.get('ctx', {}).get('expected', '')}"
    if kind == "string_pattern_mismatch":
        return "use lower-case letters, digits and hyphens (ids) or letters, digits, _ (names)"
    if kind in {"int_parsing", "int_from_float", "float_parsing"}:
        return "write a plain number without units or quotes"
    if kind == "date_from_datetime_parsing" or kind.startswith("date"):
        return "write dates as YYYY-MM-DD"
    if kind in {"list_type"}:
        return "write a list: one '- item' per line, or [a, b]"
    if kind in {"model_type", "dict_type"}:
        return "this takes nested keys, indented under it"
    return ""


def _without(data: Any, paths: list[Path_]) -> Any:
    """A copy of ``data`` with the keys at ``paths`` removed (to retry validation)."""
    data = copy.deepcopy(data)
    for path in sorted(paths, key=len, reverse=True):
        node = data
        for elem in path[:-1]:
            node = node[elem] if isinstance(node, dict | list) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return data


def _restore_misspelt(retry: Any, data: Any, typos: list[Path_], missing: list[Path_]) -> None:
    """Where a required key is missing and a misspelt key stands beside it, check the
    copy as if the author had spelt it right (only for the cross-field checks)."""
    for m in missing:
        near = [t for t in typos if t[:-1] == m[:-1]]
        close = difflib.get_close_matches(str(m[-1]), [str(t[-1]) for t in near], n=1, cutoff=0.6)
        if not close:
            continue
        parent_new, parent_old = retry, data
        for elem in m[:-1]:
            parent_new, parent_old = parent_new[elem], parent_old[elem]
        parent_new[m[-1]] = copy.deepcopy(parent_old[close[0]])


def parse_protocol(text: str, file: str) -> tuple[Protocol, Located]:
    """Load and check a protocol; raises ProtocolFileError listing every problem.

    When the structure has errors, keys that are unknown or wrong are dropped from a copy
    and the copy is checked again, so that cross-field problems (a stratum that is not a
    field, thresholds out of order) are reported in the same run."""
    located = read_yaml(text, file)
    issues = list(located.issues)
    protocol: Protocol | None = None
    try:
        protocol = Protocol.model_validate(located.data)
    except ValidationError as exc:
        issues += _pydantic_issues(exc, located, file)
        bad = [_data_path(located.data, e["loc"]) for e in exc.errors() if e["type"] != "missing"]
        bad = [p for p in bad if p and isinstance(p[-1], str)]
        typos = [
            _data_path(located.data, e["loc"])
            for e in exc.errors()
            if e["type"] == "extra_forbidden"
        ]
        missing = [
            _data_path(located.data, e["loc"]) for e in exc.errors() if e["type"] == "missing"
        ]
        if bad:
            retry = _without(located.data, bad)
            _restore_misspelt(retry, located.data, typos, missing)
            try:
                protocol = Protocol.model_validate(retry)
            except ValidationError:
                protocol = None
    if protocol is not None:
        issues += [_from_problem(p, located, file) for p in consistency_problems(protocol)]
    if issues:
        issues.sort(key=lambda i: (i.line, i.column))
        raise ProtocolFileError(issues)
    assert protocol is not None
    return protocol, located


def _from_problem(p: Problem, located: Located, file: str) -> Issue:
    line, col = located.where(p.path)
    return Issue(file, line, col, f"{_dotted(p.path)}: {p.message}", p.hint)


def load_protocol(path: Path) -> tuple[Protocol, Located]:
    """Read a protocol file from disk (the I/O edge of this module)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProtocolFileError(
            [
                Issue(
                    str(path),
                    1,
                    1,
                    "no such file",
                    "check the name, or create it with 'evalkit init'",
                )
            ]
        ) from None
    except UnicodeDecodeError as exc:
        raise ProtocolFileError(
            [Issue(str(path), 1, 1, f"not UTF-8 text ({exc.reason})", "save the file as UTF-8")]
        ) from None
    return parse_protocol(text, str(path))
