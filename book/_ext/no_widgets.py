"""Leave Jupyter widgets (in practice: tqdm progress bars) out of the built book.

A progress bar drawn by ``tqdm.auto`` during execution is an ipywidget. Rendering it needs JavaScript that
myst-nb would load from a CDN (the book must work offline, so ``nb_ipywidgets_js`` is emptied in
``_config.yml``), and its plain-text fallback is the bar as it was when first drawn, "0%", which would
mislead a reader. A progress bar says nothing once the run is over, so this extension drops every output
that carries a widget view, before myst-nb picks a MIME type to render, and drops the widget state that
myst-nb would otherwise embed in the page. Text printed by the cells is kept.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class DropWidgetOutputs(SphinxPostTransform):
    """Remove myst-nb mime bundles that contain a widget view (runs before myst-nb's SelectMimeType)."""

    default_priority = 3

    def run(self, **kwargs: Any) -> None:
        for bundle in list(self.document.findall(nodes.container)):
            if bundle.get("nb_element") != "mime_bundle":
                continue
            if any(child.get("mime_type") == WIDGET_VIEW for child in bundle.children):
                bundle.parent.remove(bundle)


def drop_widget_state(app: Sphinx, doctree: nodes.document) -> None:
    """Forget the ipywidgets state (and any widget scripts) that myst-nb registered for this page."""
    metadata = getattr(app.env, "nb_metadata", {}).get(app.env.docname, {})
    js_files = metadata.get("js_files", {})
    for key in [k for k in js_files if k.startswith("ipywidgets")]:
        del js_files[key]


def setup(app: Sphinx) -> dict:
    app.add_post_transform(DropWidgetOutputs)
    app.connect("doctree-read", drop_widget_state)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
