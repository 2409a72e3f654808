"""Repository rules: the chapter notebooks, the table of contents, the bibliography, the dependency lists and
the two commands stay as CONTRIBUTING.md and README.md describe them.

The notebook checks are parametrized over the notebooks that exist under chapters/, so they pass vacuously
while a part has none yet and start checking a notebook the moment it is added.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = REPO / "chapters"
NOTEBOOKS = sorted(p for p in CHAPTERS.glob("**/*.ipynb") if ".ipynb_checkpoints" not in p.parts)
NOTEBOOK_IDS = [p.relative_to(REPO).as_posix() for p in NOTEBOOKS]

# Keys that the chapters cite (the brief of the book); more may be added to book/references.bib.
REQUIRED_BIB_KEYS = """
    liu2025deep zhao2025understanding chen2018neural dupont2019augmented norcliffe2020second kidger2020neural
    rubanova2019latent he2016deep e2017proposal haber2017stable lu2018beyond zhu2018convolutional
    zhang2017polynet larsson2017fractalnet gomez2017reversible chang2018reversible chang2019antisymmetricrnn
    ruthotto2020deep hairer1993solving hairer1996solving butcher2016numerical kloeden1992numerical
    higham2001algorithmic dormand1980family bogacki1989pair li2020scalable kidger2021on gholami2019anode
    goodfellow2015explaining milstein1974approximate pontryagin1962mathematical grathwohl2019ffjord
    huang2016deep srivastava2014dropout cho2014learning kingma2015adam
