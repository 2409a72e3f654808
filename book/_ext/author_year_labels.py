"""Reference lists labelled the way the text cites: [Chen et al., 2018], not [CRBD18].

``bibtex_reference_style: author_year`` makes every ``{cite}`` read "Chen et al., 2018", but the lists that
``{bibliography}`` prints label their entries with pybtex's default alpha labels ("CRBD18"), so a reader
cannot match the two. This extension registers a pybtex label style that writes the same author-year label
(first author's last name, "and" for two authors, "et al." for more; a, b, ... when two works share one) and
a formatting style, ``dedl``, that uses it; ``_config.yml`` selects it with ``bibtex_default_style``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Iterator

from pybtex.markup import LaTeXParser
from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.application import Sphinx


def _last_name(person: Any) -> str:
    names = [*person.prelast_names, *person.last_names]
    return LaTeXParser(" ".join(names)).parse().render_as("text")


def author_year(entry: Any) -> str:
    """"Chen et al., 2018" for an entry (editors stand in for missing authors)."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    if not people:
        who = LaTeXParser(entry.fields.get("title", entry.key)).parse().render_as("text")
    elif len(people) == 1:
        who = _last_name(people[0])
    elif len(people) == 2:
        who = f"{_last_name(people[0])} and {_last_name(people[1])}"
    else:
        who = f"{_last_name(people[0])} et al."
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    """pybtex label style: author-year labels, with a, b, ... where two entries would share a label."""

    def format_labels(self, sorted_entries: Iterable[Any]) -> Iterator[str]:
        entries = list(sorted_entries)
        labels = [author_year(entry) for entry in entries]
        counts, seen = Counter(labels), Counter()
        for label in labels:
            if counts[label] > 1:
                seen[label] += 1
                label = f"{label}{chr(ord('a') + seen[label] - 1)}"
            yield label


class DedlStyle(PlainStyle):
    """pybtex's plain style (sorted by author, year, title) with author-year labels."""

    default_label_style = "dedl_author_year"


def setup(app: Sphinx) -> dict:
    register_plugin("pybtex.style.labels", "dedl_author_year", AuthorYearLabelStyle)
    register_plugin("pybtex.style.formatting", "dedl", DedlStyle)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
