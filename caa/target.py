"""Which AWS the interactive command line talks to, and never a real account by accident.

The rule (:func:`require_target`), for the ``caa`` command line only (the Lambda and KCL
entry points, ``caa serve`` and the library build :class:`~caa.aws.Aws` without it): a
command that talks to AWS needs a chosen target, one of

1. ``AWS_ENDPOINT_URL`` (LocalStack, a moto server, ...),
2. the local emulator recorded by ``caa emulator start`` in ``.caa/emulator.json``, alive,
   ours and answering (with ``CAA_LOCAL_EMULATOR=auto``, the default),
3. ``AWS_PROFILE`` (or ``CAA_PROFILE``): that profile's account,
4. ``CAA_LOCAL_EMULATOR=never``: AWS with the environment's credentials.

With none of them (typically after ``make stop``) the command refuses with
:class:`~caa.errors.NoTarget` (exit 8) instead of falling back to whatever account the
environment's credentials belong to. A command that creates, writes or deletes
(``mutates``) first prints one line naming its target: on real AWS the account (STS
GetCallerIdentity) and the region, else the endpoint. Read-only commands print nothing
about it (their error lines name the endpoint).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from caa.errors import NoTarget
from caa.settings import Settings

__all__ = ["MUTATING", "NEEDS_TARGET", "Target", "before_clients", "check_command", "checked",
           "require_target", "resolve"]

#: commands that talk to AWS and so need a target. Not here: ``emulator``, ``run`` and
#: ``evaluate`` (they start the emulator themselves), ``kcl`` (``properties`` only renders;
#: ``run`` and ``serve`` are how production runs), and unknown words (a usage error)
NEEDS_TARGET = frozenset({"setup", "publish", "consume", "show", "segments", "dlq", "costs",
                          "history", "analyze", "analyzer", "erase", "watch", "batch", "replay",
                          "report", "audience"})
#: commands that create, write or delete: they name their target first (on AWS, the account)
MUTATING = frozenset({"setup", "publish", "erase", "dlq redrive", "replay", "batch"})
_HINT = ("run `caa emulator start`, or set AWS_PROFILE or AWS_ENDPOINT_URL, or "
         "CAA_LOCAL_EMULATOR=never to use AWS with the environment's credentials")


@dataclass(frozen=True)
class Target:
    """Where the clients go: ``endpoint`` (None: AWS's own endpoints) and why."""

    endpoint: str | None
    reason: str
    region: str

    @property
    def real_aws(self) -> bool:
        return self.endpoint is None


def resolve(settings: Settings) -> Target | None:
    """The target the settings choose (same precedence as :class:`~caa.aws.Aws`), or None
    when none is chosen."""
    from caa.aws import local_emulator_endpoint

    region = settings.region
    if settings.endpoint_url:
        return Target(settings.endpoint_url, "AWS_ENDPOINT_URL", region)
    if settings.local_emulator == "auto":
        local = local_emulator_endpoint(settings)
        if local:
            return Target(local, f"the local emulator ({settings.emulator_file})", region)
    if settings.profile:
        return Target(None, f"profile {settings.profile!r}", region)
    if settings.local_emulator == "never":
        return Target(None, "CAA_LOCAL_EMULATOR=never", region)
    return None


def _no_target(settings: Settings) -> NoTarget:
    from deploy.local import emulator

    found = emulator.status(settings.emulator_file, settings.emulator_host,
                            settings.emulator_port)
    what = {"not started": "the local emulator is not running",
            "not answering": f"the local emulator (pid {found.pid}) does not answer",
            }.get(found.state, f"the local emulator recorded in {settings.emulator_file} is "
                               "no longer running")
    return NoTarget(f"no AWS target chosen ({what}); refusing to use the account of the "
                    "environment's credentials", _HINT)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def require_target(settings: Settings, *, mutates: bool = False,
                   say: Callable[[str], None] = _stderr) -> Target:
    """The chosen :class:`Target`, or :class:`~caa.errors.NoTarget` (exit 8) when none is.

    With ``mutates``, ``say`` gets one line naming the target: on real AWS the account and
    region (one STS call; its failures, e.g. no credentials, propagate for
    :func:`caa.errors.explain`), else the endpoint."""
    target = resolve(settings)
    if target is None:
        raise _no_target(settings)
    if mutates and target.real_aws:
        from caa.aws import Aws

        who = Aws(settings, quiet=True).client("sts").get_caller_identity()
        say(f"target: AWS account {who['Account']}, region {target.region} ({who['Arn']}; "
            f"chosen by {target.reason})")
    elif mutates:
        say(f"target: {target.endpoint} ({target.reason})")
    return target


def _command(argv: Sequence[str]) -> list[str]:
    """The command's words: the arguments before the first option, after leading options."""
    words = list(argv)
    while words and words[0].startswith("-"):
        words.pop(0)
    out = []
    for w in words:
        if w.startswith("-"):
            break
        out.append(w)
    return out


def check_command(argv: Sequence[str], settings: Callable[[], Settings]) -> Target | None:
    """:func:`require_target` for the command line ``argv`` (without the program name),
    with ``settings()`` built only when needed: nothing (None) for ``--help``/``--version``
    or a command not in :data:`NEEDS_TARGET`; ``mutates`` for a :data:`MUTATING` one unless
    ``--dry-run`` is given."""
    words = _command(argv)
    if not words or any(a in {"--help", "-h", "--version"} for a in argv):
        return None
    if words[0] not in NEEDS_TARGET or words == ["dlq"]:  # a group alone: its help
        return None
    mutates = (words[0] in MUTATING or " ".join(words[:2]) in MUTATING) \
        and "--dry-run" not in argv
    return require_target(settings(), mutates=mutates)


@dataclass
class _Armed:
    check: Callable[[], object]
    done: list[bool] = field(default_factory=list)


_ARMED: ContextVar[_Armed | None] = ContextVar("caa_target_check", default=None)


@contextmanager
def checked(argv: Sequence[str], settings: Callable[[], Settings]) -> Iterator[None]:
    """While the command line runs ``argv``: the first :class:`~caa.aws.Aws` built runs
    :func:`check_command` (so after the arguments were parsed: a usage error stays exit 2).
    Outside it (Lambda, KCL, API, library, tests) nothing is checked."""
    token = _ARMED.set(_Armed(lambda: check_command(argv, settings)))
    try:
        yield
    finally:
        _ARMED.reset(token)


def before_clients() -> None:
    """Called by :class:`~caa.aws.Aws` when it is built: the armed check, once."""
    armed = _ARMED.get()
    if armed is not None and not armed.done:
        armed.done.append(True)
        armed.check()