""".split()


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def load_yaml(name: str) -> dict:
    return yaml.safe_load(read(REPO / name))


def load_notebook(path: Path) -> dict:
    return json.loads(read(path))


def cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def normalise_code(text: str) -> str:
    """Strip trailing whitespace on every line and blank lines at both ends."""
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def common_cell() -> str:
    """The common first code cell, as CONTRIBUTING.md shows it."""
    text = read(REPO / "CONTRIBUTING.md")
    start = text.index("The common first code cell")
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, "CONTRIBUTING.md must show the common first code cell in a ```python block"
    return normalise_code(match.group(1))


def toc_files(toc: dict) -> list[str]:
    """Every `file:` of a jb-book table of contents, the root included, in order."""
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            for key in ("chapters", "sections"):
                walk(entry.get(key, []))

    walk(toc.get("parts", []))
    walk(toc.get("chapters", []))
    return files


def strip_suffix(path: str) -> str:
    return re.sub(r"\.(md|ipynb)$", "", path)


def repository_url() -> str:
    return load_yaml("_config.yml")["repository"]["url"].rstrip("/")


def install_url(code: str) -> str | None:
    """The repository URL that a `pip install "dedl @ git+URL"` line installs from."""
    match = re.search(r"git\+(https?://[^\s\"'@]+)", code)
    return match.group(1).rstrip("/") if match else None


CITE_MYST = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
CITE_RST = re.compile(r":cite(?::\w+)?:`([^`]+)`")


def cited_keys(text: str) -> set[str]:
    keys: set[str] = set()
    for match in [*CITE_MYST.finditer(text), *CITE_RST.finditer(text)]:
        body = re.sub(r"\{[^}]*\}", "", match.group(1))  # sphinxcontrib-bibtex pre/post text: {see}key{p. 3}
        keys.update(k.strip() for k in body.split(",") if k.strip())
    return keys


def bibliography_keys() -> set[str]:
    from pybtex.database import parse_file  # installed with sphinxcontrib-bibtex

    return set(parse_file(str(REPO / "book" / "references.bib")).entries.keys())


# --------------------------------------------------------------------------------------------------------
# chapter notebooks
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = load_notebook(path)
    dirty = [i for i, c in enumerate(code_cells(nb)) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, (
        f"{path.name}: code cells {dirty} carry outputs or execution counts; clear them before committing "
        "(e.g. `jupyter nbconvert --clear-output --inplace`)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_opens_with_title_cell(path: Path) -> None:
    nb = load_notebook(path)
    assert nb["cells"], f"{path.name} is empty"
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and cell_source(first).lstrip().startswith("# "), (
        f"{path.name}: the first cell must be markdown starting with the title ('# Title'), see CONTRIBUTING.md"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_first_code_cell_is_the_common_cell(path: Path) -> None:
    cells = code_cells(load_notebook(path))
    assert cells, f"{path.name} has no code cell"
    assert normalise_code(cell_source(cells[0])) == common_cell(), (
        f"{path.name}: the first code cell must be exactly the common cell shown in CONTRIBUTING.md"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_installs_from_the_configured_repository(path: Path) -> None:
    first = cell_source(code_cells(load_notebook(path))[0])
    assert install_url(first) == repository_url(), (
        f"{path.name}: the set-up cell installs from {install_url(first)!r}, "
        f"but _config.yml's repository.url is {repository_url()!r}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_never_names_cuda(path: Path) -> None:
    """No `cuda` in code (any case) nor in markdown (lower case): devices come from get_device()."""
    offending = []
    for i, cell in enumerate(load_notebook(path)["cells"]):
        source = cell_source(cell)
        found = "cuda" in source.lower() if cell["cell_type"] == "code" else "cuda" in source
        if found:
            offending.append(i)
    assert not offending, (
        f"{path.name}: cells {offending} name cuda; use `device` from the first cell (dedl.utils.get_device)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_never_sets_a_matplotlib_backend(path: Path) -> None:
    pattern = re.compile(r"\b(matplotlib|mpl)\s*\.\s*use\s*\(")
    offending = [i for i, c in enumerate(load_notebook(path)["cells"]) if pattern.search(cell_source(c))]
    assert not offending, f"{path.name}: cells {offending} call matplotlib.use(...), which drops every figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_runs_on_the_python3_kernel(path: Path) -> None:
    kernelspec = load_notebook(path).get("metadata", {}).get("kernelspec", {})
    assert kernelspec.get("name") == "python3", (
        f"{path.name}: metadata.kernelspec.name is {kernelspec.get('name')!r}; the book executes it with 'python3'"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_ends_with_its_bibliography(path: Path) -> None:
    last = load_notebook(path)["cells"][-1]
    source = cell_source(last)
    assert last["cell_type"] == "markdown" and "{bibliography}" in source and "docname in docnames" in source, (
        f"{path.name}: the last cell must be '## References' with a bibliography filtered by "
        "`:filter: docname in docnames` (CONTRIBUTING.md)"
    )


MAX_CODE_LINE = 88  # characters: what the book's code box shows without a scroll bar
DIRECTIVE = re.compile(r"^(`{3,}|:{3,})\{([\w-]+)\}[ \t]*(.*)$", re.M)


def directives(text: str) -> list[tuple[str, str, str]]:
    """(name, argument, body) of every MyST directive in a markdown cell (fences of ``` or :::)."""
    found = []
    for match in DIRECTIVE.finditer(text):
        fence, name, argument = match.groups()
        end = text.find("\n" + fence, match.end())
        found.append((name, argument.strip(), text[match.end() : end if end >= 0 else len(text)]))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_code_lines_fit_the_page(path: Path) -> None:
    long = [
        f"cell {i}: {len(line)} characters: {line[:60]}..."
        for i, cell in enumerate(load_notebook(path)["cells"])
        if cell["cell_type"] == "code"
        for line in cell_source(cell).splitlines()
        if len(line) > MAX_CODE_LINE
    ]
    assert not long, f"{path.name}: code lines over {MAX_CODE_LINE} characters:\n" + "\n".join(long)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_exercises_are_each_followed_by_a_folded_solution(path: Path) -> None:
    """sphinx-exercise layout (CONTRIBUTING.md): exercise, then its dropdown solution; every code cell after
    `## Exercises` sits between `solution-start` and `solution-end`, so its output folds with it."""
    cells = load_notebook(path)["cells"]
    starts = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "## Exercises" in cell_source(c)]
    assert len(starts) == 1, f"{path.name}: needs exactly one '## Exercises' section"
    open_exercise, open_solution, exercises = None, None, []
    for i, cell in enumerate(cells[starts[0] :], start=starts[0]):
        if cell["cell_type"] == "code":
            assert open_solution, f"{path.name}: code cell {i} after '## Exercises' is outside a solution"
            continue
        text = cell_source(cell)
        assert "{admonition} Solution" not in text, f"{path.name}: cell {i} uses the old admonition solutions"
        for name, argument, body in directives(text):
            if name == "exercise":
                assert open_exercise is None and not open_solution, (
                    f"{path.name}: cell {i}: exercise {argument!r} starts before the previous one has its solution"
                )
                label = re.search(r"^:label:\s*(\S+)", body, re.M)
                assert label, f"{path.name}: cell {i}: exercise {argument!r} has no :label:"
                open_exercise = label.group(1)
                exercises.append(open_exercise)
            elif name in ("solution", "solution-start"):
                assert argument == open_exercise, (
                    f"{path.name}: cell {i}: solution to {argument!r} does not follow its exercise ({open_exercise!r})"
                )
                assert re.search(r"^:class:.*\bdropdown\b", body, re.M), f"{path.name}: solution {argument} not folded"
                open_exercise, open_solution = None, name == "solution-start"
            elif name == "solution-end":
                assert open_solution, f"{path.name}: cell {i}: solution-end without solution-start"
                open_solution = False
    assert exercises, f"{path.name}: the exercises section has no {{exercise}}"
    assert open_exercise is None and not open_solution, f"{path.name}: the last exercise or solution is not closed"
    labels = [e for e in exercises if not e.startswith("ex-")]
    assert not labels, f"{path.name}: exercise labels must start with 'ex-': {labels}"


