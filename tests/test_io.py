"""pipeline/io.py: writer failures name the file, column and rows (a mixed-type column, a full disk)."""
from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pytest

from pipeline import io


def test_a_mixed_type_column_names_the_file_column_rows_and_types(tmp_path):
    frame = pd.DataFrame({"profit": [1.5, 2.0, 3.0, 4.0], "comment": [1, 2, "two", 4]})
    out = tmp_path / "tiny" / "ingested.parquet"
    expected = (r"tiny/ingested\.parquet: column 'comment' mixes value types and cannot be written as parquet: "
                r"int at rows \[0, 1, 3\], str at rows \[2\]")
    with pytest.raises(io.OutputError, match=expected):
        io.write_parquet(out, frame)
    with pytest.raises(io.OutputError, match=expected):
        io.write_outputs(tmp_path / "tiny", {"summary.json": {"rows": 4}, "ingested.parquet": frame})
    assert list(tmp_path.rglob("*")) == [tmp_path / "tiny"]     # nothing written, no temp file left
    io.write_parquet(out, frame.astype({"comment": str}))
    assert pd.read_parquet(out)["comment"].tolist() == ["1", "2", "two", "4"]


def test_a_full_disk_names_the_file_and_keeps_the_errno(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError, match=r"No space left on device: .*study_x/results\.csv'") as err:
        io.write_outputs(tmp_path / "study_x", {"results.csv": pd.DataFrame({"a": [1]})})
    assert err.value.errno == errno.ENOSPC
    monkeypatch.setattr(pd.DataFrame, "to_parquet", lambda self, path, **kw: full(None, b""))
    with pytest.raises(OSError, match=r"No space left on device: .*study_x/t\.parquet'"):
        io.write_parquet(tmp_path / "study_x" / "t.parquet", pd.DataFrame({"a": [1]}))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]      # no temp file left behind
