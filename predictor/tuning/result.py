"""OptimizationResult and the configuration mutation protocol.

``export_to_toml`` merges the best parameters into the ``[predictor]``
table of a config file; every other table (``[daemon]``, ``[tuning]``) is
kept as it is. The protocol:

1. Refuse locked keys (``LOCKED_FIELDS`` and ``[tuning] locked``) and names
   that are no predictor field: ``ConfigMutationError``, file untouched.
2. Take the mutation lock: create ``<path>.tmp`` with ``O_CREAT | O_EXCL``.
   If it exists, another mutation is running (or one crashed mid-way and an
   operator must look): refuse with ``ConfigMutationError``. The lock is
   taken before the file is read, so two exporters can never both merge
   into the same old content (no lost update).
3. Read and merge; with ``validate`` the merged ``[predictor]`` table must
   build a ``PredictorConfig`` (types, ranges, relations) and ``[tuning]``
   must be valid, else ``ConfigMutationError``.
4. Backups (``backup=True``): ``<path>.bak.<UTC timestamp>`` and
   ``<path>.bak`` (latest), each written atomically with the old bytes.
5. Write the new text into the locked temp file, fsync, ``os.replace`` it
   over the config, fsync the directory. The new text edits the values in
   place when that reproduces the merged document exactly (comments and
   layout kept); otherwise the document is rewritten with ``tomli_w``.
6. Append one JSON line to the audit log (``mutations.log`` beside the
   file, or ``[tuning] mutations_log``): time, study, tier, objective,
   and per changed key ``{"old", "new"}`` (old = the value in force before,
   the field's default when the file did not set it), plus the SHA-256 of
   the file before and after.

A merge that changes nothing writes nothing and logs nothing.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, field_validator

from predictor.config import FIELD_SPECS, KNOWN_SECTIONS, PredictorConfig
from predictor.errors import ConfigError, ConfigMutationError
from predictor.snapshots.atomic import atomic_write, fsync_directory
from predictor.tuning.settings import TuningSettings
from predictor.tuning.space import LOCKED_FIELDS

_DEFAULTS = PredictorConfig().to_dict()


@dataclass(frozen=True)
class Mutation:
    """What an export did: the delta per key, the backups, the audit record."""

    path: Path
    delta: dict[str, dict[str, Any]]
    backup_latest: Path | None
    backup_timestamped: Path | None
    audit_log: Path | None
    record: dict[str, Any] | None

    @property
    def changed(self) -> bool:
        """False when the merge changed nothing (no write, no log)."""
        return bool(self.delta)


class OptimizationResult(BaseModel):
    """Immutable result of a tuning campaign; exportable to config.toml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_name: str = Field(min_length=1)
    tier: str
    best_params: dict[str, Any]
    best_objective: float
    total_iterations: int = Field(ge=0)
    early_stopped: bool
    convergence_delta: float
    timestamp_utc: str

    @field_validator("tier")
    @classmethod
    def _validate_tier(cls, v: str) -> str:
        if v not in ("fast", "deep"):
            raise ValueError(f"Invalid tier: {v}. Must be 'fast' or 'deep'")
        return v

    @field_validator("best_params")
    @classmethod
    def _validate_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if isinstance(value, list | tuple):
                ok = all(isinstance(x, int) and not isinstance(x, bool) for x in value)
            else:
                ok = isinstance(value, int | float | str)
            if not ok:
                raise ValueError(f"best_params[{key!r}]: {value!r} is not a TOML scalar")
        return v

    # --- mutation protocol ---------------------------------------------------
    def export_to_toml(
        self,
        path: str | os.PathLike[str] = "config.toml",
        backup: bool = True,
        validate: bool = True,
        *,
        audit_log: str | os.PathLike[str] | None = None,
    ) -> Mutation:
        """Merge ``best_params`` into the file's ``[predictor]`` table (module docstring)."""
        target = Path(path)
        if not target.exists():
            raise FileNotFoundError(f"Config file not found: {target}")
        self._check_keys(LOCKED_FIELDS)
        tmp = Path(os.fspath(target) + ".tmp")
        lock = _MutationLock(tmp, target)
        try:
            raw = target.read_bytes()
            current = _parse(raw, target)
            settings = _tuning_settings(current)
            self._check_keys(LOCKED_FIELDS | frozenset(settings.locked))
            merged = self._merge_with_validation(current, validate)
            delta = self._compute_delta(current, merged)
            if not delta:
                return Mutation(target, {}, None, None, None, None)
            text = _render(raw.decode("utf-8"), current, merged)
            stamped = latest = None
            if backup:
                stamped, latest = _backups(target, raw)
            lock.commit(text.encode("utf-8"))
        finally:
            lock.release()
        log_path = Path(audit_log) if audit_log is not None else settings.audit_log_path(target)
        record = self._log_mutation(log_path, target, delta, raw, text.encode("utf-8"), stamped)
        return Mutation(target, delta, latest, stamped, log_path, record)

    def _check_keys(self, locked: frozenset[str]) -> None:
        bad = sorted(k for k in self.best_params if k in locked)
        if bad:
            raise ConfigMutationError(
                f"Attempted to modify locked parameter(s): {bad}. "
                "This violates invariant protection rules."
            )
        unknown = sorted(k for k in self.best_params if k not in FIELD_SPECS)
        if unknown:
            raise ConfigMutationError(f"not predictor parameters: {unknown}")

    def _merge_with_validation(
        self, current_config: Mapping[str, Any], validate: bool
    ) -> dict[str, Any]:
        """``current_config`` with ``best_params`` in its ``[predictor]`` table."""
        merged = copy.deepcopy(dict(current_config))
        table = merged.setdefault("predictor", {})
        if not isinstance(table, dict):
            raise ConfigMutationError("[predictor] is not a TOML table")
        for key, value in self.best_params.items():
            table[key] = list(value) if isinstance(value, tuple) else value
        if validate:
            self._validate_config(merged)
        return merged

    @staticmethod
    def _validate_config(config: Mapping[str, Any]) -> None:
        """Tables known, ``[predictor]`` builds a ``PredictorConfig``, ``[tuning]`` valid."""
        unknown = sorted(set(config) - KNOWN_SECTIONS)
        if unknown:
            raise ConfigMutationError(f"unknown table [{unknown[0]}] in the merged config")
        try:
            PredictorConfig.from_dict(config.get("predictor", {}))
            _tuning_settings(config)
        except ConfigError as exc:
            raise ConfigMutationError(f"merged config is invalid: {exc}") from exc

    @staticmethod
    def _compute_delta(
        old_config: Mapping[str, Any], new_config: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """Changed keys: ``{key: {"old", "new"}}``; predictor keys bare, others dotted.

        A predictor key absent from the old file counts with its default
        (the value the predictor ran with), so restating a default is no change.
        """
        delta: dict[str, dict[str, Any]] = {}
        for table in sorted(set(old_config) | set(new_config)):
            old_t, new_t = old_config.get(table, {}), new_config.get(table, {})
            if not isinstance(old_t, Mapping) or not isinstance(new_t, Mapping):
                if old_t != new_t:
                    delta[table] = {"old": old_t, "new": new_t}
                continue
            for key in sorted(set(old_t) | set(new_t)):
                old, new = old_t.get(key), new_t.get(key)
                if table == "predictor":
                    old = old if key in old_t else _DEFAULTS.get(key)
                    new = new if key in new_t else _DEFAULTS.get(key)
                if _normalise(old) != _normalise(new):
                    name = key if table == "predictor" else f"{table}.{key}"
                    delta[name] = {"old": old, "new": new}
        return delta

    def _log_mutation(
        self,
        log_path: Path,
        config: Path,
        delta: Mapping[str, Any],
        before: bytes,
        after: bytes,
        backup: Path | None,
    ) -> dict[str, Any]:
        """Append one JSON line to the audit log (O_APPEND, fsync)."""
        record = {
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "event": "config_mutation",
            "config": os.fspath(config.resolve()),
            "study": self.study_name,
            "tier": self.tier,
            "objective": self.best_objective,
            "total_iterations": self.total_iterations,
            "delta": dict(delta),
            "backup": None if backup is None else os.fspath(backup),
            "sha256_before": hashlib.sha256(before).hexdigest(),
            "sha256_after": hashlib.sha256(after).hexdigest(),
        }
        line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # One write of the whole line: O_APPEND keeps concurrent lines whole.
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return record


# --- protocol steps ------------------------------------------------------------


class _MutationLock:
    """The exclusively created temp file: the lock, then the new content.

    ``commit`` writes, fsyncs and renames it over the target (the rename
    releases the lock); ``release`` removes it if it was not committed.
    """

    def __init__(self, tmp: Path, target: Path) -> None:
        mode = os.stat(target).st_mode & 0o777
        try:
            self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            raise ConfigMutationError(
                f"Concurrent mutation detected: {tmp} exists. Another optimizer may be "
                "writing (if none is, a previous mutation crashed: inspect and remove the file)."
            ) from None
        self.tmp = tmp
        self.target = target
        self.owned = True
        os.fchmod(self.fd, mode)

    def _close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def commit(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
            os.fsync(self.fd)
        finally:
            self._close()
        os.replace(self.tmp, self.target)
        # From here the temp name is free: another mutation may own it now.
        self.owned = False
        fsync_directory(self.target.parent)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self._close()
        if self.owned:
            self.owned = False
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigMutationError(f"{path}: not valid TOML ({exc})") from exc


def _tuning_settings(doc: Mapping[str, Any]) -> TuningSettings:
    try:
        return TuningSettings.from_document(doc)
    except ConfigError as exc:
        raise ConfigMutationError(f"invalid [tuning] table: {exc}") from exc


def _backups(target: Path, raw: bytes) -> tuple[Path, Path]:
    mode = os.stat(target).st_mode & 0o777
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    stamped = target.with_name(f"{target.name}.bak.{stamp}")
    latest = target.with_name(f"{target.name}.bak")
    atomic_write(stamped, (raw,), mode=mode)
    atomic_write(latest, (raw,), mode=mode)
    return stamped, latest


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


_TABLE_HEADER = re.compile(r"^\s*\[")
_PREDICTOR_HEADER = re.compile(r"^\s*\[\s*predictor\s*\]\s*(#.*)?$")


def _render(text: str, current: Mapping[str, Any], merged: Mapping[str, Any]) -> str:
    """New file text: values edited in place if that is exact, else a ``tomli_w`` rewrite."""
    edited = _edit_in_place(text, current.get("predictor", {}), merged["predictor"])
    if edited is not None:
        try:
            if tomllib.loads(edited) == merged:
                return edited
        except tomllib.TOMLDecodeError:
            pass
    return tomli_w.dumps(dict(merged))


def _edit_in_place(text: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """Replace ``key = value`` lines of the ``[predictor]`` table; append new keys to it."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if _PREDICTOR_HEADER.match(ln)), None)
    changes = {k: v for k, v in new.items() if k not in old or old[k] != v}
    if start is None:
        block = "\n[predictor]\n" + tomli_w.dumps(changes)
        return text + ("" if text.endswith("\n") or not text else "\n") + block
    end = next(
        (i for i in range(start + 1, len(lines)) if _TABLE_HEADER.match(lines[i])), len(lines)
    )
    pending = dict(changes)
    for i in range(start + 1, end):
        m = re.match(r"^(\s*)([A-Za-z0-9_-]+)(\s*=\s*)([^#\n]*?)(\s*(#.*)?)(\r?\n)?$", lines[i])
        if m is None or m.group(2) not in pending:
            continue
        value = tomli_w.dumps({"v": pending.pop(m.group(2))})[len("v = ") :].rstrip("\n")
        lines[i] = f"{m.group(1)}{m.group(2)}{m.group(3)}{value}{m.group(5)}{m.group(7) or ''}"
    if pending:
        insert_at = end
        while insert_at > start + 1 and not lines[insert_at - 1].strip():
            insert_at -= 1
        if insert_at > 0 and not lines[insert_at - 1].endswith("\n"):
            lines[insert_at - 1] += "\n"
        lines[insert_at:insert_at] = [tomli_w.dumps(pending)]
    return "".join(lines)


__all__ = ["Mutation", "OptimizationResult"]
