"""How a stream runs inference: the stream mode (each backend's throughput configuration is its
``Backend.throughput_config()``, see edge_resnet.backends.base)."""

from __future__ import annotations

from enum import Enum

__all__ = ["StreamMode"]


class StreamMode(str, Enum):
    THROUGHPUT = "throughput"  # one inference per core, frames batched when they are waiting: most frames/s
    LATENCY = "latency"  # the model's own runner, one frame at a time on all cores: the quickest single result
