"""The deployment bundle: a directory with the artifact(s), the float and Q/DQ graphs, labels and a
``manifest.json`` that records how everything was made and the hash of every file.

A bundle is untrusted input. What loading guarantees:

* **Integrity** (against corruption, truncation and accidental edits): ``manifest.json`` lists every
  file with its sha256 and carries the sha256 of its own canonical form (``integrity``), so a changed,
  missing or added-to-the-list file, and any edit of the manifest itself, is refused. This is not
  authenticity: whoever can write the directory can recompute the hashes; telling who built a bundle
  needs a signature.
* **Confinement**: every path the manifest names is relative, has no ``..``, no backslash or drive
  letter, and resolves inside the bundle; symbolic links are refused (compile never writes one), so
  nothing outside the directory is ever opened. Files in the directory that the manifest does not
  list are ignored (never opened; loading names them in a warning): :meth:`Bundle.file` only resolves
  listed names, and backends resolve their files with :func:`confined`.
* **Shape**: a manifest that is not the JSON object compile writes (wrong types, unknown backend,
  missing keys) is one :class:`BundleError`, never a KeyError later.

Written atomically: everything goes into a staging directory next to the output (marked with the
writing process's id), the manifest is the last file written, then one rename publishes it. The rename
never replaces a directory the writer did not check: ``--force`` replaces only an edge-resnet bundle
holding nothing but its listed files, and a directory that appears at the output during a compile is
left alone (the compile fails). Staging directories left by a killed compile are removed by the next
compile to the same output once their process is gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from edge_resnet.errors import BundleError, EdgeResnetError
from edge_resnet.manifest import FIX_RECOMPILE as _FIX_RECOMPILE
from edge_resnet.manifest import Manifest
from edge_resnet.manifest import type_name as _type_name

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
INTEGRITY_ALGORITHM = "sha256"
MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is a few kB
STAGING_MARKER = ".edge-resnet-staging.json"  # in staging directories: who is writing them
STAGING_KINDS = ("partial", "budget", "old")  # .NAME.<kind>-XXXX next to the output
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DRIVE = re.compile(r"^[A-Za-z]:")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), without its ``integrity`` entry."""
    body = {k: v for k, v in manifest.items() if k != "integrity"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- paths


def check_relpath(rel: Any, what: str, where: str) -> str:
    """``rel`` when it is a plain relative POSIX path inside a bundle, else BundleError (checks the text only)."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{where}: {what} is {rel!r}, not a file name", _FIX_RECOMPILE)
    why = None
    if "\0" in rel:
        why = "contains a NUL character"
    elif "\\" in rel:
        why = "contains a backslash"
    elif _DRIVE.match(rel):
        why = "starts with a drive letter"
    elif rel.startswith("/"):
        why = "is an absolute path"
    elif ".." in PurePosixPath(rel).parts:
        why = "goes up with '..'"
    elif PurePosixPath(rel).as_posix() != rel or rel.startswith("./"):
        why = "is not in normal form"
    if why:
        raise BundleError(f"{where}: {what} {rel!r} {why}: a bundle may only name files inside it", _FIX_RECOMPILE)
    return rel


def confined(root: str | os.PathLike[str], rel: Any, what: str = "file") -> Path:
    """``root / rel`` when it stays inside ``root``: a relative path without ``..``, and no symbolic link on
    the way (compile never writes one). The one way anything inside a bundle is opened."""
    root = Path(root)
    check_relpath(rel, what, str(root / MANIFEST))
    path = root / rel
    base = root.resolve()
    part = root
    for name in PurePosixPath(rel).parts:
        part = part / name
        if part.is_symlink():
            target = os.readlink(part)
            inside = part.resolve().is_relative_to(base)
            raise BundleError(f"{what} {rel} of {root} is a symbolic link (to {target}"
                              f"{'' if inside else ', outside the bundle'}); bundles hold no symbolic links",
                              "copy the bundle with the files themselves (cp -rL), or compile it again")
    if not path.resolve().is_relative_to(base):  # defence in depth: resolve() follows anything left
        raise BundleError(f"{what} {rel} resolves outside the bundle {root}", _FIX_RECOMPILE)
    return path


# ------------------------------------------------------------------------------------------- manifest


def _referenced_paths(manifest: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(what, relative path) of every file the manifest points to, besides its ``files`` list."""
    refs: list[tuple[str, Any]] = [(f"graphs.{k}", v) for k, v in manifest["graphs"].items()]
    refs += [(f"artifact.files.{k}", v) for k, v in manifest["artifact"]["files"].items()]
    if manifest.get("labels") is not None:
        refs.append(("labels", manifest["labels"]))
    for section, key in (("calibration", "scales"), ("budget", "validation")):
        entry = manifest.get(section)
        if isinstance(entry, Mapping) and entry.get(key) is not None:
            refs.append((f"{section}.{key}", entry[key]))
    return refs


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """The manifest when it is one compile wrote, unmodified: integrity, format, types, values, paths."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{where} is {_type_name(manifest)}, not the JSON object edge-resnet writes", _FIX_RECOMPILE)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise BundleError(f"{where} has bundle format {version!r}; this edge-resnet reads format {FORMAT_VERSION}",
                          "compile the bundle again with this version of edge-resnet")
    integrity = manifest.get("integrity")
    if not isinstance(integrity, dict) or "manifest_sha256" not in integrity:
        raise BundleError(f"{where} has no integrity record (written by an older edge-resnet, or edited by hand)",
                          _FIX_RECOMPILE)
    if integrity.get("algorithm") != INTEGRITY_ALGORITHM:
        raise BundleError(f"{where} uses integrity algorithm {integrity.get('algorithm')!r}; this edge-resnet "
                          f"checks {INTEGRITY_ALGORITHM}", _FIX_RECOMPILE)
    if integrity["manifest_sha256"] != manifest_digest(manifest):
        raise BundleError(f"{where} was modified after compile wrote it (its integrity hash does not match)",
                          _FIX_RECOMPILE)
    Manifest.from_dict(manifest, where)  # the types of every section this version reads
    files = manifest["files"]
    for name, digest in files.items():
        check_relpath(name, "file", where)
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise BundleError(f"{where}: the hash of {name} is {digest!r}, not a sha256", _FIX_RECOMPILE)
    for what, rel in _referenced_paths(manifest):
        check_relpath(rel, what, where)
        if rel not in files:
            raise BundleError(f"{where}: {what} names {rel}, which the manifest's file list does not cover",
                              _FIX_RECOMPILE)
    device_build = manifest["artifact"].get("device_build") or {}
    for key, rel in (device_build.items() if isinstance(device_build, Mapping) else ()):
        check_relpath(rel, f"artifact.device_build.{key}", where)  # written later on the device: not hashed here
    _check_values(manifest, where)
    return manifest


def _check_values(manifest: dict[str, Any], where: str) -> None:
    from edge_resnet.data import PreprocessSpec
    from edge_resnet.targets import TargetProfile
    from edge_resnet.types import BackendName, Precision

    art = manifest["artifact"]
    for key, enum in (("backend", BackendName), ("precision", Precision)):
        values = [e.value for e in enum]
        if art[key] not in values:
            raise BundleError(f"{where}: artifact.{key} is {art[key]!r}, not one of {values}", _FIX_RECOMPILE)
    try:
        PreprocessSpec.from_dict(manifest["preprocess"])
        TargetProfile.from_dict(manifest["target"], source=where)
    except EdgeResnetError as exc:
        raise BundleError(f"{where}: {exc.problem}", _FIX_RECOMPILE) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: invalid preprocessing ({exc})", _FIX_RECOMPILE) from exc


def read_manifest(root: Path) -> dict[str, Any]:
    """The checked manifest of the bundle at ``root`` (see :func:`check_manifest`)."""
    mf = root / MANIFEST
    where = str(mf)
    if mf.is_symlink():
        raise BundleError(f"{mf} is a symbolic link; bundles hold no symbolic links",
                          "copy the bundle with the files themselves (cp -rL), or compile it again")
    if not mf.is_file():
        partial = " (an interrupted compile leaves .partial- directories, never a bundle)" if root.name.startswith(".") else ""
        raise BundleError(f"{root} has no {MANIFEST}: it is not a complete bundle{partial}",
                          "compile it again with `edge-resnet compile ... -o DIR`")
    size = mf.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mf} is {size / 2**20:.0f} MiB; a manifest is a few kB", _FIX_RECOMPILE)
    try:
        manifest = json.loads(mf.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BundleError(f"{mf} is not valid JSON ({str(exc)[:200]})", _FIX_RECOMPILE) from exc
    return check_manifest(manifest, where)


# ---------------------------------------------------------------------------------------------- bundle


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]  # as read (checked); its typed form is ``sections``

    @cached_property
    def sections(self) -> Manifest:
        """The manifest's typed sections (edge_resnet.manifest)."""
        return Manifest.from_dict(self.manifest, str(self.path / MANIFEST))

    @property
    def artifact(self):  # -> Artifact; imported lazily to keep this module light
        from edge_resnet.backends.base import Artifact

        return Artifact.from_dict(self.manifest["artifact"])

    @property
    def spec(self):  # -> PreprocessSpec
        from edge_resnet.data import PreprocessSpec

        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def profile(self):  # -> TargetProfile
        from edge_resnet.targets import TargetProfile

        return TargetProfile.from_dict(self.manifest["target"], source=str(self.path / MANIFEST))

    @property
    def labels(self) -> list[str] | None:
        name = self.sections.labels
        if not name:
            return None
        path = self.file(name, "labels")
        if not path.is_file():
            return None
        return path.read_text(encoding="utf-8").splitlines()

    @property
    def output_kind(self) -> str:
        """"logits" for classifiers, "features" for embedding/feature-map models (from ``model.kind``)."""
        from edge_resnet.graph.head import HeadKind, manifest_kind

        return "logits" if manifest_kind(self.manifest["model"]) is HeadKind.CLASSIFIER else "features"

    @property
    def digest(self) -> str:
        """The manifest's integrity hash: identifies this bundle's contents wherever it is copied."""
        return self.sections.integrity.manifest_sha256

    def file(self, name: str, what: str = "file") -> Path:
        """The path of the bundle's file ``name``: listed in the manifest (so covered by its hashes) and
        confined to the bundle (see :func:`confined`). Everything inside a bundle is opened through here."""
        files = self.manifest.get("files", {})
        if name not in files:
            raise BundleError(f"{what} {name!r} is not one of the files {self.path / MANIFEST} lists (and hashes)",
                              _FIX_RECOMPILE)
        return confined(self.path, name, what)

    def float_model(self) -> Path:
        return self.file(self.sections.graphs.float, "float graph")

    def load_runner(self, **options: Any):
        """Load the bundle's artifact with its backend: a Runner with ``infer(batch)``."""
        from edge_resnet.backends.base import check_load_options, get_backend

        art = self.artifact
        # a device-built artifact (artifact.device_build) is found and checked by its backend
        if not art.runnable and not art.device_build:
            raise BundleError(
                f"the {art.backend.value} artifact in {self.path} has not been built on this machine "
                f"({art.info.get('reason', 'prepared for another device')})",
                art.info.get("how_to_build", "build it on the target device"),
            )
        self._warn_if_saturating(art)
        backend = get_backend(art.backend)
        check_load_options(backend, options)
        for role, rel in art.files.items():
            self.file(rel, f"artifact file {role}")
        return backend.load(self.path, art, bundle=self, **options)

    def _warn_if_saturating(self, art) -> None:
        """An INT8 CPU bundle with full-range weights, run on an x86 CPU without VNNI, loses accuracy
        to int16 saturation (edge_resnet.host_cpu): say so, and how to rebuild it."""
        from edge_resnet.host_cpu import host_saturates_int8
        from edge_resnet.types import BackendName, Precision

        cpu = art.backend is BackendName.ONNXRUNTIME or (
            art.backend is BackendName.OPENVINO and str(self.sections.target.get("device", "")).upper() == "CPU")
        quantization = self.sections.quantization
        weights = quantization.get("weight_range", "full") if quantization else "full"
        if art.precision is Precision.INT8 and cpu and weights == "full" and host_saturates_int8():
            log.warning("%s has full-range int8 weights, and this CPU has no VNNI: its 8-bit products saturate, "
                        "which costs accuracy; compile the bundle on this machine (weight_range \"auto\") or with "
                        "weight_range = \"reduced\" in the target profile", self.path)


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open a bundle directory: its manifest checked (always), and with ``verify`` the hash of every file."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle directory", "pass the -o directory of `edge-resnet compile`")
    manifest = read_manifest(root)
    if verify:
        declared = ((manifest.get("artifact") or {}).get("device_build") or {}).values()
        _verify(root, manifest["files"], {str(v) for v in declared})
    return Bundle(root, manifest)


