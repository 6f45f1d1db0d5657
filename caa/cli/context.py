"""What one ``caa`` invocation carries to its command: the settings and the AWS clients,
built here and nowhere else, when the command first asks for them (``caa --help`` and
``caa emulator stop`` need neither)."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer

from caa.aws import Aws
from caa.settings import Settings


@dataclass
class Invocation:
    """The one place where ``Settings()`` and ``Aws(settings)`` are built."""

    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)
    _aws: Aws | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings()
        return self._settings

    def aws(self, quiet: bool = False) -> Aws:
        """The client factory of the settings (built once; ``quiet``: no line on stderr about
        the local emulator in use)."""
        if self._aws is None:
            self._aws = Aws(self.settings, quiet=quiet)
        return self._aws

    def endpoint(self) -> str | None:
        """The endpoint in use, for error lines (None: AWS's own, or not known yet)."""
        if self._aws is not None and self._aws.endpoint_url:
            return self._aws.endpoint_url
        return self._settings.endpoint_url if self._settings is not None else None


def current(ctx: typer.Context) -> Invocation:
    """The running command's :class:`Invocation` (``caa.cli.main.main`` passes it as the
    context's ``obj``)."""
    obj = ctx.obj
    if not isinstance(obj, Invocation):
        raise RuntimeError("caa commands run through caa.cli.main.main")
    return obj
