"""Calibration-set recipes (data shipped inside the wheel as edge_resnet._calibration)."""