def _verify(root: Path, files: dict[str, str], device_files: set[str] = frozenset()) -> None:
    """The listed files' hashes; files the device writes later (``device_build``) are declared, checked by their
    backend, and not reported as strangers."""
    for name in files:
        confined(root, name)  # no symbolic links, nothing outside
    missing = [n for n in files if not (root / n).is_file()]
    changed = [n for n, h in files.items() if n not in missing and sha256_file(root / n) != h]
    if missing or changed:
        parts = []
        if missing:
            parts.append(f"missing: {', '.join(missing[:5])}")
        if changed:
            parts.append(f"modified: {', '.join(changed[:5])}")
        raise BundleError(f"bundle {root} does not match its manifest ({'; '.join(parts)})",
                          "compile the bundle again (or copy it completely)")
    extra = [n for n in unlisted_files(root, files) if n not in device_files]
    if extra:
        log.warning("%s holds %d file(s) its manifest does not list (%s): they are not part of the bundle and are "
                    "ignored", root, len(extra), ", ".join(extra[:5]))


def unlisted_files(root: Path, files: Iterable[str]) -> list[str]:
    """Files (and symlinks) under ``root`` that are neither the manifest nor listed in ``files``."""
    listed = set(files) | {MANIFEST}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            key = (rel / name).as_posix()
            if key not in listed:
                out.append(key)
    return out


