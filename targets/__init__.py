"""Target device profiles (data shipped inside the wheel as edge_resnet._targets)."""
