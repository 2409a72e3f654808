"""The rendered book: a failing cell fails the build, the HTML loads nothing from the network, and a chapter
page shows its math and its figures in a real browser.

How the browser test stays fast: it builds the repository's book (every page in _toc.yml) into a temporary
folder with a temporary copy of _config.yml whose ``execute.exclude_patterns`` lists every chapter notebook
but the one whose page is checked (``chapters/01_foundations/01_odes`` once it exists). So one notebook is
executed, all others are rendered from their (empty) stored outputs. Until that chapter exists, the same
build is run on a stand-in: the front matter of the book plus a small throwaway notebook with math and a
figure, written into the temporary folder.

The build runs in a fresh network namespace (``unshare -rn``, loopback only) where the kernel allows it, so a
build step that needs the network fails here. The page is then served from 127.0.0.1 and opened in headless
Chromium with every other host name unresolvable; a harness page loads it in an iframe, waits for MathJax,
and reports the typeset math, the images' natural sizes, the fonts, the stylesheets and every resource the
page fetched.
"""

from __future__ import annotations

import contextlib
import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

import pytest

yaml = pytest.importorskip("yaml")
nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
CHECKED_PAGE = "chapters/01_foundations/01_odes"  # the chapter opened in the browser, once it exists
CHROMIUM = Path("/usr/bin/chromium")
BUILD_TIMEOUT = 1500  # seconds; the build executes one notebook (at most a couple of minutes at ci scale)

pytestmark = pytest.mark.book


# --------------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------------


def jb_flags() -> list[str]:
    """The flags `make book` builds with (JB_FLAGS in the Makefile): the tests build the same way."""
    match = re.search(r"^JB_FLAGS\s*:?=\s*(.+?)\s*$", (REPO / "Makefile").read_text(), re.M)
    assert match, "JB_FLAGS missing from the Makefile"
    return match.group(1).split()


def jupyter_book() -> str:
    candidate = Path(sys.executable).with_name("jupyter-book")
    found = str(candidate) if candidate.exists() else shutil.which("jupyter-book")
    if not found:
        pytest.skip("jupyter-book is not installed (pip install -e '.[book]')")
    return found


@functools.lru_cache(maxsize=1)
def offline_prefix() -> tuple[str, ...]:
    """A command prefix that runs a command with no network but loopback, or () where that is not allowed."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip") or "/usr/sbin/ip"
    if not unshare or not Path(ip).exists():
        return ()
    prefix = (unshare, "-rn", "sh", "-c", f'{ip} link set lo up && exec "$@"', "offline")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if probe.returncode == 0 else ()


def build_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DEDL_SCALE="ci", CUDA_VISIBLE_DEVICES="", PYDEVD_DISABLE_FILE_VALIDATION="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MPLBACKEND", None)  # the notebooks' figures need the inline backend
    return env


def build(source: Path, output: Path, config: Path | None = None) -> subprocess.CompletedProcess:
    """`jupyter-book build` with the Makefile's flags, offline where possible; output in ``output/_build``."""
    command = [jupyter_book(), "build", *jb_flags(), "--path-output", str(output)]
    if config is not None:
        command += ["--config", str(config)]
    command.append(str(source))
    return subprocess.run(
        [*offline_prefix(), *command],
        capture_output=True,
        text=True,
        env=build_env(),
        timeout=BUILD_TIMEOUT,
        cwd=source,
    )


def report(result: subprocess.CompletedProcess) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    warnings = [line for line in text.splitlines() if "WARNING" in line or "ERROR" in line]
    return "\n".join(warnings[-40:]) + "\n--- last lines ---\n" + "\n".join(text.splitlines()[-30:])


def derived_config(exclude_from_execution: list[str], ext_dir: Path = REPO / "book" / "_ext") -> dict:
    """The repository's _config.yml, made usable from another folder, with some notebooks not executed."""
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    config["sphinx"]["local_extensions"] = {name: str(ext_dir) for name in config["sphinx"]["local_extensions"]}
    config["execute"]["exclude_patterns"] = exclude_from_execution
    return config


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def setup_cell() -> str:
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    start = text.index("The common first code cell")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1).strip()


