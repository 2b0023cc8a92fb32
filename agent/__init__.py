"""edgegov: an edge-device governance agent.

Reads sensors over serial, checks them against signed policies with a compiled
evaluator, scores risk with ONNX models, and publishes signed, hash-chained
compliance attestations that auditors verify offline.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
