"""Make dedl's docstrings build cleanly into the API reference (book/api.md).

Three small fixes, all generic:

1. **MyST roles in docstrings.** The house style (CONTRIBUTING.md) has docstrings cite papers by their key
   in ``book/references.bib``, and most are written the way the notebooks cite: ``{cite}`chen2018neural```.
   Autodoc parses docstrings as reStructuredText, where that spelling is not a role. Every docstring is
   rewritten from MyST role syntax ``{role}`text``` to reStructuredText role syntax ``:role:`text``` before
   it is parsed, so the citation resolves against the bibliography at the end of the API page.

2. **Names that Python resolves but Sphinx does not.** A docstring may refer to an object by the name under
   which the package exports it, ``:func:`dedl.solvers.odeint```, while autodoc documents it where it is
   defined, ``dedl.solvers.ode.odeint``; or a class may refer to a method it inherits, ``:meth:`inverse```,
   which autodoc documents on the base class. When a Python cross-reference into ``dedl`` finds no target,
   the name is looked up the way Python would (importing the object, walking the class's MRO) and the
   reference is resolved again under the name of the place where the object is defined. An attribute that
   only instances have (``self.nfe = 0`` in a method) links to the class that sets it.

3. **Colons in property docstrings.** Napoleon reads the first line of a property or attribute docstring as
   ``type: description`` (Google style), so a property documented as ``First Same As Last: the last ...``
   would get a type called "First Same As Last". dedl takes types from annotations, never from that
   convention, so the split is undone: the text before the colon goes back in front of the description.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

MYST_ROLE = re.compile(r"\{([a-zA-Z][\w.-]*(?::[\w.-]+)?)\}(`[^`]+`)")


def myst_roles_to_rst(app: Sphinx, what: str, name: str, obj: object, options: dict, lines: list[str]) -> None:
    """Rewrite ``{role}`text``` into ``:role:`text``` in place, line by line."""
    for i, line in enumerate(lines):
        if "{" in line and "`" in line:
            lines[i] = MYST_ROLE.sub(r":\1:\2", line)


def _canonical_name(dotted: str) -> str | None:
    """``dedl.solvers.odeint`` -> ``dedl.solvers.ode.odeint`` (where the object is defined), or None."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if not module or not qualname:
            return None
        canonical = f"{module}.{qualname}"
        return canonical if canonical != dotted else None
    return None


def _dedl_class(module: str | None, klass: str | None) -> Any:
    """The class ``klass`` (a dotted qualname) of the dedl module ``module``, or None."""
    if not module or not klass or not module.startswith("dedl"):
        return None
    try:
        cls: Any = importlib.import_module(module)
        for part in klass.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        return None
    return cls


def _inherited_name(module: str | None, klass: str | None, attr: str) -> str | None:
    """``inverse`` seen from ``dedl.nn.stable.RevNet`` -> ``dedl.nn.stable.ReversibleBody.inverse``."""
    cls = _dedl_class(module, klass)
    for base in getattr(cls, "__mro__", ())[1:]:
        if attr in vars(base) and base.__module__.startswith("dedl"):
            return f"{base.__module__}.{base.__qualname__}.{attr}"
    return None


def _instance_attribute_owner(module: str | None, klass: str | None, attr: str) -> str | None:
    """``nfe`` seen from a class whose methods set ``self.nfe = ...``: the class, which documents it."""
    cls = _dedl_class(module, klass)
    try:
        for base in getattr(cls, "__mro__", ()):
            if base.__module__.startswith("dedl") and re.search(
                rf"\bself\.{re.escape(attr)}\s*(:[^=\n]*)?=(?!=)", inspect.getsource(base)
            ):
                return f"{module}.{klass}"
    except (OSError, TypeError):
        return None
    return None


def resolve_python_names(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.TextElement
) -> nodes.reference | None:
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if target.startswith("dedl."):
        candidate = _canonical_name(target)
    elif target.isidentifier():
        candidate = _inherited_name(node.get("py:module"), node.get("py:class"), target)
    else:
        candidate = None
    domain = env.get_domain("py")
    if candidate is not None:
        return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], candidate, node, contnode)
    if node["reftype"] == "attr" and target.isidentifier():
        owner = _instance_attribute_owner(node.get("py:module"), node.get("py:class"), target)
        if owner is not None:
            return domain.resolve_xref(env, node["refdoc"], app.builder, "class", owner, node, contnode)
    return None


_ATTRIBUTE_KINDS = ("attribute", "data", "property")
_first_lines: dict[str, str] = {}


def remember_first_line(app: Sphinx, what: str, name: str, obj: object, options: dict, lines: list[str]) -> None:
    """Before napoleon: note the first line of each property/attribute docstring."""
    if what in _ATTRIBUTE_KINDS:
        _first_lines[name] = next((line.strip() for line in lines if line.strip()), "")


def undo_inline_type(app: Sphinx, what: str, name: str, obj: object, options: dict, lines: list[str]) -> None:
    """After napoleon: if it split ``text: rest`` into a ``:type: text`` field, join the two again."""
    first = _first_lines.pop(name, None)
    if what not in _ATTRIBUTE_KINDS or not first:
        return
    filled = [i for i, line in enumerate(lines) if line.strip()]
    if len(filled) < 2:
        return
    match = re.fullmatch(r":type: (.+)", lines[filled[-1]].strip())
    if not match or not first.startswith(match.group(1) + ":"):
        return
    del lines[filled[-1]]
    head = filled[0]
    lines[head] = f"{match.group(1)}: {lines[head].lstrip()}"
    while lines and not lines[-1].strip():
        lines.pop()


def setup(app: Sphinx) -> dict:
    app.connect("autodoc-process-docstring", myst_roles_to_rst, priority=300)
    app.connect("autodoc-process-docstring", remember_first_line, priority=400)
    app.connect("autodoc-process-docstring", undo_inline_type, priority=600)
    app.connect("missing-reference", resolve_python_names)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