def write_notebook(path: Path, cells: list) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def toc_docnames() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(re.sub(r"\.(md|ipynb)$", "", entry["file"]))
            walk(entry.get("chapters"))
            walk(entry.get("sections"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return names


# --------------------------------------------------------------------------------------------------------
# a failing cell fails the build
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code, should_fail", [("print(6 * 7)", False), ("1 / 0", True)], ids=["ok", "raises"])
def test_a_failing_cell_fails_the_build(tmp_path: Path, code: str, should_fail: bool) -> None:
    """A throwaway book with the repository's execution settings and one notebook: it builds only if the cell runs."""
    source = tmp_path / "book"
    source.mkdir()
    repo_config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    config = {
        "title": "throwaway",
        "only_build_toc_files": True,
        "execute": {**repo_config["execute"], "exclude_patterns": []},
    }
    write_yaml(source / "_config.yml", config)
    write_yaml(source / "_toc.yml", {"format": "jb-book", "root": "page"})
    write_notebook(source / "page.ipynb", [nbformat.v4.new_markdown_cell("# A page"), nbformat.v4.new_code_cell(code)])

    result = build(source, tmp_path / "out")

    if should_fail:
        assert result.returncode != 0, "a notebook whose cell raises was built without error:\n" + report(result)
        assert "ZeroDivisionError" in result.stdout + result.stderr or "Executing notebook failed" in (
            result.stdout + result.stderr
        )
    else:
        assert result.returncode == 0, "the control book (no failing cell) did not build:\n" + report(result)
        page = (tmp_path / "out" / "_build" / "html" / "page.html").read_text(encoding="utf-8")
        assert "42" in page, "the cell's output is missing: was the notebook executed?"


# --------------------------------------------------------------------------------------------------------
# nothing from the network
# --------------------------------------------------------------------------------------------------------

REMOTE = re.compile(r"^\s*(https?:)?//", re.I)
CSS_REMOTE = re.compile(r"(url\(\s*['\"]?\s*(https?:)?//|@import\s+['\"]\s*(https?:)?//)", re.I)
LOADING_ATTRIBUTES = {
    "script": ("src",),
    "link": ("href",),  # stylesheets, preloads, icons: <link> always loads or hints a load
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "iframe": ("src",),
    "video": ("src", "poster"),
    "audio": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "input": ("src",),
}


class RemoteLoadFinder(HTMLParser):
    """Collects everything in an HTML page that would be fetched from another host (hyperlinks do not count)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for attribute in LOADING_ATTRIBUTES.get(tag, ()):
            value = values.get(attribute) or ""
            candidates = [part.strip().split(" ")[0] for part in value.split(",")] if attribute == "srcset" else [value]
            self.found += [f"<{tag} {attribute}={c!r}>" for c in candidates if REMOTE.match(c)]
        if values.get("style") and CSS_REMOTE.search(values["style"]):
            self.found.append(f"<{tag} style={values['style']!r}>")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style and CSS_REMOTE.search(data):
            self.found.append(f"<style> {CSS_REMOTE.search(data).group(0)}")


def remote_loads(site: Path) -> dict[str, list[str]]:
    """Remote assets referenced by the HTML pages and the CSS files of a built site, by file."""
    problems: dict[str, list[str]] = {}
    for page in site.rglob("*.html"):
        finder = RemoteLoadFinder()
        finder.feed(page.read_text(encoding="utf-8", errors="replace"))
        if finder.found:
            problems[page.relative_to(site).as_posix()] = finder.found
    for sheet in site.rglob("*.css"):
        hits = [m.group(0) for m in CSS_REMOTE.finditer(sheet.read_text(encoding="utf-8", errors="replace"))]
        if hits:
            problems[sheet.relative_to(site).as_posix()] = hits
    return problems


def test_the_offline_check_tells_loads_from_links(tmp_path: Path) -> None:
    """The checker itself: remote scripts, styles, images and CSS urls are caught; hyperlinks are not."""
    (tmp_path / "bad.html").write_text(
        '<script src="https://cdn.example.org/x.js"></script><link rel="stylesheet" href="//fonts.example.org/f.css">'
        '<img srcset="a.png 1x, https://img.example.org/b.png 2x"><div style="background: url(https://x.org/i.png)">'
        "<style>@import 'https://fonts.example.org/css';</style>"
    )
    (tmp_path / "good.html").write_text(
        '<a href="https://colab.research.google.com/github/x">Colab</a><script src="_static/x.js"></script>'
        '<img src="_images/fig.png"><link rel="stylesheet" href="_static/theme.css">'
    )
    (tmp_path / "theme.css").write_text("@font-face { src: url(https://fonts.example.org/f.woff2); }")
    problems = remote_loads(tmp_path)
    assert set(problems) == {"bad.html", "theme.css"}
    assert len(problems["bad.html"]) == 5


# --------------------------------------------------------------------------------------------------------
# the built book in a browser
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Build the book once for this module (see the module docstring); returns the site and the checked page."""
    work = tmp_path_factory.mktemp("book")
    notebooks = sorted(p for p in (REPO / "chapters").glob("**/*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    checked = REPO / f"{CHECKED_PAGE}.ipynb"
    if checked.exists() and CHECKED_PAGE in toc_docnames():
        source, page = REPO, CHECKED_PAGE
        excluded = [p.relative_to(REPO).as_posix() for p in notebooks if p != checked]
        derived = derived_config(excluded)
        # The pages excluded from execution have no outputs, so their captioned figures and glued numbers do
        # not exist in this build and their {numref} and {glue} references cannot resolve. `make book` executes
        # every page and keeps these warnings fatal; this one-notebook build silences just those two kinds.
        sphinx_config = derived["sphinx"].setdefault("config", {})
        sphinx_config["suppress_warnings"] = [*sphinx_config.get("suppress_warnings", []), "ref.numref", "mystnb.glue"]
        config = write_yaml(work / "_config.yml", derived)
    else:
        # Stand-in until the chapter exists: the front matter plus a throwaway chapter with math and a figure.
        source, page = work / "src", "chapters/demo/demo"
        shutil.copytree(REPO / "book", source / "book", ignore=shutil.ignore_patterns("__pycache__"))
        write_notebook(
            source / f"{page}.ipynb",
            [
                nbformat.v4.new_markdown_cell(
                    "# A stand-in chapter\n\nEuler's method $y_{n+1} = y_n + h f(t_n, y_n)$ converges with order one:"
                    "\n\n$$\\lvert y_N - y(T) \\rvert \\le C h.$$\n\nAs {cite}`chen2018neural` observe."
                ),
                nbformat.v4.new_code_cell(setup_cell()),
                nbformat.v4.new_code_cell(
                    "import matplotlib.pyplot as plt\nimport numpy as np\n\n"
                    "t = np.linspace(0, 2, 50)\nplt.plot(t, np.exp(-t))\nplt.title(r'$e^{-t}$')\nplt.show()"
                ),
                nbformat.v4.new_markdown_cell("## References\n\n```{bibliography}\n:filter: docname in docnames\n```"),
            ],
        )
        toc = {
            "format": "jb-book",
            "root": "book/intro",
            "parts": [
                {"caption": "Getting started", "chapters": [{"file": "book/how_to_use"}, {"file": "book/notation"}]},
                {"caption": "Stand-in", "numbered": True, "chapters": [{"file": page}]},
                {"caption": "Reference", "chapters": [{"file": "book/api"}, {"file": "book/bibliography"}]},
            ],
        }
        write_yaml(source / "_toc.yml", toc)
        config = write_yaml(source / "_config.yml", derived_config([], ext_dir=source / "book" / "_ext"))

    result = build(source, work / "out", config=config)
    assert result.returncode == 0, "the book did not build:\n" + report(result)
    site = work / "out" / "_build" / "html"
    assert (site / f"{page}.html").is_file()
    return {"site": site, "page": page, "offline_build": bool(offline_prefix())}


def test_book_has_intro_parts_and_api_reference(built_book: dict) -> None:
    site = built_book["site"]
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "book/intro.html" in index, "index.html should lead to the introduction"
    intro = (site / "book" / "intro.html").read_text(encoding="utf-8")
    assert "Differential Equations for Deep Learning" in intro
    api = (site / "book" / "api.html").read_text(encoding="utf-8")
    for name in ("dedl.utils.get_device", "dedl.train.fit", "dedl.data.two_moons", "dedl.solvers.ode.DOPRI5",
                 "dedl.solvers.ode.TABLEAUX", "dedl.solvers.multistep.ADAMS_BASHFORTH"):
        assert f'id="{name}"' in api, f"the API reference lacks {name}"
    assert 'id="fig-intro-map"' in intro and "map.svg" in intro, "the landing page maps the book in a figure"
    assert (site / "_static" / "dedl.css").is_file(), "the book's style sheet (one search box) is missing"
    bibliography = (site / "book" / "bibliography.html").read_text(encoding="utf-8")
    labels = re.findall(r'<span class="fn-bracket">\[</span>([^<]+)', bibliography)
    assert "Chen et al., 2018" in labels, "reference lists are labelled author-year, as the text cites"
    alpha = [label for label in labels if not re.search(r", \d{4}[a-z]?$", label)]
    assert not alpha, f"labels that are not author-year: {alpha[:5]}"
    assert (site / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert list((site / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


def test_built_html_loads_nothing_from_the_network(built_book: dict) -> None:
    problems = remote_loads(built_book["site"])
    assert not problems, f"the built book fetches remote assets: {json.dumps(problems, indent=1)[:4000]}"
    if not built_book["offline_build"]:
        pytest.skip("checked the HTML, but the build itself could not be isolated from the network here")


HARNESS = """<!doctype html>
<html><head><meta charset="utf-8"><title>dedl book check</title></head>
<body>
<pre id="result">pending</pre>
<iframe id="page" src="PAGE_URL" style="width:1280px;height:1000px"></iframe>
<script>
function report(obj) { document.getElementById("result").textContent = JSON.stringify(obj); }
function sleep(ms) { return new Promise(r => setTimeout(r, ms)); }
async function check() {
  const frame = document.getElementById("page");
  const win = frame.contentWindow, doc = frame.contentDocument;
  for (let i = 0; i < 400 && !(win.MathJax && win.MathJax.startup && win.MathJax.startup.promise); i++) await sleep(50);
  let mathjax = null;
  if (win.MathJax && win.MathJax.startup && win.MathJax.startup.promise) {
    await win.MathJax.startup.promise;
    mathjax = win.MathJax.version || "unknown";
  }
  await Promise.all([...doc.images].map(img => img.complete ? null : new Promise(r => { img.onload = img.onerror = r; })));
  await doc.fonts.ready;
  const sheets = [...doc.styleSheets].map(s => { let n = -1; try { n = s.cssRules.length; } catch (e) {} return {href: s.href, rules: n}; });
  // A folded solution hides its body with visibility/opacity (sphinx-togglebutton), which leaves layout boxes:
  // "shows" means rendered and not hidden by display, visibility or opacity of the element or an ancestor.
  const solutionCells = [...doc.querySelectorAll("div.solution .cell")];
  const shows = e => e.getClientRects().length > 0 && e.checkVisibility({visibilityProperty: true, opacityProperty: true});
  const visibleFolded = solutionCells.filter(shows).length;
  for (const button of doc.querySelectorAll("div.solution button.toggle-button")) button.click();
  await sleep(1000);  // the toggle's transition
  const visibleOpened = solutionCells.filter(shows).length;
  const codeBoxes = [...doc.querySelectorAll("div.cell_input pre")];
  const overflowing = codeBoxes.filter(p => p.scrollWidth > p.clientWidth + 1).length;
  report({
    title: doc.title,
    mathjax: mathjax,
    mjx_containers: doc.querySelectorAll("mjx-container").length,
    mjx_errors: doc.querySelectorAll("mjx-merror").length,
    math_nodes: doc.querySelectorAll(".math").length,
    images: [...doc.images].map(i => ({src: i.getAttribute("src"), width: i.naturalWidth, height: i.naturalHeight})),
    fonts: [...doc.fonts].map(f => ({family: f.family, status: f.status})),
    stylesheets: sheets,
    resources: win.performance.getEntriesByType("resource").map(e => ({url: e.name, status: e.responseStatus})),
    solutions: doc.querySelectorAll("div.solution").length,
    solution_cells: solutionCells.length,
    visible_solution_cells: visibleFolded,
    visible_solution_cells_opened: visibleOpened,
    code_boxes: codeBoxes.length,
    overflowing_code_boxes: overflowing,
    uncaptioned_images: [...doc.querySelectorAll("article img")].filter(i => {
      const f = i.closest("figure"); return !f || !f.querySelector("figcaption .caption-number");
    }).map(i => i.getAttribute("src")),
  });
}
window.addEventListener("load", () => check().catch(e => report({error: String(e)})));
</script>
</body></html>
"""


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve a folder over HTTP on 127.0.0.1 (a free port) for the duration of the block."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def ensure_chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing (as `make test` does); skip only if that fails."""
    if not CHROMIUM.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, env=env, timeout=900)
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing and could not be installed (apt-get install -y chromium, as root)")
    return CHROMIUM


def chromium_report(chromium: Path, url: str, profile: Path) -> dict:
    command = [
        str(chromium),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=60000",
        "--window-size=1280,1000",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="result">(.*?)</pre>', result.stdout, re.S)
    assert match, f"no report from the harness page; chromium said:\n{result.stderr[-3000:]}"
    text = html.unescape(match.group(1))
    assert text != "pending", "the harness page did not finish within the time budget"
    return json.loads(text)


def test_chapter_page_shows_math_and_figures_in_chromium(built_book: dict, tmp_path: Path) -> None:
    chromium = ensure_chromium()
    site, page = built_book["site"], built_book["page"]
    (site / "_dedl_check.html").write_text(HARNESS.replace("PAGE_URL", f"{page}.html"), encoding="utf-8")
    with serve(site) as base:
        seen = chromium_report(chromium, base + "_dedl_check.html", tmp_path / "profile")
    assert "error" not in seen, seen

    # math: MathJax 3 ran, from the book's own copy, and typeset every formula without error
    assert seen["mathjax"] and seen["mathjax"].startswith("3"), f"MathJax did not start: {seen['mathjax']}"
    assert seen["math_nodes"] > 0, "the checked page has no math"
    assert seen["mjx_containers"] >= seen["math_nodes"], seen
    assert seen["mjx_errors"] == 0
    mathjax_fonts = [f for f in seen["fonts"] if f["family"].startswith("MJX")]
    assert any(f["status"] == "loaded" for f in mathjax_fonts), f"no MathJax font loaded: {mathjax_fonts}"

    # figures: every image decoded, and the notebook's own figures are among them
    broken = [img for img in seen["images"] if img["width"] == 0]
    assert not broken, f"images that did not load: {broken}"
    figures = [img for img in seen["images"] if "_images/" in img["src"]]
    assert figures, f"the page shows no figure from its notebook: {seen['images']}"

    # figures are numbered and captioned; exercise solutions, their code cells and outputs, are folded
    assert not seen["uncaptioned_images"], f"figures without a numbered caption: {seen['uncaptioned_images']}"
    assert seen["solutions"] > 0 and seen["solution_cells"] > 0, "the checked page has no computed solutions"
    assert seen["visible_solution_cells"] == 0, (
        f"{seen['visible_solution_cells']} of {seen['solution_cells']} solution cells show while folded"
    )
    assert seen["visible_solution_cells_opened"] == seen["solution_cells"], (
        f"only {seen['visible_solution_cells_opened']} of {seen['solution_cells']} solution cells show when opened"
    )

    # code fits the page: 88-column cells need no horizontal scroll bar in a 1280-pixel window
    assert seen["code_boxes"] > 0 and seen["overflowing_code_boxes"] == 0, seen["overflowing_code_boxes"]

    # the theme: every stylesheet loaded and parsed (a missing file leaves no rules)
    sheets = [s for s in seen["stylesheets"] if s["href"]]
    assert any("sphinx-book-theme" in s["href"] for s in sheets), sheets
    assert all(s["rules"] > 0 for s in sheets), f"stylesheets that did not load: {sheets}"

    # nothing but the local server was asked for anything, and everything it was asked for existed
    foreign = [r["url"] for r in seen["resources"] if not r["url"].startswith(base)]
    assert not foreign, f"the page fetched from other hosts: {foreign}"
    failed = [r for r in seen["resources"] if r["status"] not in (200, 304)]
    assert not failed, f"requests that failed: {failed}"
