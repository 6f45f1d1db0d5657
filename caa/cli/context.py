"""What one ``caa`` invocation carries to its command: the settings and the AWS clients,
built here and nowhere else, when the command first asks for them (``caa --help`` and
``caa emulator stop`` need neither)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import typer
from pydantic import AliasChoices, ValidationError
from pydantic_settings import SettingsError

from caa.aws import Aws
from caa.errors import BadInput
from caa.settings import Settings


def variable(name: str) -> str:
    """The environment variable a settings value was read from, for the field (or alias)
    pydantic names: the first of the field's aliases that is set (``AWS_REGION`` for
    ``region`` when only that is), else ``CAA_<FIELD>``."""
    for key, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = ([str(c) for c in alias.choices if isinstance(c, str)]
                 if isinstance(alias, AliasChoices) else [])
        if name == key or name in names:
            return next((n for n in names if n in os.environ),
                        names[0] if names else "CAA_" + key.upper())
    return name


def settings_error(exc: ValidationError) -> BadInput:
    """A settings value pydantic refused, as one line naming its environment variable."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = [str(p) for p in err["loc"]]
        if not loc:  # several settings wrong together: the message names them
            parts.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        name = variable(loc[0]) + "".join(f"[{p}]" for p in loc[1:])
        parts.append(f"{name}={err.get('input')!r}: {err['msg']}")
    return BadInput("bad setting " + "; ".join(parts),
                    "fix the environment variable (see README, Configuration)")


def unparsed_setting(exc: SettingsError) -> BadInput:
    """A structured settings value (a JSON object or list, such as ``CAA_BEDROCK_PRICES``)
    that pydantic-settings could not parse, as one line naming its environment variable."""
    found = re.search(r'field "([^"]+)"', str(exc))
    name = variable(found.group(1)) if found else "a CAA_ variable"
    value = f"={os.environ[name][:80]!r}" if name in os.environ else " (from the .env file)"
    return BadInput(f"bad setting {name}{value}: not valid JSON",
                    "fix the environment variable (see README, Configuration)")


@dataclass
class Invocation:
    """The one place where ``Settings()`` and ``Aws(settings)`` are built."""

    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)
    _aws: Aws | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = Settings()
            except ValidationError as exc:
                raise settings_error(exc) from None
            except SettingsError as exc:  # a value of a structured field that is not JSON
                raise unparsed_setting(exc) from None
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
