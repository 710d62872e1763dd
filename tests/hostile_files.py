"""Builders of hostile files for the hostile-input tests: small files that claim to be big, files that
are not what their extension says, pickles that must never be unpickled.

Nothing here runs edge-resnet; every builder only writes bytes.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

_CHUNK = 1 << 24  # 16 MiB of zeros: one repeated deflate block
_CRC_POLY = 0xEDB88320


# ------------------------------------------------------------------------------------------ crc of zeros


def _gf2_times(mat: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib's crc32_combine: the CRC of A+B from crc(A), crc(B) and len(B) (zlib.crc32 lacks it)."""
    if len2 <= 0:
        return crc1
    odd = [_CRC_POLY] + [1 << n for n in range(31)]
    even = _gf2_square(odd)
    odd = _gf2_square(even)
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def crc32_of_zero_chunks(n: int, crc: int = 0) -> int:
    """zlib.crc32 of ``n`` * 16 MiB zero bytes appended to data whose crc32 is ``crc``, by doubling."""
    chunk = zlib.crc32(bytes(_CHUNK))
    zeros, length = 0, 0  # crc32 and length of the zeros built so far
    for bit in bin(n)[2:]:
        zeros, length = crc32_combine(zeros, zeros, length) if length else 0, 2 * length
        if bit == "1":
            zeros, length = (crc32_combine(zeros, chunk, _CHUNK) if length else chunk), length + _CHUNK
    return crc32_combine(crc, zeros, length)


def _zeros_deflated(nbytes: int) -> tuple[bytes, int]:
    """(raw deflate stream of ``nbytes`` zero bytes, its crc32), in O(nbytes / 16 MiB) time: after a full
    flush the compressor's window holds only zeros, so every further 16 MiB block compresses to the
    same bytes."""
    assert nbytes % _CHUNK == 0 and nbytes >= 2 * _CHUNK
    zeros = bytes(_CHUNK)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    repeat = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush()
    n = nbytes // _CHUNK
    return first + repeat * (n - 1) + tail, crc32_of_zero_chunks(n)


# ------------------------------------------------------------------------------------------ zip writer


def _write_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """members: (name, stored bytes, method (0 stored / 8 deflate), uncompressed size, crc32); < 4 GiB each."""
    out = io.BytesIO()
    central = []
    for name, data, method, size, crc in members:
        offset = out.tell()
        raw = name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size, len(raw), 0))
        out.write(raw)
        out.write(data)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data),
                                   size, len(raw), 0, 0, 0, 0, 0, offset) + raw)
    start = out.tell()
    for entry in central:
        out.write(entry)
    end = out.tell()
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), end - start, start, 0))
    path.write_bytes(out.getvalue())


def _stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    return name, data, 0, len(data), zlib.crc32(data)


# --------------------------------------------------------------------------------------------- builders


def torch_zip_bomb(path: Path, nbytes: int = 204 * _CHUNK, key: str = "conv1.weight") -> Path:
    """A real torch.save zip (torch.load reads it) holding one float32 tensor of ``nbytes`` zeros,
    deflated: about 1/1000 of ``nbytes`` on disk (the default, 3.42 GB, is a 3.3 MB file)."""
    import torch

    numel = nbytes // 4

    class _Storage:
        pass

    storage = _Storage()

    class _Tensor:
        def __reduce__(self):  # what torch.save pickles for a tensor (torch/_tensor.py _reduce_ex_internal)
            return (torch._utils._rebuild_tensor_v2, (storage, 0, (numel,), (1,), False, collections.OrderedDict()))

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):  # torch.serialization._save's persistent_id for a storage
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is storage else None

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({key: _Tensor()})
    data, crc = _zeros_deflated(nbytes)
    _write_zip(Path(path), [
        _stored("archive/data.pkl", buf.getvalue()),
        _stored("archive/byteorder", b"little"),
        ("archive/data/0", data, 8, nbytes, crc),
        _stored("archive/version", b"3\n"),
    ])
    return Path(path)


def npz_bomb(path: Path, images: int = 64, side: int = 2688) -> Path:
    """An np.savez_compressed-style .npz whose x is ``images`` uint8 images of side x side x 3 zeros,
    deflated (the defaults: 1.39 GB of pixels in a 1.4 MB file)."""
    shape = (images, side, side, 3)
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    npy_header = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) + pad + 1) + text + b" " * pad + b"\n"
    nbytes = int(np.prod(shape))
    body = nbytes + (-nbytes % _CHUNK)  # whole 16 MiB blocks; the extra zeros are past the array's end
    # the member is the header followed by the zeros: deflate them as one stream
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(npy_header) + c.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(_CHUNK)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    repeat = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush()
    n = body // _CHUNK
    crc = crc32_of_zero_chunks(n, zlib.crc32(npy_header))
    data = head + first + repeat * (n - 1) + tail
    _write_zip(Path(path), [("x.npy", data, 8, len(npy_header) + body, crc)])
    return Path(path)


def png_bomb(path: Path, side: int = 10000) -> Path:
    """A PNG declaring side x side RGB pixels (300 MB decoded for 10000: under PIL's own bomb error, which
    starts at 179 megapixels) whose data is a few kB of zeros."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(side * 3 + 1) * 16)  # the first rows only: decoding would need them all
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return Path(path)


def pickled_checkpoint(path: Path) -> Path:
    """A checkpoint holding a pickled object whose unpickling would run ``os.system``."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "hook": Payload()}, path)
    return Path(path)


def hdf5_file(path: Path) -> Path:
    """The signature of an HDF5 file (a Keras .h5 model) with an empty superblock."""
    Path(path).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(504))
    return Path(path)


def keras_v3_file(path: Path) -> Path:
    """A Keras 3 ``.keras`` archive: a zip with config.json, metadata.json and model.weights.h5."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps({"class_name": "Functional", "config": {}}))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.5.0"}))
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(504))
    return Path(path)


def safetensors_file(path: Path) -> Path:
    """A minimal safetensors file: 8-byte header length, JSON header, data."""
    header = json.dumps({"conv1.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    Path(path).write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    return Path(path)