# ---------------------------------------------------------------------------------------------- staging


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def make_staging_dir(out: Path, kind: str) -> Path:
    """A fresh ``.NAME.<kind>-XXXX`` directory next to ``out``, marked with this process's id and host."""
    assert kind in STAGING_KINDS
    path = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-", dir=out.parent))
    (path / STAGING_MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                   "created": time.time(), "output": out.name}))
    return path


def _staging_owner(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((path / STAGING_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def clean_stale_staging(out: Path) -> list[Path]:
    """Remove the staging directories of earlier writes to ``out`` whose process is gone (marked as ours,
    this host, pid not running); warn about look-alikes that are not marked. Returns what was removed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    prefixes = tuple(f".{out.name}.{kind}-" for kind in STAGING_KINDS)
    for entry in sorted(out.parent.iterdir()):
        if not entry.name.startswith(prefixes) or entry.is_symlink() or not entry.is_dir():
            continue
        owner = _staging_owner(entry)
        if owner is None:
            log.warning("%s looks like the leftover of an interrupted compile but is not marked as one: remove it "
                        "yourself if no compile is writing %s (rm -r '%s')", entry, out, entry)
            continue
        if owner.get("host") != socket.gethostname() or _pid_alive(owner.get("pid")):
            continue  # another compile is writing it (or another machine's, on a shared disk)
        size = _tree_bytes(entry)
        shutil.rmtree(entry, ignore_errors=True)
        if entry.exists():
            log.warning("could not remove %s, left by an interrupted compile (process %s): remove it yourself",
                        entry, owner.get("pid"))
            continue
        log.warning("removed %s (%.1f MB), left by an interrupted compile (process %s is gone)", entry, size / 1e6,
                    owner.get("pid"))
        removed.append(entry)
    return removed


# ---------------------------------------------------------------------------------------------- renames

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2_function() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _renameat2_function()


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2) with ``flags``: True when done, False when this system or file system lacks it."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with FileExistsError when ``dst`` exists (atomically where the
    kernel can; elsewhere a check right before the rename)."""
    if _rename2(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def rename_exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False when the system cannot."""
    return _rename2(a, b, _RENAME_EXCHANGE)


# ---------------------------------------------------------------------------------------------- writing


def _chmod_like_mkdir(path: Path) -> None:
    """mkdtemp makes 0700 directories; a published bundle gets the permissions mkdir would give."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def _hash_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (MANIFEST, STAGING_MARKER)}


def replaceable_bundle_problem(path: Path) -> str | None:
    """Why ``--force`` must not replace the directory ``path`` (None: it is an edge-resnet bundle holding
    nothing but its own files)."""
    mf = path / MANIFEST
    if not mf.is_file() or mf.is_symlink():
        return f"it has no {MANIFEST}: it is not an edge-resnet bundle"
    try:
        if mf.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        manifest = json.loads(mf.read_bytes().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return f"its {MANIFEST} is not an edge-resnet manifest"
    if (not isinstance(manifest, dict) or not isinstance(manifest.get("format_version"), int)
            or not isinstance(manifest.get("files"), dict) or "artifact" not in manifest):
        return f"its {MANIFEST} is not an edge-resnet manifest"
    extra = unlisted_files(path, [k for k in manifest["files"] if isinstance(k, str)])
    if extra:
        more = f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""
        return f"it holds files that are not part of the bundle, which --force would delete: {', '.join(extra[:5])}{more}"
    return None


class BundleWriter:
    """``with BundleWriter(out) as w: ...write into w.dir...; w.finish(manifest)``.

    Made before the work: it refuses an output that exists (without ``force``), that ``force`` must not
    replace, that holds one of ``inputs`` (role -> path), or whose folder cannot be written.
    """

    def __init__(self, out: str | Path, force: bool = False, inputs: Mapping[str, Any] | None = None) -> None:
        self.out = Path(out).expanduser().absolute()
        self.force = force
        self.inputs = {k: v for k, v in (inputs or {}).items() if v}
        self._check()
        self.replacing = self.out.exists()
        self.dir: Path | None = None
        self._done = False
        self._created: list[Path] = []  # folders made for the output, removed again on failure

    # ---- checks (before the work)

    def _check(self) -> None:
        out = self.out
        if out.is_symlink():
            raise BundleError(f"-o {out} is a symbolic link", "pass the directory itself (or another -o)")
        real = out.resolve()
        for role, value in self.inputs.items():
            src = Path(str(value)).expanduser()
            if src.exists() and (src.resolve() == real or src.resolve().is_relative_to(real)):
                raise BundleError(f"-o {out} holds the input {role} {value}: writing the bundle there would "
                                  "replace it", f"choose an -o directory outside your inputs, e.g. {out.parent / (out.name + '-bundle')}")
        if out.exists():
            cwd = Path.cwd().resolve()
            if real == cwd or cwd.is_relative_to(real):
                raise BundleError(f"-o {out} is the current directory{'' if real == cwd else ' or one of its parents'}",
                                  "write the bundle into a new directory, e.g. -o bundle")
            if not out.is_dir():
                raise BundleError(f"{out} exists and is not a directory", "choose another -o path")
            if not self.force:
                raise BundleError(f"{out} already exists",
                                  "choose another -o directory or pass --force to replace it (only an edge-resnet "
                                  "bundle is replaced)")
            problem = replaceable_bundle_problem(out)
            if problem:
                raise BundleError(f"--force replaces only an edge-resnet bundle, and {out} is not one: {problem}",
                                  "move your files out of it, or choose another -o directory")
        from edge_resnet.outputs import OutputError, check_writable_location

        try:
            check_writable_location(out, "-o")
        except OutputError as exc:
            raise BundleError(exc.problem, exc.fix) from exc

    # ---- staging

    def __enter__(self) -> BundleWriter:
        missing = []
        p = self.out.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        with self._writing():
            for folder in reversed(missing):
                folder.mkdir()
                self._created.append(folder)
            clean_stale_staging(self.out)
            self.dir = make_staging_dir(self.out, "partial")
        return self

    def _writing(self):
        from edge_resnet.outputs import writing

        return writing(f"the bundle {self.out}")

    def finish(self, manifest: dict[str, Any]) -> Path:
        assert self.dir is not None
        with self._writing():
            manifest = json.loads(json.dumps({k: v for k, v in manifest.items() if k not in ("integrity", "files")}))
            manifest["format_version"] = FORMAT_VERSION
            manifest["files"] = _hash_tree(self.dir)
            manifest["integrity"] = {"algorithm": INTEGRITY_ALGORITHM, "manifest_sha256": manifest_digest(manifest)}
            _chmod_like_mkdir(self.dir)
            tmp = self.dir / (MANIFEST + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / MANIFEST)
            (self.dir / STAGING_MARKER).unlink(missing_ok=True)
            self._publish()
        self._done = True
        return self.out

    def _publish(self) -> None:
        assert self.dir is not None
        out = self.out
        appeared = BundleError(f"{out} appeared while the bundle was being compiled; it was left untouched and the "
                               "new bundle was not published", "move it away or choose another -o, and compile again")
        if not self.replacing:
            try:
                rename_noreplace(self.dir, out)
            except FileExistsError:
                raise appeared from None
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise appeared from exc
                raise
            return
        if out.is_symlink() or not out.is_dir() or replaceable_bundle_problem(out):
            raise BundleError(f"{out} changed while the bundle was being compiled (it is no longer the bundle "
                              "--force was to replace); it was left untouched", "check it, and compile again")
        if rename_exchange(self.dir, out):  # out is the new bundle, self.dir the old one
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rmdir(old)
        os.rename(out, old)
        try:
            rename_noreplace(self.dir, out)
        except BaseException:
            rename_noreplace(old, out)  # put the old bundle back
            raise
        shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._done:
            return
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        for folder in reversed(self._created):
            try:
                folder.rmdir()  # only when still empty: never anything else
            except OSError:
                break
        from edge_resnet.outputs import WRITE_ERRNOS, write_error

        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:  # a full disk while writing the files
            raise write_error(exc, f"the bundle {self.out}") from exc
