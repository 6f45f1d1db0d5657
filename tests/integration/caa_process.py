"""Run ``caa`` as a real process, with an environment built from nothing but what is given:
no AWS_* or CAA_* variable of the machine leaks in, credentials and config files are empty
files, EC2 metadata is off."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

#: generous: the point is that nothing waits for minutes, not a benchmark
TIMEOUT_S = 30.0


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of one ``caa`` process: state in ``tmp``, no target, no credentials,
    plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CAA_"))}
    empty = tmp / "aws-empty"
    empty.touch()
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_CONFIG_FILE=str(empty),
               AWS_EC2_METADATA_DISABLED="true", AWS_REGION="eu-central-1",
               CAA_STATE_DIR=str(tmp / ".caa"), NO_COLOR="1")
    env.update(extra)
    return env


def fake_creds(endpoint: str | None = None, **extra: str) -> dict[str, str]:
    out = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", **extra}
    if endpoint:
        out["AWS_ENDPOINT_URL"] = endpoint
    return out


def caa(env: dict[str, str], *argv: str, cwd: Path | None = None,
        timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caa.cli.main", *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


#: a progress line of a phase that had started when the command failed (plain mode, stderr)
_PHASE = re.compile(r"^\S.* \.\.\.$")


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``caa:`` line a failed command ends with on stderr. Before it, only the start
    lines of progress phases that were running may stand (``name ...``): no traceback, no other
    error text, and no phase reported ``done``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("caa: "), proc.stderr
    assert all(_PHASE.match(line) for line in lines[:-1]), proc.stderr
    return lines[-1]
