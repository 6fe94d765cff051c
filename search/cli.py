"""What the commands share: bad input as one line and exit code 2 (a full disk: one
line, exit code 1)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from search.config import ConfigError

USAGE_ERROR = 2


def run_main(main: Callable[[], int | None], fast_exit: bool = False) -> None:
    """Run a command's main; a ConfigError becomes one line on stderr and exit 2.

    `fast_exit`: end the process without the interpreter's teardown, once main has
    cleaned up after itself (a search: MLflow drained, Ray shut down). Tearing down the
    modules of torch, Ray and MLflow takes about 2 s on 2 cores, for nothing.
    """
    try:
        code = main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        code = USAGE_ERROR
    except OSError as e:
        from search.full_disk import DiskFullError  # imports Ray: only when it is needed

        if not isinstance(e, DiskFullError):
            raise
        print(f"error: {e}", file=sys.stderr)  # not bad input: the disk filled up
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if fast_exit:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    sys.exit(code or 0)
