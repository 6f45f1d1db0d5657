"""kinesis-mock (npm ``kinesis-local``) as a separate process: the Kinesis fidelity tier.

moto's Kinesis is fast but lenient: a split parent keeps taking writes and is
never closed. kinesis-mock validates like AWS, closes split and merged parents
(a null ``NextShardIterator`` once they are drained) and supports enhanced
fan-out. ``make test`` installs it with npm into ``.venv/node``; tests start it
on free ports and point only the Kinesis client at it with the standard
``AWS_ENDPOINT_URL_KINESIS``, DynamoDB staying on moto.

It listens on all interfaces (it has no bind setting); we only ever talk to it on
loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from deploy.local.emulator import Emulator, EmulatorError, free_port, wait_ready

#: where ``make test`` installs the npm package, relative to the checkout
PACKAGE = Path(".venv/node/node_modules/kinesis-local")


def healthy(endpoint: str, timeout: float = 1.0) -> bool:
    """Answers an (unsigned) ListStreams: kinesis-mock accepts any credentials."""
    req = urllib.request.Request(
        endpoint, data=b"{}", method="POST",
        headers={"Content-Type": "application/x-amz-json-1.1",
                 "X-Amz-Target": "Kinesis_20131202.ListStreams", "X-Amz-Date": "20240101T000000Z",
                 "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20240101/eu-central-1/"
                                  "kinesis/aws4_request, SignedHeaders=host, Signature=x"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return "StreamNames" in json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False


def launch(package: Path, log: Path | None = None, timeout: float = 60.0,
           shard_op_ms: int = 200) -> Emulator:
    """Start kinesis-mock with plain HTTP on a free loopback port and wait until it answers.

    ``shard_op_ms``: how long a split, merge or stream creation stays in UPDATING/CREATING
    (AWS takes seconds; the package's default is 500 ms)."""
    main = package / "main.js"
    if not main.exists():
        raise EmulatorError(f"{main} not found: run `make test` (it npm-installs kinesis-local)")
    plain, tls = free_port(), free_port()
    env = {**os.environ, "KINESIS_MOCK_CERT_PATH": str(package / "server.json"),
           "KINESIS_MOCK_PLAIN_PORT": str(plain), "KINESIS_MOCK_TLS_PORT": str(tls),
           "AWS_REGION": "eu-central-1", "LOG_LEVEL": "WARN",
           **{f"{op}_DURATION": f"{shard_op_ms}ms" for op in (
               "CREATE_STREAM", "DELETE_STREAM", "SPLIT_SHARD", "MERGE_SHARDS",
               "UPDATE_SHARD_COUNT", "REGISTER_STREAM_CONSUMER",
               "DEREGISTER_STREAM_CONSUMER")}}
    out = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(["node", str(main)], env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    return wait_ready("kinesis-mock", proc, f"http://127.0.0.1:{plain}", healthy, timeout, log)
