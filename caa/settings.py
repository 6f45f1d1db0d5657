"""One frozen settings object, built once at the edge and passed down.

Variables are prefixed ``CAA_``; the standard AWS variables are honoured too:
``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``
and ``AWS_ENDPOINT_URL_<SERVICE>`` (the last two are read by botocore itself).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from botocore.exceptions import InvalidRegionError
from botocore.utils import validate_region_name
from pydantic import (
    AliasChoices,
    AwareDatetime,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from deploy.resources import TABLES, TableNames
from models.money import DEFAULT_REPORTING_CURRENCY, exponent
from models.variant import VariantPlan

__all__ = ["DEFAULT_PRICES", "HAIKU_45_EU", "TABLES", "Settings"]

HAIKU_45_EU = "eu.anthropic.claude-haiku-4-5-20251001-v1:0"
#: USD per million (input, output) tokens. Haiku 4.5 lists at $1 / $5; geo (eu./us.) inference
#: profiles are priced 10% above global ones. Override with CAA_BEDROCK_PRICES (JSON).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    HAIKU_45_EU: (1.10, 5.50),
    "us.anthropic.claude-haiku-4-5-20251001-v1:0": (1.10, 5.50),
    "global.anthropic.claude-haiku-4-5-20251001-v1:0": (1.00, 5.00),
    "anthropic.claude-haiku-4-5-20251001-v1:0": (1.00, 5.00),
}


def parse_api_keys(text: str) -> list[str]:
    """The keys in ``CAA_API_KEYS`` or a secret's value: a JSON list, a JSON object (its
    values) or keys separated by commas or new lines; blanks are ignored. ValueError when
    the JSON is malformed or holds something other than strings.

    >>> parse_api_keys('{"orders": "k1", "shop": "k2"}'), parse_api_keys("k1, k2\\nk3")
    (['k1', 'k2'], ['k1', 'k2', 'k3'])
    """
    raw = text.strip()
    items: list[Any]
    if raw.startswith(("{", "[")):
        data = json.loads(raw)
        items = list(data.values()) if isinstance(data, dict) else list(data)
        if not all(isinstance(k, str) for k in items):
            raise ValueError("every key must be a string")
    else:
        items = re.split(r"[,\n]", raw)
    return [k.strip() for k in items if k.strip()]


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
    #: seconds an event's occurred_at may be ahead of its arrival in the stream; a later
    #: one is dead-lettered (``future_event``) and never becomes the watermark
    future_tolerance_s: float = Field(300.0, ge=0.0)
    #: events dated before this are dead-lettered (``time_out_of_range``): a producer clock
    #: that was never set dates them at the epoch (1970); an ISO 8601 time with its offset
    earliest_event_time: AwareDatetime = datetime(1990, 1, 1, tzinfo=UTC)
    get_records_limit: int = Field(5000, ge=1, le=10_000)
    poll_interval_s: float = Field(0.25, ge=0.0)
    idle_polls: int = Field(3, ge=1)
    #: how the local poller reads shards: "polling" (GetRecords) or "fanout" (enhanced
    #: fan-out: a registered stream consumer and SubscribeToShard, 2 MB/s per shard of its own)
    read_mode: Literal["polling", "fanout"] = "polling"
    #: fanout: the registered stream consumer's name (default: the consumer group)
    efo_consumer_name: str | None = Field(None, min_length=1, max_length=128,
                                          pattern=r"^[a-zA-Z0-9_.-]+$")
    #: fanout: a subscription is renewed after this many seconds (AWS ends one at 300 s)
    efo_renewal_s: float = Field(270.0, gt=0, lt=300)
    #: seconds between background refits of BG/NBD and segments over the customer table
    #: (0: only when `consume --until-idle` finishes)
    refit_interval_s: float = Field(900.0, ge=0.0)
    #: a long-lived worker (warm Lambda, KCL host, local consumer) reloads the models when
    #: its copy is older than this (0: before every batch)
    model_refresh_s: float = Field(60.0, ge=0.0)
    #: ADWIN's delta for drift detection on each batch's share of customers far from every
    #: segment centre (models.learn.drift): smaller detects less often; 0 turns it off. A
    #: detection refits early (the local worker at once, the functions at the next
    #: scheduled refit check), the reason kept in every prediction's refit_reason
    drift_delta: float = Field(0.002, ge=0.0, lt=1.0)
    #: customer value: the CLV horizon in months (30 days each) and the monthly discount rate
    #: (0.01: 1% a month); CLV and its interval are in the reporting currency
    clv_months: int = Field(12, ge=0, le=120)
    discount_rate: float = Field(0.01, ge=0.0, lt=1.0)
    #: churn bands on P(no purchase in the next 90 days): high at or above churn_high,
    #: medium at or above churn_medium, else low
    churn_medium: float = Field(0.5, gt=0.0, lt=1.0)
    churn_high: float = Field(0.8, gt=0.0, lt=1.0)
    #: the purchase model the refit fits and the forecaster scores with (CAA_FORECAST_MODEL);
    #: its parameters are kept in the models table under this name. Pareto/NBD: on the
    #: CDNOW holdout (`caa evaluate`) it beats BG/NBD (MAE .794 vs .819, AUC .769 vs .763)
    forecast_model: Literal["bgnbd", "pareto_nbd"] = "pareto_nbd"
    write_concurrency: int = Field(8, ge=1)
    max_write_attempts: int = Field(8, ge=1)
    #: states kept in memory by the local poller (it owns its shards); 0 turns it off
    state_cache_size: int = Field(200_000, ge=0)

    n_segments: int = Field(6, ge=5, le=7)
    segment_seed: int = 42
    segment_warmup: int = Field(500, ge=10)

    # -- money (models.money, caa.rates) --------------------------------------------------
    #: the ISO 4217 currency monetary features, predictions, prompts and reports are in
    reporting_currency: str = DEFAULT_REPORTING_CURRENCY
    #: the operator's exchange rates into it: a JSON or CSV file with their date (format:
    #: caa/rates.py); without one, amounts in other currencies are left out and named
    fx_rates: Path | None = None

    # -- AI analysis (Bedrock) ---------------------------------------------------------
    analyzer: Literal["statistical", "bedrock"] = "statistical"
    bedrock_model_id: str = HAIKU_45_EU
    #: Bedrock's region; by default the one everything else uses (eu-central-1 by default)
    bedrock_region: str | None = None
    bedrock_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_BEDROCK_RUNTIME")
    )
    bedrock_max_tokens: int = Field(1024, ge=64, le=8192)
    bedrock_timeout_s: float = Field(30.0, gt=0)  # read timeout of one attempt
    bedrock_deadline_s: float = Field(45.0, gt=0)  # all attempts of one analysis
    bedrock_backoff_base_s: float = Field(0.25, ge=0)
    bedrock_concurrency: int = Field(4, ge=1, le=256)
    #: the account's tokens-per-minute quota share of this worker (input + output)
    bedrock_tpm: int = Field(100_000, ge=1000)
    bedrock_prices: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES)
    )
    daily_budget_usd: float = Field(10.0, ge=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_reset_s: float = Field(30.0, gt=0)
    #: the longest a due analysis waits for the token bucket before falling back
    rate_wait_max_s: float = Field(30.0, ge=0)
    analysis_debounce_s: float = Field(60.0, ge=0)
    analysis_min_change: float = Field(0.25, gt=0)
    analysis_max_age_days: int = Field(30, ge=1)
    #: value routing (consumers/analysis/value_route.py): "value" sends a model call at once
    #: only for the top ``analysis_top_share`` of the active customers by CLV, the statistical
    #: analysis for the bottom ``analysis_low_share`` (and P(alive) < 0.05), the rest to the
    #: daily batch when CAA_BATCH_BUCKET is set (else on demand); the cuts come from the last
    #: refit (none before it: every analysis on demand). "off": every analysis on demand
    analysis_route: Literal["value", "off"] = "value"
    analysis_top_share: float = Field(0.2, gt=0, le=1)
    analysis_low_share: float = Field(0.4, ge=0, lt=1)
    #: the middle goes to the daily batch (`caa batch`, which must then run): by default
    #: when CAA_BATCH_BUCKET is set; the analyzer function of deploy/template.yaml says true
    analysis_daily: bool | None = None
    #: customers who bought within this many days are re-analysed on each scheduled refit
    analysis_active_days: int = Field(30, ge=0)
    #: "opt_in": only customers who said yes; "opt_out": everyone who has not said no
    consent_mode: Literal["opt_in", "opt_out"] = "opt_in"
    #: HMAC key for the pseudonyms in prompts; by default a random key kept in state_dir
    pseudonym_key: SecretStr | None = None
    #: where the pseudonym key is kept in production, read once per process in its place
    #: (caa/secrets.py): an SSM parameter (SecureString; its name or ARN, or "ssm:NAME") or a
    #: Secrets Manager secret (its ARN, or "secretsmanager:NAME"). Every function that
    #: pseudonymises reads the same one (deploy/template.yaml)
    pseudonym_key_parameter: str | None = Field(None, min_length=1)
    history_ttl_days: int = Field(90, ge=1)
    usage_flush_s: float = Field(5.0, gt=0)
    #: durable analysis requests (consumers/analysis/requests.py): the SQS queue's name or URL
    #: (None: the in-memory queue of the enricher); `caa setup` creates it and its DLQ
    #: (``<name>-dlq``), a request going there after ``analysis_max_receives`` receives
    analysis_queue: str | None = Field(None, min_length=1)
    analysis_max_receives: int = Field(5, ge=1, le=1000)
    #: seconds a received request stays invisible (a failed one comes back after it)
    analysis_visibility_s: int = Field(120, ge=0, le=43200)

    # -- daily batch (`caa batch`, consumers.analysis.daily.job) ------------------------
    #: S3 bucket and key prefix of Bedrock batch inference jobs: input JSONL, output, and the
    #: job records (which map record ids back to customers)
    batch_bucket: str | None = None
    batch_prefix: str = "caa-batch/"
    #: the service role Bedrock assumes to read the job's input and write its output
    batch_role_arn: str | None = None
    #: batch inference is billed at this share of the on-demand price (50% today)
    bedrock_batch_price_factor: float = Field(0.5, gt=0, le=1)
    #: Bedrock refuses smaller jobs (its per-model quota; 100 records for most models)
    batch_min_records: int = Field(100, ge=1)

    # -- HTTP API (`caa serve`, caa.api.app) -------------------------------------------------
    #: keys accepted in the ``x-api-key`` header (comma-separated or a JSON list); with none,
    #: every route but /health answers 401
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    #: where the API keys are kept in production, read once per process in place of
    #: CAA_API_KEYS (same forms as CAA_PSEUDONYM_KEY_PARAMETER); the value: a JSON list, a
    #: JSON object (its values; the names are labels) or keys separated by commas or lines
    api_keys_parameter: str | None = Field(None, min_length=1)
    #: requests about one customer per minute, and on-demand analyses per customer per hour
    #: (counted per API process: each replica keeps its own windows)
    api_customer_requests_per_minute: int = Field(10, ge=1)
    api_analyses_per_hour: int = Field(5, ge=1)
    api_health_timeout_s: float = Field(3.0, gt=0)

    # -- A/B variants of the analysis (models.variant) ------------------------------------
    #: experiment name (the assignment's salt; empty: no experiment) and "name=weight,..."
    #: variants, e.g. "bedrock=50,statistical=50" (statistical: the control, never analysed
    #: by a model); every prediction records its customer's variant
    ab_experiment: str = ""
    ab_variants: str = ""

    #: crash harness only: SIGKILL at these points (see consumers.instrument.chaos) with
    #: this probability
    chaos_points: str = ""
    chaos_probability: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Settings that are wrong only together, checked when they are read (one line at
        the edge; they raised deep in a command, a traceback, or were taken silently)."""
        if not self.churn_medium <= self.churn_high:
            raise ValueError(f"CAA_CHURN_MEDIUM ({self.churn_medium:g}) must not be above "
                             f"CAA_CHURN_HIGH ({self.churn_high:g})")
        if self.ab_variants.strip() and not self.ab_experiment:
            raise ValueError("CAA_AB_VARIANTS is set but CAA_AB_EXPERIMENT is empty: no "
                             "experiment would run; name it, or unset the variants")
        VariantPlan.parse(self.ab_experiment, self.ab_variants)  # its ValueError, said once
        return self

    @field_validator("region", "bedrock_region")
    @classmethod
    def _region_name(cls, v: str | None) -> str | None:
        """A region name botocore accepts (its own check, made here so a bad one is a
        settings error, not a client's traceback)."""
        if v is not None:
            try:
                validate_region_name(v)
            except InvalidRegionError:
                raise ValueError("not a region name (like eu-central-1)") from None
        return v

    @field_validator("endpoint_url", "bedrock_endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        """An http(s) URL with a host, or unset (also when set empty, as botocore takes
        an empty ``AWS_ENDPOINT_URL``)."""
        if not v:
            return None
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise ValueError(f"not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http:// or https:// URL with a host")
        return v

    @field_validator("reporting_currency", mode="before")
    @classmethod
    def _currency_code(cls, v: Any) -> Any:
        """``CAA_REPORTING_CURRENCY``: an ISO 4217 code with a minor unit (upper-cased)."""
        code = str(v).strip().upper()
        try:
            exponent(code)
        except ValueError as exc:
            raise ValueError(f"CAA_REPORTING_CURRENCY: {exc}") from None
        return code

    @field_validator("fx_rates", mode="before")
    @classmethod
    def _no_rates_file(cls, v: Any) -> Any:
        """``CAA_FX_RATES=`` (empty): no rates file."""
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, v: Any) -> Any:
        """``CAA_API_KEYS``: read as the parameter's value is (:func:`parse_api_keys`): the
        JSON object form was taken as one key, its text, so every request got 401."""
        return parse_api_keys(v) if isinstance(v, str) else v

    @property
    def tables(self) -> TableNames:
        """The names of our tables under ``table_prefix``."""
        return TableNames(self.table_prefix)

    def table(self, name: str) -> str:
        return self.tables.name(name)

    @property
    def efo_consumer(self) -> str:
        """The stream consumer fanout mode registers (and reuses)."""
        return self.efo_consumer_name or self.consumer_group

    @property
    def emulator_file(self) -> Path:
        return self.state_dir / "emulator.json"
