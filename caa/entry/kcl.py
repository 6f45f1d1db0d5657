"""``python -m caa.entry.kcl``: the record processor the KCL MultiLangDaemon starts once per
shard lease (``executableName`` in the properties rendered by :mod:`deploy.kcl`).

Settings come from ``CAA_*`` and the AWS variables in the daemon's environment; the
processor itself is :mod:`consumers.sources.kcl_processor`. Nothing may go to stdout: it is
the daemon's channel.
"""

from __future__ import annotations

import sys

from caa import secrets, wiring
from caa.settings import Settings
from consumers.sources import kcl_processor


def main() -> int:
    settings = secrets.resolve(Settings())  # referenced secrets read once (caa.secrets)
    return kcl_processor.run(lambda stack: wiring.open_applier(settings, stack),
                             settings.stream_name)


if __name__ == "__main__":
    sys.exit(main())
