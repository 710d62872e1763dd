"""The deployment bundle: a directory with the artifact(s), the float and Q/DQ graphs, labels and a
``manifest.json`` that records how everything was made and the hash of every file.

Written atomically: everything goes into a temporary sibling directory and the manifest is the
last file written before one rename, so an interrupted compile never leaves a directory that
looks complete. Loading checks the hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from edge_resnet.errors import BundleError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _chmod_like_mkdir(path: Path) -> None:
    """mkdtemp makes 0700 directories; a published bundle gets the permissions mkdir would give."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


class BundleWriter:
    """``with BundleWriter(out) as w: ...write into w.dir...; w.finish(manifest)``."""

    def __init__(self, out: str | Path, force: bool = False) -> None:
        self.out = Path(out).absolute()
        self.force = force
        if self.out.exists() and not force:
            raise BundleError(f"{self.out} already exists", "choose another -o directory or pass --force to replace it")
        if self.out.exists() and not self.out.is_dir():
            raise BundleError(f"{self.out} exists and is not a directory", "choose another -o path")
        self.dir: Path | None = None
        self._done = False

    def __enter__(self) -> BundleWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        return self

    def finish(self, manifest: dict[str, Any]) -> Path:
        assert self.dir is not None
        manifest = dict(manifest)
        manifest["format_version"] = FORMAT_VERSION
        manifest["files"] = _hash_tree(self.dir)
        _chmod_like_mkdir(self.dir)
        tmp = self.dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, self.dir / MANIFEST)
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}-{int(time.time())}"
            os.replace(self.out, old)
        os.replace(self.dir, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._done = True
        return self.out

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self._done and self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]

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
        name = self.manifest.get("labels")
        if not name or not (self.path / name).is_file():
            return None
        return (self.path / name).read_text(encoding="utf-8").splitlines()

    @property
    def output_kind(self) -> str:
        """"logits" for classifiers, "features" for embedding/feature-map models (from ``model.kind``)."""
        from edge_resnet.graph.head import HeadKind, manifest_kind

        return "logits" if manifest_kind(self.manifest["model"]) is HeadKind.CLASSIFIER else "features"

    def file(self, name: str) -> Path:
        return self.path / name

    def float_model(self) -> Path:
        return self.path / self.manifest["graphs"]["float"]

    def load_runner(self, **options: Any):
        """Load the bundle's artifact with its backend: a Runner with ``infer(batch)``."""
        from edge_resnet.backends.base import get_backend

        art = self.artifact
        if not art.info.get("runnable", True):
            raise BundleError(
                f"the {art.backend.value} artifact in {self.path} has not been built on this machine "
                f"({art.info.get('reason', 'prepared for another device')})",
                art.info.get("how_to_build", "build it on the target device"),
            )
        self._warn_if_saturating(art)
        return get_backend(art.backend).load(self.path, art, **options)

    def _warn_if_saturating(self, art) -> None:
        """An INT8 CPU bundle with full-range weights, run on an x86 CPU without VNNI, loses accuracy
        to int16 saturation (edge_resnet.host_cpu): say so, and how to rebuild it."""
        from edge_resnet.host_cpu import host_saturates_int8
        from edge_resnet.types import BackendName, Precision

        cpu = art.backend is BackendName.ONNXRUNTIME or (
            art.backend is BackendName.OPENVINO and str(self.manifest.get("target", {}).get("device", "")).upper() == "CPU")
        weights = (self.manifest.get("quantization") or {}).get("weight_range", "full")
        if art.precision is Precision.INT8 and cpu and weights == "full" and host_saturates_int8():
            log.warning("%s has full-range int8 weights, and this CPU has no VNNI: its 8-bit products saturate, "
                        "which costs accuracy; compile the bundle on this machine (weight_range \"auto\") or with "
                        "weight_range = \"reduced\" in the target profile", self.path)


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open a bundle directory, checking it is complete and unmodified."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle directory", "pass the -o directory of `edge-resnet compile`")
    mf = root / MANIFEST
    if not mf.is_file():
        partial = " (an interrupted compile leaves .partial- directories, never a bundle)" if root.name.startswith(".") else ""
        raise BundleError(f"{root} has no {MANIFEST}: it is not a complete bundle{partial}",
                          "compile it again with `edge-resnet compile ... -o DIR`")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mf} is not valid JSON ({exc})", "compile the bundle again") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{root} has bundle format {manifest.get('format_version')}, this edge-resnet reads {FORMAT_VERSION}",
                          "compile it again with this version")
    if verify:
        _verify(root, manifest.get("files", {}))
    return Bundle(root, manifest)


def _verify(root: Path, files: dict[str, str]) -> None:
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
