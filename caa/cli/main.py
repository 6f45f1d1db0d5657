"""``caa``: the command line. Settings are built here, once, and passed down."""

from __future__ import annotations

import sys

from caa.cli.parser import dispatch, parser
from caa.settings import Settings


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return dispatch(Settings(), args)


if __name__ == "__main__":
    sys.exit(main())
