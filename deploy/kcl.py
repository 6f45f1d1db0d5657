"""The KCL MultiLangDaemon: its properties and its command line.

The daemon is the Java KCL 3 (leases, shard balancing, resharding, checkpoints in
its own DynamoDB tables named after ``applicationName``); it starts
``python -m caa.entry.kcl`` (settings from the environment, then
:func:`consumers.sources.kcl_processor.run`) once per shard lease and speaks the
multi-language protocol with it over stdin/stdout. The jars come inside the
``kclpy-ext`` wheel (``pip install '.[kcl]'``), as the ``amazon_kclpy`` module.

Production: render the properties for your stream (``caa kcl properties``), then run
``caa kcl run`` (or the ``java`` line from :func:`command`) on as many hosts or
containers as you like under the same application name; the KCL spreads the
shards over them. Credentials and region come from the standard AWS chain.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: the module the daemon runs once per shard lease (``python -m``)
PROCESSOR = "caa.entry.kcl"


def jars() -> Path:
    """The KCL jars shipped in the installed ``amazon_kclpy`` package."""
    import amazon_kclpy

    return Path(amazon_kclpy.__file__).parent / "jars"


@dataclass(frozen=True)
class KclOptions:
    application_name: str
    retrieval_mode: str = "POLLING"  # or FANOUT (enhanced fan-out, KCL's default)
    initial_position: str = "TRIM_HORIZON"
    kinesis_endpoint: str | None = None  # local emulators only
    dynamodb_endpoint: str | None = None
    metrics_level: str = "DETAILED"  # NONE against emulators (no CloudWatch there)
    idle_between_reads_ms: int = 1000
    parent_shard_poll_ms: int = 10_000
    failover_ms: int = 10_000
    python: str = sys.executable


def properties(stream_name: str, region: str, options: KclOptions) -> str:
    """The daemon's properties file for our stream and processor.

    >>> text = properties("orders", "eu-central-1", KclOptions("caa-kcl", python="python3"))
    >>> print(text.splitlines()[0])
    executableName = python3 -m caa.entry.kcl
    >>> "streamName = orders" in text, "kinesisEndpoint" in text
    (True, False)
    """
    o = options
    lines = {
        "executableName": f"{o.python} -m {PROCESSOR}",
        "streamName": stream_name,
        "applicationName": o.application_name,
        "AwsCredentialsProvider": "DefaultCredentialsProvider",
        "processingLanguage": f"python/{sys.version_info.major}.{sys.version_info.minor}",
        "initialPositionInStream": o.initial_position,
        "regionName": region,
        "retrievalMode": o.retrieval_mode,
        "metricsLevel": o.metrics_level,
        "idleTimeBetweenReadsInMillis": str(o.idle_between_reads_ms),
        "parentShardPollIntervalMillis": str(o.parent_shard_poll_ms),
        "failoverTimeMillis": str(o.failover_ms),
    }
    if o.kinesis_endpoint:
        lines["kinesisEndpoint"] = o.kinesis_endpoint
    if o.dynamodb_endpoint:
        lines["dynamoDBEndpoint"] = o.dynamodb_endpoint
    return "".join(f"{k} = {v}\n" for k, v in lines.items())


#: JAXB's API (Debian's ``libjaxb-api-java``): the KCL's de-aggregation error path calls
#: ``javax.xml.bind.DatatypeConverter``, gone from the JDK since Java 11; without it one
#: malformed KPL aggregate (a partition-key index outside its table) kills the daemon with
#: ``NoClassDefFoundError`` on every restart. With it the daemon logs and drops the record.
JAXB_JAR = Path("/usr/share/java/jaxb-api.jar")


def command(properties_file: Path, java: str = "java") -> list[str]:
    """``java -cp <jars>/*:[jaxb-api.jar:]. MultiLangDaemon --properties-file <file>``."""
    extra = f"{JAXB_JAR}{os.pathsep}" if JAXB_JAR.exists() else ""
    return [java, "-cp", f"{jars()}/*{os.pathsep}{extra}.",
            "software.amazon.kinesis.multilang.MultiLangDaemon",
            "--properties-file", str(properties_file)]


def launch(properties_file: Path, cwd: Path, env: Mapping[str, str],
           log: Path) -> subprocess.Popen[bytes]:
    """Start the daemon; its output (and the processors' stderr) goes to ``log``.

    ``cwd`` must be where ``caa`` and ``consumers`` import from (the checkout, or any
    directory once the package is installed)."""
    with log.open("ab") as out:
        return subprocess.Popen(command(properties_file), cwd=cwd, env=dict(env),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
