"""A griffe extension for the docs site (mkdocs.yml loads it): samkit's docstrings are written for `help()`, pytest's
doctests and Sphinx-style roles; this makes them render as Markdown without changing a line of `src/`.

* bare doctests (``>>>`` lines and their output, outside an ``Examples:`` section, which griffe parses itself) are
  fenced as ``pycon`` code, so ``[...]`` outputs are not read as Markdown links nor ``>>>`` as quotes;
* Sphinx roles (``:class:`~samkit.x.Y```, ``:func:`f```, ...) become optional cross-references: a link where the
  target is rendered on the site, plain code otherwise (an unresolved optional reference is not a warning);
* a reStructuredText literal-block marker (a line ending in ``::`` before an indented block) becomes ``:``.

The docs site only: nothing here is imported by samkit or its tests, except tests/test_docs.py's unit test of it.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|exc|obj|const|type):`(~?)([^`]+?)`")
EXPLICIT = re.compile(r"^(.*?)\s*<([^<>]+)>$")  # Sphinx's :role:`title <target>`
FENCE = re.compile(r"^\s*(```|~~~)")
SECTION = re.compile(r"^(\s*)Examples:\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def fence_doctests(text: str) -> str:
    r"""Wrap each bare doctest block in a ``pycon`` fence at its own indentation.

    >>> fence_doctests("Text.\n\n>>> 1 + 1\n2\n\nMore.").split("\n")
    ['Text.', '', '```pycon', '>>> 1 + 1', '2', '```', '', 'More.']
    """
    lines = text.split("\n")
    out: list[str] = []
    in_fence = False
    examples_indent: int | None = None  # inside a Google "Examples:" section griffe parses doctests itself
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if examples_indent is not None and stripped and _indent(line) <= examples_indent:
            examples_indent = None
        if m := SECTION.match(line):
            examples_indent = len(m.group(1))
        if FENCE.match(line):
            in_fence = not in_fence
        if in_fence or examples_indent is not None or not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = " " * _indent(line)
        block = []
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= len(indent):
            block.append(lines[i])
            i += 1
        out += [f"{indent}```pycon", *block, f"{indent}```"]
    return "\n".join(out)


def roles_to_refs(text: str, module: str) -> str:
    """Turn Sphinx roles into optional autorefs (a link where the target is on the site, plain code otherwise).

    >>> roles_to_refs("see :class:`~samkit.optim.sam.SAM` and :func:`judge`", "samkit.experiments.stats")
    'see <autoref identifier="samkit.optim.sam.SAM" optional><code>SAM</code></autoref> and <autoref identifier="samkit.experiments.stats.judge" optional><code>judge</code></autoref>'
    >>> roles_to_refs(":meth:`SAM.step <samkit.SAM.step>`", "samkit.optim.schedule")
    '<autoref identifier="samkit.SAM.step" optional><code>SAM.step</code></autoref>'
    """

    def sub(m: re.Match[str]) -> str:
        target = m.group(3).strip()
        if explicit := EXPLICIT.match(target):
            title, target = explicit.group(1), explicit.group(2).strip()
        else:
            title = target.rsplit(".", 1)[-1] if m.group(2) else target
        target = target.removesuffix("()")
        ident = target if target.split(".")[0] in ("samkit", "torch", "numpy") else f"{module}.{target}"
        return f'<autoref identifier="{ident}" optional><code>{title}</code></autoref>'

    return ROLE.sub(sub, text)


def literal_markers(text: str) -> str:
    """A line ending in ``::`` (reStructuredText's literal-block marker) ends in ``:`` instead.

    >>> literal_markers("One command::\\n\\n    samkit train")
    'One command:\\n\\n    samkit train'
    """
    return re.sub(r"(?m)(\S)::[ \t]*$", r"\1:", text)


def convert(text: str, module: str) -> str:
    return roles_to_refs(literal_markers(fence_doctests(text)), module)


class SamkitDocstrings(Extension):
    """Rewrite each docstring once, when griffe loads the object."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            module = obj.module.path if hasattr(obj, "module") else obj.path
            obj.docstring.value = convert(obj.docstring.value, module)
