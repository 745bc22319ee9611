"""mkdocs hook: the configuration reference, generated from the code.

``docs/configuration.md`` holds the marker ``<!-- config-reference -->``;
while the site is built, ``on_page_markdown`` replaces it by one table per
config table: ``[predictor]`` from ``predictor.config.FIELD_SPECS`` (type,
default, allowed range, hot-reloadable or not, meaning) and ``[daemon]``
from the fields of ``predictor.daemon.settings.DaemonSettings``. The tables
cannot drift from the code: there is no copy of them in the repository.
``python docs/hooks/config_reference.py`` prints the same Markdown.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- config-reference -->"
ROOT = Path(__file__).resolve().parents[2]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:_}"
    return repr(value)


def predictor_table() -> str:
    """Markdown table of every ``[predictor]`` field."""
    from predictor.config import ENV_PREFIX, FIELD_SPECS, PredictorConfig

    defaults = PredictorConfig()
    rows = [
        "| field | default | allowed | reload | meaning | environment |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, spec in FIELD_SPECS.items():
        reload = "in place" if spec.dynamic else "re-initialises"
        rows.append(
            f"| `{name}` | `{_value(getattr(defaults, name))}` | {_cell(spec.describe())} "
            f"| {reload} | {_cell(spec.doc)} | `{ENV_PREFIX}{name.upper()}` |"
        )
    return "\n".join(rows)


def daemon_table() -> str:
    """Markdown table of every ``[daemon]`` field (pydantic model fields)."""
    from predictor.daemon.settings import DaemonSettings

    rows = ["| field | default | meaning |", "| --- | --- | --- |"]
    for name, field in DaemonSettings.model_fields.items():
        rows.append(f"| `{name}` | `{_value(field.default)}` | {_cell(field.description or '')} |")
    return "\n".join(rows)


def render() -> str:
    """The Markdown that replaces the marker."""
    return (
        "## `[predictor]`: the model\n\n"
        + predictor_table()
        + "\n\n## `[daemon]`: the service\n\n"
        + daemon_table()
        + "\n"
    )


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """mkdocs event: fill the marker of the configuration page."""
    if MARKER not in markdown:
        return markdown
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return markdown.replace(MARKER, render())


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(render())
