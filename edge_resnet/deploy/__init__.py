"""Deployment bundles for devices that build their own engine (Jetson: trtexec + DeepStream)."""
