"""YAML files checked against a model, every problem pointing at its line: ``FILE:LINE: path: message``.

Manifests and mappings are written by hand by agencies, so a refusal must say where the mistake
is, and all of them at once: a resubmission per typo would make onboarding a correspondence.
The YAML is composed into a node tree once (nodes carry their marks) and each problem's location
(a pydantic ``loc``, or one of our own) is walked down that tree to the nearest line.
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Loc = Sequence[str | int]
M = TypeVar("M", bound=BaseModel)
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# A manifest or mapping is a page or two of hand-written YAML. Aliases let a few lines stand for
# billions of values (the YAML "billion laughs"), so the expanded size is bounded too.
MAX_FILE_BYTES = 1024 * 1024
MAX_VALUES = 100_000


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path or '(file)'}: {self.message}"


class Invalid(ValueError):
    """Every problem of a submission; its text is one ``FILE:LINE: path: message`` per line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# Line breaks besides \n (and \r\n): a lone CR, NEL, LINE and PARAGRAPH SEPARATOR.
_ODD_LINE_BREAK = re.compile("\r(?!\n)|[\x85\u2028\u2029]")


@dataclass(frozen=True)
class YamlDoc:
    """A YAML file's text, its data and its node tree (for line numbers)."""

    file: str
    text: str
    data: Any
    root: yaml.Node | None

    @classmethod
    def read(cls, path: Path) -> "YamlDoc":
        try:
            size = Path(path).stat().st_size
            if size > MAX_FILE_BYTES:
                raise Invalid([Problem(str(path), 1, "", f"is {size} bytes, over the limit of {MAX_FILE_BYTES}")])
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise Invalid([Problem(str(path), 1, "", f"cannot be read: {exc}")]) from None
        return cls.parse(str(path), text)

    @classmethod
    def parse(cls, file: str, text: str) -> "YamlDoc":
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > MAX_FILE_BYTES:
            raise Invalid([Problem(file, 1, "", f"is {size} bytes, over the limit of {MAX_FILE_BYTES}")])
        odd_break = _ODD_LINE_BREAK.search(text)
        if odd_break:  # YAML counts these as line breaks, editors do not: every line number after would be wrong
            raise Invalid([Problem(file, text.count("\n", 0, odd_break.start()) + 1, "",
                                   f"character U+{ord(odd_break.group()[0]):04X} is not allowed: end lines with \\n")])
        try:
            root = yaml.compose(text, Loader=Loader)
            _check_expansion(file, root)
            data = yaml.load(text, Loader=Loader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise Invalid([Problem(file, mark.line + 1 if mark else 1, "", f"not valid YAML: {exc.problem}")]) from None
        except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, a lone surrogate)
            char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
            line = text.count("\n", 0, max(text.find(char), 0)) + 1  # its position may count bytes
            raise Invalid([Problem(file, line, "",
                                   f"not valid YAML: character U+{ord(char):04X} is not allowed")]) from None
        except yaml.YAMLError as exc:
            raise Invalid([Problem(file, 1, "", f"not valid YAML: {exc}")]) from None
        return cls(file, text, data, root)

    def problem(self, loc: Loc, message: str) -> Problem:
        return Problem(self.file, self.line(loc), ".".join(str(p) for p in loc), message)

    def line(self, loc: Loc) -> int:
        """The 1-based line of ``loc``; for something missing, the line of the nearest parent."""
        node = self.root
        if node is None:
            return 1
        line = node.start_mark.line
        for part in loc:
            found = _child(node, part)
            if found is None:
                break
            line, node = found
        return line + 1

    def duplicate_keys(self) -> list[Problem]:
        """YAML keeps the last of two equal keys silently; a hand-written file means the first."""
        found: list[Problem] = []
        stack = [self.root] if self.root is not None else []
        while stack:
            node = stack.pop()
            if isinstance(node, yaml.MappingNode):
                seen: set[str] = set()
                for key, value in node.value:
                    if key.value in seen:
                        found.append(Problem(self.file, key.start_mark.line + 1, str(key.value), "duplicate key"))
                    seen.add(key.value)
                    stack.append(value)
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
        return found

    def validate(self, model: type[M], patterns: dict[str, str] | None = None) -> tuple[M | None, list[Problem]]:
        """The model, or None and one located problem per validation error. ``patterns`` says in
        words what a regular expression of the model means, for whoever wrote the file."""
        problems = self.duplicate_keys()
        try:
            return model.model_validate(self.data), problems
        except ValidationError as exc:
            return None, problems + [self.problem(_loc(e["loc"]), _message(e, patterns or {}))
                                     for e in exc.errors()]


def _check_expansion(file: str, root: yaml.Node | None) -> None:
    """Refuses a node graph that refers to itself or expands to more than MAX_VALUES values.

    An alias is the anchored node itself in the composed graph, so sizes are counted once per
    node (memoised) and an alias to a node still being counted is a cycle.
    """
    if root is None:
        return
    sizes: dict[int, int] = {}
    counting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            counting.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for _, c in _parts(node)), MAX_VALUES + 1)
            continue
        if id(node) in sizes:
            continue
        if id(node) in counting:
            raise Invalid([Problem(file, node.start_mark.line + 1, "",
                                   "a YAML alias refers to the node that contains it")])
        counting.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for _, c in _parts(node) if id(c) not in sizes)
    if sizes[id(root)] > MAX_VALUES:
        node, path = root, []
        while big := next(((part, c) for part, c in _parts(node) if sizes[id(c)] > MAX_VALUES), None):
            path.append(big[0])
            node = big[1]
        raise Invalid([Problem(file, node.start_mark.line + 1, ".".join(path),
                               f"expands to more than {MAX_VALUES} values through YAML aliases")])


def _parts(node: yaml.Node) -> list[tuple[str, yaml.Node]]:
    """(name, node) of what a node holds: a mapping's keys and values, a sequence's items."""
    if isinstance(node, yaml.MappingNode):
        return [p for key, value in node.value for p in ((f"{key.value} (key)", key), (str(key.value), value))]
    return [(str(n), c) for n, c in enumerate(node.value)] if isinstance(node, yaml.SequenceNode) else []


def _child(node: yaml.Node, part: str | int) -> tuple[int, yaml.Node] | None:
    """(line, node) of ``part`` in ``node``: a mapping entry is on its key's line (its value, a
    nested mapping, starts on the next one)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == str(part):
                return key.start_mark.line, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part].start_mark.line, node.value[part]
    return None


def _loc(loc: tuple[str | int, ...]) -> list[str | int]:
    """Pydantic's loc without its internal tags (``[key]``, ``function-after[...]``)."""
    return [p for p in loc if not (isinstance(p, str) and (p == "[key]" or "[" in p and p.endswith("]")))]


def _message(error: dict[str, Any], patterns: dict[str, str]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in patterns:
        return f"{error.get('input')!r} is not {patterns[ctx['pattern']]}"
    if kind == "missing":
        return "required, but missing"
    if kind == "extra_forbidden":
        return "unknown field (not part of the format)"
    if kind == "literal_error":
        return f"unknown value {error.get('input')!r}: expected {ctx.get('expected')}"
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message
