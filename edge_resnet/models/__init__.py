"""The ResNet model zoo: builders, the name registry, checkpoint loading."""

from edge_resnet.models.checkpoint import guess_architecture, load_weights, read_state_dict
from edge_resnet.models.complexity import count_macs, count_parameters
from edge_resnet.models.registry import MODELS, ModelSpec, build_model, get_spec
from edge_resnet.models.resnet import Pooling, ResNet, Variant

__all__ = [
    "MODELS", "ModelSpec", "Pooling", "ResNet", "Variant", "build_model", "count_macs", "count_parameters",
    "get_spec", "guess_architecture", "load_weights", "read_state_dict",
]
