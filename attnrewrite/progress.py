"""Progress of long runs (auto planning, sweeps, reports) on stderr, gone when done.

Nothing is drawn when stderr is not a terminal, so logs and error lines stay clean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attnrewrite.boundary import user_stderr


@contextmanager
def steps(description: str, total: int) -> Iterator[Callable[[str], None]]:
    """Yields `advance(what)`: one step done, `what` names the next."""
    console = Console(file=user_stderr())  # also while the libraries' stderr is quiet
    if not console.is_terminal:
        yield lambda what: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[what]}"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total, what="")

        def advance(what: str) -> None:
            progress.update(task, advance=1, what=what)

        yield advance
