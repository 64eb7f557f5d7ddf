"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, then exit.

A cluster scheduler sends SIGTERM before it kills a job, and a user presses Ctrl-C; both
should cost at most the current step, not the work since the last periodic checkpoint.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["StopRequests"]


class StopRequests:
    """While active (a ``with`` block), SIGINT and SIGTERM set :attr:`requested` instead of
    stopping the process; the training loop checks it after each step, saves and exits.
    A second signal of the same kind stops at once (the previous handler runs).

    Attributes:
        requested: the name of the first signal received (``"SIGINT"``/``"SIGTERM"``) or None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # asked twice: give up waiting for the step
            previous = self._previous.get(signum)
            signal.signal(signum, previous if callable(previous) else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()
