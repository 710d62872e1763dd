"""Run a compiled bundle on camera frames, videos and streams, without torch.

    import edge_resnet.runtime as rt

    model = rt.load("out/")                        # the bundle's backend and preprocessing
    model.classify(bgr_frame, top_k=5)             # [Classification(labels, indices, scores)]
    model.embed(frames)                            # embedding bundles: (N, D) L2-normalised
    with model.stream("clip.mp4") as results:      # pipelined, in frame order, bounded memory
        for r in results: ...
"""

from edge_resnet.runtime.frame_sources import FrameSource, SourceKind, open_source
from edge_resnet.runtime.model import Classification, Model, ModelKind, load
from edge_resnet.runtime.stream import FrameResult, Stream
from edge_resnet.types import Mode

__all__ = [
    "Classification",
    "FrameResult",
    "FrameSource",
    "Mode",
    "Model",
    "ModelKind",
    "SourceKind",
    "Stream",
    "load",
    "open_source",
]
