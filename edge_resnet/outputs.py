"""Writing the user's output files safely: never over an input, never into a bundle being read,
always atomically, and with one clear message when the disk says no.

    check_output("m.int8.onnx", "-o", inputs={"MODEL.onnx": "m.onnx"})   # before the work
    with atomic_path("m.int8.onnx") as tmp:                               # a temporary file next to it
        save(tmp)                                                          # renamed over the output on success

Writability is checked before the work (``check_output``), so a long compile or calibration does
not find out at the end; ``OSError``s of writing (permission, read-only file system, full disk, file
size limit) become one :class:`OutputError` naming the file and the fix.
"""

from __future__ import annotations

import errno
import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from edge_resnet.errors import EdgeResnetError


class OutputError(EdgeResnetError):
    """An output that cannot, or must not, be written."""


# errno of a failed write -> what to do about it
_FIXES: dict[int, str] = {
    errno.EACCES: "choose a folder you can write to, or fix its permissions",
    errno.EPERM: "choose a folder you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.ENOSPC: "free some disk space, or write to another disk",
    errno.EDQUOT: "your disk quota is used up: free some space, or write to another disk",
    errno.EFBIG: "the file is larger than this file system or the file size limit (ulimit -f) allows: "
                 "write to another file system or raise the limit",
    errno.ENAMETOOLONG: "use a shorter file name",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "the path is a folder: give a file name",
    errno.ELOOP: "the path has a symbolic link loop: choose another path",
}
WRITE_ERRNOS = frozenset(_FIXES)


def write_error(exc: OSError, what: str) -> OutputError:
    """``exc`` (from writing ``what``) as one message with a fix."""
    reason = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != what else ""
    return OutputError(f"cannot write {what}: {reason}{where}", _FIXES.get(exc.errno or 0, "check the output path"))


@contextmanager
def writing(what: str) -> Iterator[None]:
    """Turn the OSErrors of a failed write into one OutputError about ``what``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise write_error(exc, what) from exc
        raise


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are the same file (hard links and symlinks included) or the same path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def is_within(path: Path, folder: Path) -> bool:
    """True when ``path`` (resolved) is ``folder`` or inside it."""
    p, f = path.resolve(), folder.resolve()
    return p == f or p.is_relative_to(f)


def nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_location(path: Path, option: str) -> None:
    """The folder that will hold ``path`` exists or can be created, and this user may write into it."""
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        raise OutputError(f"cannot write {option} {path}: {folder} is a file, not a folder",
                          _FIXES[errno.ENOTDIR])
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {option} {path}: no permission to write into {folder}",
                          _FIXES[errno.EACCES])
    try:  # os.access says yes to root everywhere: ask the file system itself
        os.rmdir(tempfile.mkdtemp(prefix=".edge-resnet-probe-", dir=folder))
    except OSError as exc:
        raise OutputError(f"cannot write {option} {path}: {folder} does not accept new files "
                          f"({exc.strerror or exc})", _FIXES.get(exc.errno or 0, _FIXES[errno.EACCES])) from None


def check_output(path: str | os.PathLike[str] | None, option: str, *,
                 inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
                 bundles: Mapping[str, str | os.PathLike[str] | None] | None = None) -> Path | None:
    """Refuse an output file that is an input, lies inside a bundle being read, is a folder, or cannot be
    written; call it before the work. ``inputs``/``bundles``: what the command reads, by option name."""
    if path is None:
        return None
    out = Path(path).expanduser()
    if out.is_dir():
        raise OutputError(f"{option} {out} is a folder", "give the path of a file to write")
    for name, value in (inputs or {}).items():
        if value is None:
            continue
        src = Path(value).expanduser()
        if src.is_file() and same_file(out, src):
            raise OutputError(f"{option} {out} is the input {name} {value}: writing it would destroy the input",
                              f"write {option} to another file, e.g. {out.with_name(out.stem + '.out' + out.suffix)}")
    for name, value in (bundles or {}).items():
        if value is None:
            continue
        bundle = Path(value).expanduser()
        if bundle.is_dir() and is_within(out, bundle):
            raise OutputError(f"{option} {out} is inside the bundle {name} {value}, which is being read: a bundle is "
                              "never modified (its manifest lists and hashes every file)",
                              f"write {option} outside the bundle, e.g. next to it: "
                              f"{bundle.with_name(bundle.name + '.' + out.name)}")
    check_writable_location(out, option)
    return out


def check_distinct(outputs: Mapping[str, str | os.PathLike[str] | None]) -> None:
    """Two outputs of one command must not be the same file."""
    seen: dict[Path, str] = {}
    for name, value in outputs.items():
        if value is None:
            continue
        key = Path(value).expanduser().resolve()
        if key in seen:
            raise OutputError(f"{seen[key]} and {name} are the same file ({value})", "give each output its own file")
        seen[key] = name


def temporary_sibling(path: Path) -> Path:
    """A fresh name in ``path``'s folder, keeping its suffix (writers like OpenCV choose the format by it)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike[str], what: str | None = None) -> Iterator[Path]:
    """A temporary path next to ``path`` to write; renamed over ``path`` when the block succeeds, removed
    when it fails. Write errors become one OutputError."""
    out = Path(path)
    what = what or str(out)
    with writing(what):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(out)
        try:
            yield tmp
            if tmp.exists():
                os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str, what: str | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, fsync, rename)."""
    out = Path(path)
    with atomic_path(out, what) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 honours the umask
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return out
