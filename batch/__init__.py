"""The batch application: ``ctl batch-score``, a Ray Data job over an archive of scenes."""
