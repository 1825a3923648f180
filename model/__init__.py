"""The CTL network, its export, and its torch-free runtime.

Importing this package must not import torch: the service imports ``model.runtime``.
"""
