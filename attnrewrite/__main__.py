"""The `attnrewrite` command and `python -m attnrewrite`: the command line, with an
interruption during start-up (importing it takes a moment) ending as one line too."""

from __future__ import annotations

import signal
import sys


def main() -> int:
    try:
        from attnrewrite.cli import main as command_line

        return command_line()
    except KeyboardInterrupt:  # SIGINT before the command line's own handler is in place
        print("attnrewrite: error: interrupted (SIGINT); nothing written", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
