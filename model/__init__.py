"""The CTL network (torch): backbones, heads and attention, export to ONNX, quantization.

Importing this package must not import torch (``ctl`` lists its commands without it); what runs
the exported encoders is ``runtime/``, which never imports this package.
"""
