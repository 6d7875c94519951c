"""Progress for slow steps: a rich spinner on stderr when it is a terminal, a log line always."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def progress(message: str, logger: str = "hepdeploy") -> Iterator[None]:
    """Show ``message`` while the block runs; silent (but logged) when stderr is not a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    logging.getLogger(logger).info("%s ...", message)
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        yield
