"""The pieces of ``ctl evaluate`` (``training/evaluate.py``), one concern each."""
