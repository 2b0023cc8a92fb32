"""Risk: ONNX models scored per window.

In: a window's readings and the look-back before it (``features``: each model's input
features, computed by ``native.features``), the models a policy names, with their
digests (``onnx_model``: each loaded only if its digest matches, its opset and signature
checked, scored one batch at a time). Out: one ``RiskResult`` per model and window (a
score in [0, 1] or none with the reason, the execution provider, out-of-distribution
inputs), from ``engine``.
"""

__all__ = ["engine", "features", "onnx_model"]
