"""The documentation: it builds strictly, speaks only of the repository, and its examples run.

* ``mkdocs build --strict`` of docs/ (skipped, with the reason, when mkdocs
  is not installed: ``make test`` installs it);
* no README, CONTRIBUTING, docs page, docstring or comment in predictor/,
  bench/, tests/ or examples/ points outside the repository (a sibling
  checkout, an absolute machine path, design files that are not shipped)
  or cites a tracker number a reader cannot look up;
* the docstring examples (``>>>``) of the public modules run as doctests.
"""

from __future__ import annotations

import doctest
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Assembled from pieces so that this file does not match its own patterns.
_FORBIDDEN = {
    "a path into a sibling checkout": re.escape(".." + "/shared"),
    "an absolute machine path": r"(?<![\w.])/" + "work/",
    "a design file that is not in the repository": r"\b(?:MODEL|ARCHITECTURE)" + r"\.md\b",
    "a tracker number": r"(?i)\bissues?\s*#?\d+\b|(?<![\w&#/])#\d+\b",
}
_PATTERNS = {why: re.compile(rx) for why, rx in _FORBIDDEN.items()}


def _text_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "mkdocs.yml"]
    files += sorted((REPO / "docs").rglob("*.md"))
    for folder in ("predictor", "bench", "tests", "examples", "docs"):
        files += sorted((REPO / folder).rglob("*.py"))
    return [f for f in files if f.exists()]


def test_the_scan_covers_the_repository() -> None:
    names = {p.relative_to(REPO).as_posix() for p in _text_files()}
    assert {"README.md", "CONTRIBUTING.md", "docs/model.md", "tests/test_docs.py"} <= names
    assert any(n.startswith("predictor/core/") for n in names)
    assert not (REPO / "notes").exists(), "internal notes belong in CONTRIBUTING.md"


@pytest.mark.parametrize(("why", "pattern"), list(_PATTERNS.items()))
def test_nothing_points_outside_the_repository(why: str, pattern: re.Pattern[str]) -> None:
    hits = []
    for path in _text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, f"{why}:\n" + "\n".join(hits)


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        ("see ../" + "shared/spec", True),
        ("open /" + "work/main/x", True),
        ("MODEL" + ".md says", True),
        ("fixed in issue " + "12", True),
        ("closes #" + "12", True),
        ("see docs/model.md", False),
        ("colour &#" + "12;", False),
        ("tmp_path / 'work/x'", False),
        ("a 12-tick window", False),
    ],
)
def test_the_patterns_themselves(text: str, flagged: bool) -> None:
    assert any(p.search(text) for p in _PATTERNS.values()) is flagged


def test_readme_shows_the_picture_and_links_into_docs() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/img/nile.png" in readme
    png = REPO / "docs" / "img" / "nile.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    for target in re.findall(r"\]\(((?:docs|examples)/[^)#]+)", readme):
        assert (REPO / target).exists(), target
    for command in ("make run", "make test", '"y"', '"ts"', "9108/metrics"):
        assert command in readme, command


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        found = shutil.which("mkdocs")
        if found is None:
            pytest.skip("mkdocs is not installed (make test installs requirements-dev.txt)")
        mkdocs = Path(found)
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={"PATH": str(mkdocs.parent) + ":/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "fit_history" in api and "step_batch" in api  # rendered from docstrings
    config = (tmp_path / "site" / "configuration" / "index.html").read_text(encoding="utf-8")
    assert "cusum_h" in config and "metrics_port" in config  # generated tables
    assert "config-reference" not in config  # the marker was replaced


def test_configuration_reference_covers_every_field() -> None:
    sys.path.insert(0, str(REPO / "docs" / "hooks"))
    try:
        hook = importlib.import_module("config_reference")
    finally:
        sys.path.remove(str(REPO / "docs" / "hooks"))
    from predictor.config import FIELD_SPECS
    from predictor.daemon.settings import DaemonSettings

    text = hook.render()
    for name in [*FIELD_SPECS, *DaemonSettings.model_fields]:
        assert f"| `{name}` |" in text, name
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert hook.on_page_markdown(page, None).count("| `cusum_h` |") == 1


#: Modules whose ``>>>`` examples run here (the core's run in its own tests).
DOCTEST_MODULES = (
    "predictor",
    "predictor.errors",
    "predictor.config",
    "predictor.compat",
    "predictor.api",
    "predictor.tuning.optimizer",
)


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name: str) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
