"""Efficiency and attention analysis: FLOPs, memory, latency, pictures."""
