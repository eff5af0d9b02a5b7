"""Privacy: differential privacy (clipping, noise, accounting) and secure aggregation, as round steps."""
