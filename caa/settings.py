"""One frozen settings object, built once at the edge and passed down.

Variables are prefixed ``CAA_``; the standard AWS variables are honoured too:
``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``
and ``AWS_ENDPOINT_URL_<SERVICE>`` (the last two are read by botocore itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

TABLES = ("customers", "predictions", "checkpoints", "models", "dead-letters")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CAA_", frozen=True, extra="ignore", populate_by_name=True
    )

    region: str = Field(
        "eu-central-1",
        validation_alias=AliasChoices("CAA_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )
    profile: str | None = Field(None, validation_alias=AliasChoices("CAA_PROFILE", "AWS_PROFILE"))
    endpoint_url: str | None = Field(None, validation_alias=AliasChoices("AWS_ENDPOINT_URL"))
    #: "auto": with no AWS_ENDPOINT_URL set, use the local emulator started by `caa emulator
    #: start` when it is running; "never": always the AWS endpoints.
    local_emulator: Literal["auto", "never"] = "auto"
    state_dir: Path = Path(".caa")
    emulator_host: str = "127.0.0.1"
    emulator_port: int = 4566

    stream_name: str = "caa-purchases"
    shard_count: int = Field(4, ge=1)
    table_prefix: str = "caa-"
    consumer_group: str = "caa-consumer"

    max_event_bytes: int = Field(256 * 1024, ge=1024, le=1024 * 1024)
    get_records_limit: int = Field(5000, ge=1, le=10_000)
    poll_interval_s: float = Field(0.25, ge=0.0)
    idle_polls: int = Field(3, ge=1)
    #: seconds between background refits of BG/NBD and segments over the customer table
    #: (0: only when `consume --until-idle` finishes)
    refit_interval_s: float = Field(900.0, ge=0.0)
    write_concurrency: int = Field(8, ge=1)
    max_write_attempts: int = Field(8, ge=1)
    #: states kept in memory by the local poller (it owns its shards); 0 turns it off
    state_cache_size: int = Field(200_000, ge=0)

    n_segments: int = Field(6, ge=5, le=7)
    segment_seed: int = 42
    segment_warmup: int = Field(500, ge=10)

    def table(self, name: str) -> str:
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
        return f"{self.table_prefix}{name}"

    @property
    def emulator_file(self) -> Path:
        return self.state_dir / "emulator.json"
