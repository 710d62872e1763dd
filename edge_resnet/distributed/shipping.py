"""A bundle on its way to the workers: its files as one Ray object, unpacked and checked on each worker.

Only ``manifest.json`` and the files the manifest lists travel; each name must stay inside the
bundle (no absolute path, no ``..``). The worker writes them to a private temporary folder and opens
it with :func:`edge_resnet.bundle.load_bundle`, so the bundle's integrity check (every hash of the
manifest) runs again on every worker: a bundle altered in transit or on the driver fails there too.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edge_resnet.bundle import Bundle, load_bundle
from edge_resnet.errors import BundleError

MANIFEST = "manifest.json"
MAX_BUNDLE_BYTES = 4 << 30  # refuse to ship more than this (a ResNet-152 bundle is ~0.5 GB)


def _confined(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(p in ("..", "") for p in path.parts) or "\\" in name:
        raise BundleError(f"the bundle's manifest lists {name!r}, a path outside the bundle",
                          "compile the bundle again; never ship a bundle whose manifest was edited")
    return path


@dataclass(frozen=True)
class BundlePackage:
    """The bytes of a bundle's files by relative name (``manifest.json`` among them)."""

    name: str
    files: dict[str, bytes]

    @classmethod
    def of(cls, bundle: Bundle) -> BundlePackage:
        names = [MANIFEST, *sorted(bundle.manifest.get("files", {}))]
        total = 0
        for n in names:
            _confined(n)
            total += (bundle.path / n).stat().st_size
        if total > MAX_BUNDLE_BYTES:
            raise BundleError(f"{bundle.path} holds {total / 1e9:.1f} GB, more than edge-resnet ships to workers",
                              "check the bundle's files")
        return cls(bundle.path.name, {n: (bundle.path / n).read_bytes() for n in names})

    def unpack(self, parent: Path | None = None) -> Path:
        """Write the files to a new folder and return it (the caller removes it)."""
        manifest = json.loads(self.files[MANIFEST].decode("utf-8"))
        listed = set(manifest.get("files", {})) | {MANIFEST}
        if set(self.files) != listed:
            raise BundleError("the shipped bundle's files do not match its manifest", "compile the bundle again")
        root = Path(tempfile.mkdtemp(prefix=f"edge-resnet-{self.name}-", dir=parent))
        for name, data in self.files.items():
            dest = root.joinpath(*_confined(name).parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        return root


def open_shipped(package: BundlePackage) -> tuple[Bundle, Path]:
    """Unpack and open (with the integrity check) a shipped bundle; returns it and its folder."""
    root = package.unpack()
    return load_bundle(root, verify=True), root
