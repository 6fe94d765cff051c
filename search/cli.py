"""What both commands share: turning bad input into one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from search.config import ConfigError

USAGE_ERROR = 2


def run_main(main: Callable[[], int | None]) -> None:
    """Run a command's main; a ConfigError becomes one line on stderr and exit 2."""
    try:
        code = main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        code = USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code or 0)
