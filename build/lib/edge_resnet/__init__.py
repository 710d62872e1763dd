"""edge-resnet."""
