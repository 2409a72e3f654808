"""Serve MathJax 3 from the book itself, so that math renders without a network.

Sphinx's mathjax extension points ``mathjax_path`` at a CDN by default. This extension points it at
``_static/mathjax/tex-mml-chtml.js`` instead and copies that bundle, with the files MathJax loads
lazily (the CHTML web fonts, the TeX extensions that ``autoload`` pulls in, the menu and the
accessibility components), from the ``django-static-mathjax`` wheel (import name ``mathjax``) into
the built site. A MathJax loaded from ``_static/mathjax/`` finds its fonts and components relative
to its own script, so nothing else needs configuring.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

BUNDLE = "tex-mml-chtml.js"
# Directories (relative to MathJax's es5/ folder) that the bundle may load at run time.
LAZY_DIRS = (
    "output/chtml/fonts/woff-v2",
    "input/tex/extensions",
    "input/mml/extensions",
    "ui",
    "a11y",
    "sre",
)
TARGET = "mathjax"  # under _static/


def mathjax_es5_dir() -> Path:
    """The ``es5`` folder of the MathJax 3 copy that ships in django-static-mathjax."""
    try:
        import mathjax  # django-static-mathjax
    except ImportError as err:  # pragma: no cover - the [book] extra installs it
        raise ExtensionError(
            "local_mathjax needs django-static-mathjax (pip install -e '.[book]')"
        ) from err
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / BUNDLE).is_file():
        raise ExtensionError(f"no MathJax bundle at {es5 / BUNDLE}")
    return es5


def _copy_if_changed(src: Path, dst: Path) -> int:
    """Copy ``src`` to ``dst`` unless an identical file is already there; return 1 if copied."""
    if dst.is_file() and filecmp.cmp(src, dst, shallow=True):
        return 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return 1


def set_mathjax_path(app: Sphinx, config: Config) -> None:
    """Point Sphinx at the local bundle (a path relative to ``_static``)."""
    mathjax_es5_dir()  # fail early, with a clear message, when the files are missing
    config.mathjax_path = f"{TARGET}/{BUNDLE}"


def copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    """After an HTML build, put the bundle and its lazily loaded files into ``_static/mathjax``."""
    if exception is not None or app.builder.format != "html":
        return
    es5 = mathjax_es5_dir()
    target = Path(app.outdir) / "_static" / TARGET
    copied = _copy_if_changed(es5 / BUNDLE, target / BUNDLE)
    for rel in LAZY_DIRS:
        source_dir = es5 / rel
        if not source_dir.is_dir():
            continue
        for src in source_dir.rglob("*"):
            if src.is_file():
                copied += _copy_if_changed(src, target / src.relative_to(es5))
    for name in ("LICENSE",):
        licence = es5.parent / name
        if licence.is_file():
            copied += _copy_if_changed(licence, target / name)
    logger.info(f"local_mathjax: {copied} file(s) copied to {target}")


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", set_mathjax_path, priority=900)
    app.connect("build-finished", copy_mathjax)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