def figure_cells(nb: dict) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and "plt.show()" in cell_source(c)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_figures_are_captioned_named_and_described(path: Path) -> None:
    for i, cell in figure_cells(load_notebook(path)):
        assert cell_source(cell).count("plt.show()") == 1, f"{path.name}: cell {i} shows more than one figure"
        meta = cell.get("metadata", {}).get("mystnb", {})
        figure, image = meta.get("figure", {}), meta.get("image", {})
        assert figure.get("caption", "").strip(), f"{path.name}: figure cell {i} has no mystnb.figure.caption"
        assert str(figure.get("name", "")).startswith("fig-"), f"{path.name}: figure cell {i} needs a 'fig-...' name"
        assert len(image.get("alt", "").split()) >= 4, f"{path.name}: figure cell {i} needs alt text (mystnb.image.alt)"


def test_figure_and_exercise_labels_are_unique_in_the_book() -> None:
    seen: dict[str, str] = {}
    for path in NOTEBOOKS:
        nb = load_notebook(path)
        labels = [c["metadata"]["mystnb"]["figure"]["name"] for _, c in figure_cells(nb) if "mystnb" in c["metadata"]]
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                labels += re.findall(r"^:label:\s*(\S+)", cell_source(cell), re.M)
        for label in labels:
            assert label not in seen, f"label {label!r} is used in {seen[label]} and in {path.name}"
            seen[label] = path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_glues_its_numbers_and_asserts_its_claims(path: Path) -> None:
    """The prose takes its numbers from glue and its claims are asserted (CONTRIBUTING.md); a page that has
    neither has not been written that way."""
    nb = load_notebook(path)
    code = "\n".join(cell_source(c) for c in code_cells(nb))
    prose = "\n".join(cell_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    # (a key that no cell glues fails the book build, which runs with -W)
    assert re.search(r"\{glue(?::\w+)?\}`", prose), f"{path.name}: the prose inserts no glued number"
    assert re.search(r"^\s*assert\b", code, re.M), f"{path.name}: no cell asserts a claim"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_is_in_the_table_of_contents(path: Path) -> None:
    listed = {strip_suffix(f) for f in toc_files(load_yaml("_toc.yml"))}
    docname = strip_suffix(path.relative_to(REPO).as_posix())
    assert docname in listed, f"{docname} is not listed in _toc.yml, so the book would leave it out"


def test_chapter_notebooks_exist() -> None:
    """The book has chapters: the checks above are not all vacuous."""
    names = {p.relative_to(REPO).as_posix() for p in NOTEBOOKS}
    assert names, "no chapter notebook found under chapters/"


# --------------------------------------------------------------------------------------------------------
# table of contents and configuration
# --------------------------------------------------------------------------------------------------------


def test_every_toc_entry_exists() -> None:
    toc = load_yaml("_toc.yml")
    assert toc.get("format") == "jb-book"
    missing = [f for f in toc_files(toc) if not any((REPO / f"{strip_suffix(f)}{s}").is_file() for s in (".md", ".ipynb"))]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_toc_has_front_matter_parts_and_reference() -> None:
    toc = load_yaml("_toc.yml")
    files = [strip_suffix(f) for f in toc_files(toc)]
    assert files[:3] == ["book/intro", "book/how_to_use", "book/notation"]
    assert "book/api" in files and "book/bibliography" in files
    captions = [part.get("caption", "") for part in toc["parts"]]
    assert "Part I: Numerical foundations" in captions


def test_book_configuration() -> None:
    config = load_yaml("_config.yml")
    execute = config["execute"]
    assert execute["execute_notebooks"] == "cache"
    assert execute.get("allow_errors") is False, "a failing cell must fail the build"
    assert execute["timeout"] >= 600, "the per-cell timeout should be generous"
    assert config["only_build_toc_files"] is True
    for pattern in (".venv", "_build", "README.md", "CONTRIBUTING.md", "benchmarks"):
        assert pattern in config["exclude_patterns"], f"{pattern} must be excluded from the book"
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["repository"]["branch"] == "main"
    assert "local_mathjax" in config["sphinx"]["local_extensions"], "math must render offline"
    assert "book/references.bib" in config["bibtex_bibfiles"]
    assert "sphinx_exercise" in config["sphinx"]["extra_extensions"], "exercises fold their solutions"
    assert config["sphinx"]["config"]["nb_merge_streams"] is True, "one output box per cell's prints"


def test_repository_url_is_the_one_the_house_style_installs_from() -> None:
    assert repository_url() == "https://github.com/dedl-book/dedl"
    assert install_url(common_cell()) == repository_url(), "CONTRIBUTING.md's common cell installs elsewhere"


# --------------------------------------------------------------------------------------------------------
# bibliography
# --------------------------------------------------------------------------------------------------------


def test_bibliography_parses_without_duplicates_and_has_the_required_keys() -> None:
    keys = bibliography_keys()  # pybtex refuses duplicate keys
    missing = sorted(set(REQUIRED_BIB_KEYS) - keys)
    assert not missing, f"book/references.bib lacks {missing}"


def test_every_cited_key_is_in_the_bibliography() -> None:
    sources = [*REPO.glob("book/*.md"), *CHAPTERS.glob("**/*.md"), *(REPO / "dedl").glob("**/*.py")]
    cited: dict[str, set[str]] = {}
    for path in sources:
        for key in cited_keys(read(path)):
            cited.setdefault(key, set()).add(path.relative_to(REPO).as_posix())
    for path in NOTEBOOKS:
        for cell in load_notebook(path)["cells"]:
            if cell["cell_type"] == "markdown":
                for key in cited_keys(cell_source(cell)):
                    cited.setdefault(key, set()).add(path.relative_to(REPO).as_posix())
    unknown = {key: sorted(where) for key, where in cited.items() if key not in bibliography_keys()}
    assert not unknown, f"cited but not in book/references.bib: {unknown}"


# --------------------------------------------------------------------------------------------------------
# API reference
# --------------------------------------------------------------------------------------------------------


def dedl_modules() -> list[str]:
    names = []
    for path in sorted((REPO / "dedl").glob("**/*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if any(part.startswith("_") for part in parts):
            continue
        names.append(".".join(parts))
    return names


def test_api_reference_documents_every_module() -> None:
    api = read(REPO / "book" / "api.md")
    documented = set(re.findall(r"\.\. automodule::\s+([\w.]+)", api))
    missing = [name for name in dedl_modules() if name not in documented]
    assert not missing, (
        "book/api.md does not document "
        + ", ".join(missing)
        + "; add for each a heading and a block\n```{eval-rst}\n.. automodule:: <module>\n```"
    )
    stale = sorted(documented - set(dedl_modules()))
    assert not stale, f"book/api.md documents modules that do not exist: {stale}"


# --------------------------------------------------------------------------------------------------------
# dependencies: pyproject.toml, environment.yml and the torch pin
# --------------------------------------------------------------------------------------------------------


def load_pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(read(REPO / "pyproject.toml"))


def canonical(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name).lower()
    return {"pytorch": "torch"}.get(name, name)  # conda's name for torch


def parse_requirement(text: str):
    from packaging.specifiers import SpecifierSet

    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;#]*?)\s*", text)
    assert match, f"cannot parse requirement {text!r}"
    return canonical(match.group(1)), SpecifierSet(match.group(3).replace(" ", ""))


def test_environment_yml_declares_the_same_dependencies_as_pyproject() -> None:
    project = load_pyproject()["project"]
    expected = dict(parse_requirement(r) for r in project["dependencies"])
    for extra in ("book", "test"):
        expected.update(parse_requirement(r) for r in project["optional-dependencies"][extra])

    env = load_yaml("environment.yml")
    declared = {}
    python_spec = None
    for dep in env["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            entry = str(entry).strip()
            if entry.startswith("-"):  # "-e ." installs dedl itself
                continue
            name, spec = parse_requirement(entry)
            if name == "python":
                python_spec = spec
            elif name != "pip":
                assert name not in declared, f"environment.yml declares {name} twice"
                declared[name] = spec

    assert python_spec is not None and str(python_spec) == project["requires-python"].replace(" ", ""), (
        f"environment.yml asks for python{python_spec}, pyproject.toml for {project['requires-python']}"
    )
    only_pyproject = sorted(set(expected) - set(declared))
    only_env = sorted(set(declared) - set(expected))
    assert not only_pyproject and not only_env, (
        f"only in pyproject.toml: {only_pyproject}; only in environment.yml: {only_env}"
    )
    differ = {n: (str(expected[n]), str(declared[n])) for n in expected if expected[n] != declared[n]}
    assert not differ, f"version specifiers differ (pyproject.toml, environment.yml): {differ}"


def test_torch_is_pinned_in_the_makefile_only() -> None:
    makefile = read(REPO / "Makefile")
    pins = re.findall(r"^TORCH_VERSION\s*:?=\s*(\S+)\s*$", makefile, re.M)
    assert len(pins) == 1 and re.fullmatch(r"\d+\.\d+\.\d+", pins[0]), "one TORCH_VERSION := x.y.z in the Makefile"
    for name in ("pyproject.toml", "environment.yml", "README.md", "CONTRIBUTING.md", ".ci/run"):
        text = read(REPO / name)
        assert not re.search(r"torch\s*==\s*\d", text), f"{name} pins torch; the Makefile is the one place"
    # torch first, then dedl with its extras, in the installation recipe
    torch_at = makefile.index('"torch==$(TORCH_VERSION)"')
    dedl_at = makefile.index('-e ".[book,test]"')
    assert torch_at < dedl_at, "the Makefile must install torch before dedl"


# --------------------------------------------------------------------------------------------------------
# the two commands and CI
# --------------------------------------------------------------------------------------------------------


def make_recipe(target: str) -> str:
    """The recipe of a Makefile target, continuation lines joined."""
    makefile = read(REPO / "Makefile").replace("\\\n", " ")
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n?)+)", makefile, re.M)
    assert match, f"no `{target}` target in the Makefile"
    return match.group(1)


def test_make_test_runs_the_whole_suite_with_cuda_hidden_at_ci_scale() -> None:
    recipe = make_recipe("test")
    for required in ("CUDA_VISIBLE_DEVICES= ", "DEDL_SCALE=ci", "--nbval-lax", "--dist loadfile", "-n $(TEST_WORKERS)"):
        assert required in recipe, f"`make test` lacks {required!r}"
    assert re.search(r"\btests chapters\b", recipe)
    assert "chromium" in read(REPO / "Makefile").split("\ntest:")[1].splitlines()[0], "make test installs chromium"


def test_make_book_builds_with_warnings_as_errors() -> None:
    makefile = read(REPO / "Makefile")
    assert re.search(r"^JB_FLAGS\s*:?=\s*-W -n --keep-going\s*$", makefile, re.M)
    assert "jupyter-book build $(JB_FLAGS) ." in make_recipe("book")
    assert "OMP_NUM_THREADS=1" in make_recipe("book"), "the book runs on one thread, as the tests do"


def test_ci_runs_the_readme_test_command() -> None:
    script = read(REPO / ".ci" / "run")
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "make test", ".ci/run must end by running `make test`"
    assert "make test" in read(REPO / "README.md") and "make book" in read(REPO / "README.md")


def test_collection_skips_build_outputs_and_the_virtual_environment() -> None:
    options = load_pyproject()["tool"]["pytest"]["ini_options"]
    for folder in (".venv", "_build"):
        assert folder in options["norecursedirs"], f"pytest would collect {folder}"
    assert options["testpaths"] == ["tests", "chapters"]


# --------------------------------------------------------------------------------------------------------
# GitHub Actions: the book is tested and published on every push to main, pull requests are tested
# --------------------------------------------------------------------------------------------------------

WORKFLOWS = REPO / ".github" / "workflows"


def workflow_commands(name: str) -> list[str]:
    workflow = load_yaml(f".github/workflows/{name}")
    return [step["run"].strip() for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


def test_workflows_are_valid_github_actions_workflows() -> None:
    """Linted offline against the workflow schema that check-jsonschema ships (no download)."""
    import shutil
    import subprocess
    import sys

    checker = Path(sys.executable).with_name("check-jsonschema")
    checker = str(checker) if checker.exists() else shutil.which("check-jsonschema")
    assert checker, "check-jsonschema is a test dependency (pyproject.toml [test])"
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) == 2, files
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.github-workflows", *files], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_push_to_main_runs_the_two_commands_and_deploys_pages() -> None:
    workflow = load_yaml(".github/workflows/book.yml")
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as True
    assert triggers["push"]["branches"] == ["main"]
    assert workflow_commands("book.yml") == ["make test", "make book"], "the README's two commands, in order"
    uses = [step.get("uses", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert any(u.startswith("actions/upload-pages-artifact@") for u in uses)
    assert any(u.startswith("actions/deploy-pages@") for u in uses)
    build_steps = workflow["jobs"]["build"]["steps"]
    assert any(s.get("with", {}).get("path") == "_build/html" for s in build_steps), "publishes _build/html"
    cached = {s["with"]["path"] for s in build_steps if s.get("uses", "").startswith("actions/cache@")}
    assert cached == {".venv", "_build/.jupyter_cache"}


def test_pull_requests_run_the_test_command() -> None:
    workflow = load_yaml(".github/workflows/tests.yml")
    triggers = workflow[True] if True in workflow else workflow["on"]
    assert "pull_request" in triggers
    assert workflow_commands("tests.yml") == ["make test"]


def test_workflows_do_not_repeat_the_repository_url() -> None:
    """The repository URL lives in _config.yml alone."""
    for path in WORKFLOWS.glob("*.yml"):
        assert "dedl-book/dedl" not in read(path), f"{path.name} names the repository; use _config.yml"
