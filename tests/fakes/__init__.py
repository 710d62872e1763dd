"""Test doubles for libraries that cannot be installed on CI (TensorRT, CUDA)."""
