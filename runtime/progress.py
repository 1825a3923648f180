"""Progress of a long ``ctl`` step: a tqdm bar on a terminal, the step's log lines elsewhere.

Lives in the lowest layer with a long step (``ctl index build``); training's steps use it too.
On a terminal the bar replaces the periodic progress lines (other log lines print above it);
when stderr is a file or a pipe (CI, ``docker logs``, ``train.log``) nothing changes: the step
logs the lines it always did.
"""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def on_terminal() -> bool:
    """Whether progress bars are drawn: stderr is an interactive terminal."""
    return sys.stderr.isatty()


class Progress(ExitStack):
    """``with Progress(log, total, "features") as p: p.update(n, "chunk %d", c)``; the bar and
    the log redirection it needs are closed with the block."""

    def __init__(
        self, logger: logging.Logger, total: int, desc: str, unit: str = "it", initial: int = 0
    ) -> None:
        super().__init__()
        self.logger = logger
        self.bar: tqdm | None = None
        if on_terminal():
            self.enter_context(logging_redirect_tqdm())
            self.bar = self.enter_context(
                tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
            )

    def update(self, n: int = 1, msg: str | None = None, *args: object) -> None:
        """Move the bar by ``n``; without a bar, log ``msg % args`` (when given) instead."""
        if self.bar is not None:
            self.bar.update(n)
        elif msg is not None:
            self.logger.info(msg, *args)
