"""Progress for slow steps: a log line, and a rich spinner on stderr while that line would be shown on a terminal."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def progress(message: str, logger: str = "hepdeploy") -> Iterator[None]:
    """Show ``message`` while the block runs; silent (but logged) when stderr is not a terminal.

    No spinner where the INFO line is not shown either: ``hepdeploy build`` turns those lines off while
    its own view of the build (hepdeploy.build_view) holds the terminal, and two displays updating in
    place would overwrite each other."""
    from rich.console import Console

    log = logging.getLogger(logger)
    log.info("%s ...", message)
    console = Console(stderr=True)
    if console.is_terminal and log.isEnabledFor(logging.INFO):
        with console.status(message):
            yield
    else:
        yield
