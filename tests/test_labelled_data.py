"""The bundled annotated series (bench/data/tcpd_*) and the labelled-changes detectors."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bench import labelled_changes as L

EXPECTED = {
    "nile": 100,
    "ozone": 54,
    "gdp_japan": 58,
    "businv": 330,
    "lga_passengers": 468,
    "well_log": 675,
}


def _doc() -> dict[str, object]:
    doc: dict[str, object] = json.loads(L.ANNOTATIONS.read_text(encoding="utf-8"))
    return doc


def _raw_rows(entry: dict[str, object]) -> list[list[str]]:
    with (L.DATA_DIR / str(entry["file"])).open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_series_load_with_consistent_annotations() -> None:
    series = L.load_series()
    assert {s.name: s.values.size for s in series} == EXPECTED
    for s in series:
        assert np.all(np.isfinite(s.values))
        assert len(s.annotations) == 5, s.name
        for annotator, cps in s.annotations.items():
            assert cps == sorted(set(cps)), (s.name, annotator)
            assert all(0 <= c < s.values.size for c in cps), (s.name, annotator)
        # Every series has at least one annotated change somewhere.
        assert any(s.annotations.values()), s.name


def test_data_files_rebuild_the_published_tcpd_files() -> None:
    # TCPD publishes an md5 per <name>.json (checksums.json). Rebuilding the
    # JSON from the CSV and the stored header fields must give the same bytes.
    series = _doc()["series"]
    assert isinstance(series, dict)
    for name, entry in series.items():
        rows = _raw_rows(entry)
        header, body = rows[0], rows[1:]
        col = header.index(entry["column"])
        meta = entry["tcpd_file"]
        values = [int(r[col]) if r[col].lstrip("-").isdigit() else float(r[col]) for r in body]
        n = len(values)
        time: dict[str, object] = {}
        if meta["time_format"] is not None:
            time = {"type": "string", "format": meta["time_format"]}
        time["index"] = list(range(n))
        if meta["time_format"] is not None:
            time["raw"] = [r[0] for r in body]
        rebuilt = {
            "name": name,
            "longname": meta["longname"],
            "n_obs": n,
            "n_dim": 1,
            "time": time,
            "series": [{"label": meta["label"], "type": meta["type"], "raw": values}],
        }
        text = json.dumps(rebuilt, indent="\t") + ("\n" if meta["final_newline"] else "")
        assert hashlib.md5(text.encode()).hexdigest() == meta["md5"], name


def test_loader_values_are_the_file_values() -> None:
    series = _doc()["series"]
    assert isinstance(series, dict)
    for s in L.load_series():
        entry = series[s.name]
        rows = _raw_rows(entry)
        col = rows[0].index(entry["column"])
        np.testing.assert_array_equal(s.values, [float(r[col]) for r in rows[1:]])


def test_load_rejects_a_length_mismatch(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("time,value\n0,1.0\n1,2.0\n", encoding="utf-8")
    doc = {"series": {"s": {"file": "s.csv", "column": "value", "n_obs": 3, "annotations": {}}}}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match="2 values"):
        L.load_series(path)


def test_standardised_uses_the_start_only() -> None:
    ys = np.array([1.0, 3.0, 1.0, 3.0, 100.0, -50.0])
    z = L.standardised(ys, k=4)
    np.testing.assert_allclose(z, (ys - 2.0) / 1.0)
    np.testing.assert_allclose(L.standardised(np.full(5, 7.0), k=3), np.zeros(5))


def test_pelt_finds_a_clear_mean_shift() -> None:
    rng = np.random.default_rng(0)
    ys = np.concatenate([rng.normal(0.0, 1.0, 60), rng.normal(6.0, 1.0, 60)])
    assert L.pelt_cps(ys) == [60]
    assert L.pelt_cps(rng.normal(0.0, 1.0, 120)) == []


def test_river_detector_alarms_after_a_shift() -> None:
    rng = np.random.default_rng(1)
    xs = np.concatenate([rng.normal(0.0, 1.0, 200), rng.normal(5.0, 1.0, 100)])
    cps = L.river_cps(L._page_hinkley, xs)
    assert cps and all(c >= 200 for c in cps)
    assert cps[0] < 230
