"""Structured logs: one JSON object per line on stdout (journald keeps them).

When the log stream is a terminal, the same events are rendered for a
human instead (structlog's ``ConsoleRenderer``: time, level, event, then
``key=value`` pairs); a pipe, a file or the journal get JSON lines
(``choose_renderer``). Every JSON line holds ``timestamp`` (ISO 8601, UTC),
``level``, ``logger`` and ``event``, a stable snake_case event name such as
``"asset_added"``; the details are further keys. Values under keys that look
like secrets (passwords, tokens, API/private/secret keys, credentials; a key
named just ``key`` is not one: config reloads log ``key=<field name>``) and
strings that hold PEM private keys are replaced by ``"[redacted]"`` before
rendering, at any nesting depth.

Usage::

    configure()                      # once, at daemon start
    log = get_logger("predictor.daemon")
    log.info("snapshot_written", path=str(path), bytes=n)
"""

from __future__ import annotations

import logging as std_logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger

REDACTED = "[redacted]"

#: Key names treated as secrets: whole words of a snake/kebab/camel-case key.
_SECRET_KEY = re.compile(
    r"(?:^|[_\-.])(?:password|passwd|passphrase|pwd|secret|token|api_?key|private_?key|"
    r"secret_?key|access_?key|signing_?key|key_?material|credentials?|authorization|auth|"
    r"cookie|client_?secret)(?:$|[_\-.])",
    re.IGNORECASE,
)
_PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_MAX_DEPTH = 8


def is_secret_key(key: str) -> bool:
    """True for key names such as ``password``, ``api_key``, ``authToken``, ``db.secret``."""
    snake = _CAMEL.sub("_", key)
    return bool(_SECRET_KEY.search(snake))


def _scrub(value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, str):
        return REDACTED if _PEM_PRIVATE.search(value) else value
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and is_secret_key(k) else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, depth + 1) for v in value)
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace secret-looking values by ``"[redacted]"``."""
    for key in list(event_dict):
        if key == "event":
            continue
        if is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key], 0)
    return event_dict


#: What ``configure`` uses for an argument given as None: the values of the
#: previous call (the entry point configures the level from the settings
#: before the service configures the logs again without one).
_current: dict[str, Any] = {"level": std_logging.INFO, "renderer": "auto"}


def choose_renderer(stream: TextIO, renderer: str = "auto") -> str:
    """``"console"`` or ``"json"``: ``"auto"`` picks console for a terminal stream.

    >>> import io
    >>> choose_renderer(io.StringIO())
    'json'
    >>> choose_renderer(io.StringIO(), "console")
    'console'
    """
    if renderer not in ("auto", "console", "json"):
        raise ValueError(f"unknown log renderer {renderer!r}")
    if renderer != "auto":
        return renderer
    isatty = getattr(stream, "isatty", None)
    try:
        return "console" if isatty is not None and isatty() else "json"
    except ValueError:  # a closed stream
        return "json"


def level_number(level: str | int) -> int:
    """A ``logging`` level number from a name (``"warning"``) or a number."""
    if isinstance(level, int):
        return level
    number = std_logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    return number


def configure(
    stream: TextIO | None = None,
    level: str | int | None = None,
    renderer: str | None = None,
) -> None:
    """Configure structlog for one event per line on ``stream`` (default: ``sys.stdout``).

    ``level`` is a name (``"debug"``, ``"info"`` ...) or a ``logging`` level
    number; records below it cost one comparison. ``renderer`` is
    ``"auto"`` (see ``choose_renderer``), ``"console"`` or ``"json"``. A
    None argument keeps the previous call's value (``info`` and ``auto`` at
    first). Reconfiguring applies to loggers obtained earlier too (loggers
    are not cached).
    """
    number = level_number(_current["level"] if level is None else level)
    wanted = _current["renderer"] if renderer is None else renderer
    out = sys.stdout if stream is None else stream
    chosen = choose_renderer(out, wanted)
    _current.update(level=number, renderer=wanted)
    final: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if chosen == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            redact_secrets,
            structlog.processors.StackInfoRenderer(),
            *(() if chosen == "console" else (structlog.processors.format_exc_info,)),
            structlog.processors.UnicodeDecoder(),
            final,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **initial: Any) -> FilteringBoundLogger:
    """A bound logger whose lines carry ``logger=name`` and the ``initial`` keys."""
    return cast(FilteringBoundLogger, structlog.get_logger().bind(logger=name, **initial))
