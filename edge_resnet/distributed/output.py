"""Where batch inference's results go: ``.jsonl`` or ``.parquet``, one record per image or frame.

Records arrive in source order. The file is written beside its destination under a temporary name
and renamed into place at the end: an interrupted run leaves no half-written results file, and an
existing file is never replaced (choose another ``--out`` or remove it).
"""

from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any

import numpy as np

from edge_resnet.errors import DataError

PARQUET_ROWS_PER_GROUP = 4096


class ResultsWriter(ABC):
    """Columns per call: ``source`` (str), ``frame`` (int) and either the top-k (``indices``,
    ``scores``, ``labels``) or ``embedding`` (float32 vectors)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.rows = 0

    @abstractmethod
    def write(self, columns: dict[str, Any]) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    def commit(self) -> Path:
        self._close()
        if self.path.exists():
            raise DataError(f"{self.path} appeared while the run wrote it", "choose another --out")
        self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._close()
        finally:
            self.tmp.unlink(missing_ok=True)


class JsonlWriter(ResultsWriter):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._file: IO[str] | None = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in _close

    def write(self, columns: dict[str, Any]) -> None:
        assert self._file is not None
        lines = []
        for i, (src, frame) in enumerate(zip(columns["source"], columns["frame"], strict=True)):
            record: dict[str, Any] = {"source": src, "frame": int(frame)}
            if "embedding" in columns:
                record["embedding"] = [round(float(v), 7) for v in columns["embedding"][i]]
            else:
                top = [{"label": lb, "index": int(j), "score": round(float(s), 6)}
                       for lb, j, s in zip(columns["labels"][i], columns["indices"][i], columns["scores"][i], strict=True)]
                record.update(label=top[0]["label"], index=top[0]["index"], score=top[0]["score"], top_k=top)
            lines.append(json.dumps(record))
        self._file.write("\n".join(lines) + "\n")
        self.rows += len(lines)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ParquetWriter(ResultsWriter):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import pyarrow  # noqa: F401 - shipped with ray[data]; fail here, before the run

        self._writer: Any = None
        self._pending: list[Any] = []
        self._pending_rows = 0

    def write(self, columns: dict[str, Any]) -> None:
        import pyarrow as pa

        data: dict[str, Any] = {"source": pa.array(columns["source"], pa.string()),
                                "frame": pa.array(np.asarray(columns["frame"], np.int64))}
        if "embedding" in columns:
            data["embedding"] = pa.array([np.asarray(v, np.float32) for v in columns["embedding"]],
                                         pa.list_(pa.float32()))
        else:
            idx, scores = np.asarray(columns["indices"]), np.asarray(columns["scores"])
            data.update(label=pa.array([lb[0] for lb in columns["labels"]], pa.string()),
                        index=pa.array(idx[:, 0].astype(np.int64)), score=pa.array(scores[:, 0].astype(np.float64)),
                        top_k_index=pa.array(idx.astype(np.int64).tolist(), pa.list_(pa.int64())),
                        top_k_score=pa.array(scores.astype(np.float64).tolist(), pa.list_(pa.float64())),
                        top_k_label=pa.array([list(lb) for lb in columns["labels"]], pa.list_(pa.string())))
        self._pending.append(pa.table(data))
        self._pending_rows += len(columns["frame"])
        self.rows += len(columns["frame"])
        if self._pending_rows >= PARQUET_ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self.tmp), table.schema)
        self._writer.write_table(table)
        self._pending, self._pending_rows = [], 0

    def _close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


WRITERS: dict[str, type[ResultsWriter]] = {".jsonl": JsonlWriter, ".parquet": ParquetWriter}


def check_out(out: str | Path) -> Path:
    """The ``--out`` path, checked before the run: a known suffix, a folder that exists, no file there."""
    path = Path(out)
    if path.suffix.lower() not in WRITERS:
        raise DataError(f"--out {out}: unknown results format {path.suffix or '(no extension)'!r}",
                        f"use one of {', '.join(WRITERS)} (e.g. results.parquet)")
    if path.exists():
        raise DataError(f"--out {out} exists, and edge-resnet never overwrites results",
                        "choose another --out, or remove the file first")
    if not path.parent.is_dir():
        raise DataError(f"--out {out}: folder {path.parent} does not exist", "create it first")
    return path


def open_writer(out: str | Path) -> ResultsWriter:
    path = check_out(out)
    return WRITERS[path.suffix.lower()](path)
