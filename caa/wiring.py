"""Settings in, the objects below the edge out.

The one module that reads :class:`~caa.settings.Settings` on behalf of ``models/``,
``producers/``, ``consumers/`` and ``deploy/``: those take plain values or the small frozen
config objects declared next to the code that uses them (:class:`TableNames`,
:class:`RegistryConfig`, :class:`WorkerConfig`, :class:`BatchConfig`,
:class:`ErasureTargets`, the exchange rates :class:`~models.money.Rates`), and this module
builds them, and the stores, registry, enricher, applier and worker on top, from one
settings object. The command line, the HTTP API, the
report and the Lambda and KCL entry points (:mod:`caa.entry`) call it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from caa import rates as rates_file
from caa import secrets
from caa.aws import Aws
from caa.settings import Settings
from consumers.admission import TimeRule
from consumers.analysis.analyzer import PriceTable
from consumers.analysis.bedrock import BedrockAnalyzer
from consumers.analysis.breaker import CircuitBreaker
from consumers.analysis.daily.job import BatchConfig
from consumers.analysis.enricher import Enricher
from consumers.analysis.guard import CallGuard
from consumers.analysis.requests import RequestAnalyzer, RequestQueue, delay_of
from consumers.analysis.trigger import CacheRules
from consumers.analysis.value_route import NO_ROUTING, ValueCuts, ValueRouter, load_cuts
from consumers.applier import BatchApplier
from consumers.core import BatchResult
from consumers.instrument.chaos import NO_CHAOS, Chaos
from consumers.instrument.metrics import Metrics
from consumers.ops.erasure import ErasureTargets
from consumers.registry import ModelRegistry, RegistryConfig
from consumers.sources import worker as workers
from consumers.sources.worker import Worker, WorkerConfig, reference_order_value
from consumers.stores.analyses import AnalysisStore
from consumers.stores.customers import CustomerStore
from consumers.stores.dead_letters import BY_CUSTOMER_ID, DeadLetterStore, index_stored_letters
from consumers.stores.dynamo import Dynamo
from consumers.stores.model_snapshots import ModelStore
from consumers.stores.predictions import PredictionStore
from consumers.stores.usage import UsageLedger
from deploy import resources
from deploy.resources import TableNames
from models.learn.drift import DriftMonitor
from models.learn.outlook import OutlookConfig
from models.money import Rates
from models.variant import VariantPlan

# -- names and resources ----------------------------------------------------------------


def tables(settings: Settings) -> TableNames:
    """Our tables' names under ``CAA_TABLE_PREFIX``."""
    return TableNames(settings.table_prefix)


def ensure_resources(settings: Settings, kinesis: Any, dynamodb: Any,
                     sqs: Any = None) -> resources.Provisioned:
    """The stream (``CAA_STREAM_NAME``, ``CAA_SHARD_COUNT``) and every table, idempotently,
    and with ``sqs``, the analysis requests' queue and its DLQ when ``CAA_ANALYSIS_QUEUE``
    names one (:class:`deploy.resources.Provisioned`: what was created now, what waits)."""
    done = resources.ensure_resources(kinesis, dynamodb, stream_name=settings.stream_name,
                                      shard_count=settings.shard_count,
                                      tables=tables(settings))
    letters = tables(settings).dead_letters
    # the index added now (or to be, once DynamoDB has built the other one): the letters
    # stored before it name their customers too
    if (letters, BY_CUSTOMER_ID) in done.indexes and (
            indexed := index_stored_letters(dynamodb, letters)):
        done.created.append(f"{indexed} older dead letter(s) indexed by the customer(s) "
                            "their payload names")
    if sqs is not None and settings.analysis_queue:
        done.created += resources.ensure_queue(sqs, settings.analysis_queue,
                                               max_receives=settings.analysis_max_receives,
                                               visibility_s=settings.analysis_visibility_s)
    return done


# -- stores and models ------------------------------------------------------------------


def chaos_of(settings: Settings) -> Chaos:
    """The crash harness's kill points (off unless ``CAA_CHAOS_*`` say otherwise)."""
    return Chaos.parse(settings.chaos_points, settings.chaos_probability)


def dynamo(settings: Settings, client: Any, chaos: Chaos = NO_CHAOS) -> Dynamo:
    """Batch helpers over ``client`` with the configured write attempts and concurrency."""
    return Dynamo(client, max_attempts=settings.max_write_attempts,
                  concurrency=settings.write_concurrency, chaos=chaos)


def registry_config(settings: Settings) -> RegistryConfig:
    return RegistryConfig(
        n_segments=settings.n_segments, segment_seed=settings.segment_seed,
        segment_warmup=settings.segment_warmup, forecast_model=settings.forecast_model,
        variants=VariantPlan.parse(settings.ab_experiment, settings.ab_variants),
        outlook=OutlookConfig(clv_months=settings.clv_months,
                              monthly_discount_rate=settings.discount_rate,
                              churn_medium=settings.churn_medium, churn_high=settings.churn_high),
        refresh_s=settings.model_refresh_s)


def rates(settings: Settings) -> Rates:
    """The exchange rates into ``CAA_REPORTING_CURRENCY``, read from ``CAA_FX_RATES`` (format:
    :mod:`caa.rates`); without a file, only the reporting currency converts (the others
    are left out and named). A missing or malformed file is :class:`caa.errors.NotFound` /
    :class:`caa.errors.BadInput` (one line). Read once per process: build it once and
    pass it down (the registry keeps it for the models' view)."""
    if settings.fx_rates is None:
        return Rates(settings.reporting_currency)
    return rates_file.load(settings.fx_rates, settings.reporting_currency)


def registry(settings: Settings, db: Dynamo, fx: Rates | None = None) -> ModelRegistry:
    """The global models, kept in the models table (not loaded yet), with the exchange
    rates (``fx``; read from the settings by :func:`rates` when not given)."""
    return ModelRegistry(ModelStore(db, tables(settings).models), registry_config(settings),
                         rates=fx if fx is not None else rates(settings))


def analysis_store(settings: Settings, db: Dynamo) -> AnalysisStore:
    t = tables(settings)
    return AnalysisStore(db, t.analyses, t.analysis_history, t.predictions,
                         settings.history_ttl_days)


# -- AI analysis ------------------------------------------------------------------------


def prices(settings: Settings) -> PriceTable:
    return PriceTable.parse(settings.bedrock_prices)


def time_rule(settings: Settings) -> TimeRule:
    """When events may be dated (``CAA_EARLIEST_EVENT_TIME``, ``CAA_FUTURE_TOLERANCE_S``)."""
    return TimeRule(settings.earliest_event_time.timestamp(), settings.future_tolerance_s)


def pseudonym_key(settings: Settings) -> bytes:
    """The key ``CAA_PSEUDONYM_KEY_PARAMETER`` names (SSM or Secrets Manager, read once per
    process: :mod:`caa.secrets`), else ``CAA_PSEUDONYM_KEY``, else the random key kept in
    the state directory."""
    key = secrets.pseudonym_key(settings)
    return workers.pseudonym_key(None if key is None else key.get_secret_value(),
                                 settings.state_dir)


def enricher(settings: Settings, db: Dynamo, bedrock: Any, registry: ModelRegistry,
             cloudwatch: Any = None) -> Enricher:
    """The Bedrock analyzer behind its guard (budget, token bucket, breaker), and the
    enricher around it; ``bedrock`` is the runtime client (None: requests are only built)."""
    s = settings
    table = prices(s)
    analyzer = BedrockAnalyzer(
        bedrock, s.bedrock_model_id, max_tokens=s.bedrock_max_tokens, prices=table,
        deadline_s=s.bedrock_deadline_s, backoff_base_s=s.bedrock_backoff_base_s,
    )
    guard = CallGuard(
        analyzer, UsageLedger(db, tables(s).usage), table,
        daily_budget_usd=s.daily_budget_usd, tokens_per_minute=s.bedrock_tpm,
        rate_wait_max_s=s.rate_wait_max_s,
        breaker=CircuitBreaker(s.breaker_failures, s.breaker_reset_s),
    )
    return Enricher(
        guard=guard,
        store=analysis_store(s, db),
        pseudonym_key=pseudonym_key(s),
        reference_order_value=lambda: reference_order_value(registry.segmenter),
        debounce_s=s.analysis_debounce_s,
        concurrency=s.bedrock_concurrency,
        consent_mode=s.consent_mode,
        cache_rules=CacheRules(s.analysis_min_change, s.analysis_max_age_days),
        metrics=Metrics(cloudwatch, {"Stream": s.stream_name, "Model": s.bedrock_model_id}),
        variants=registry.variants,
        rates=registry.rates,
        router=value_router(s, registry),
    )


def value_router(settings: Settings, registry: ModelRegistry) -> ValueRouter:
    """Value routing (``CAA_ANALYSIS_ROUTE=value``, the default) from the cuts the latest
    refit stored; the middle goes to the daily batch only when one runs
    (``CAA_ANALYSIS_DAILY``, by default whether ``CAA_BATCH_BUCKET`` is set), else stays on
    demand."""
    s = settings
    if s.analysis_route != "value":
        return NO_ROUTING

    async def load() -> ValueCuts | None:
        return await load_cuts(registry.store, top_share=s.analysis_top_share,
                               low_share=s.analysis_low_share)

    daily = s.analysis_daily if s.analysis_daily is not None else s.batch_bucket is not None
    return ValueRouter(load, daily=daily, refresh_s=s.model_refresh_s)


# -- what the adapters run --------------------------------------------------------------


def applier_and_enricher(settings: Settings, dynamodb: Any, *, cache_size: int,
                         bedrock: Any = None, cloudwatch: Any = None,
                         chaos: Chaos | None = None,
                         ) -> tuple[BatchApplier, Enricher | None]:
    """The stores, models and (with ``CAA_ANALYZER=bedrock`` and a runtime client) the
    enricher every adapter shares, around one :class:`BatchApplier`."""
    s = settings
    db = dynamo(s, dynamodb, chaos if chaos is not None else chaos_of(s))
    t = tables(s)
    models = registry(s, db)
    ai = (enricher(s, db, bedrock, models, cloudwatch)
          if s.analyzer == "bedrock" and bedrock is not None else None)
    applier = BatchApplier(CustomerStore(db, t.customers), PredictionStore(db, t.predictions),
                           DeadLetterStore(db, t.dead_letters), models, s.max_event_bytes,
                           cache_size=cache_size, enricher=ai,
                           future_tolerance_s=s.future_tolerance_s,
                           earliest_ts=time_rule(s).earliest_ts)
    applier.analyses = analysis_store(s, db)
    if s.drift_delta > 0:  # 0 turns drift detection off
        applier.drift = DriftMonitor("distant", delta=s.drift_delta, trigger="worse")
    return applier, ai


def applier(settings: Settings, dynamodb: Any, *, cache_size: int, bedrock: Any = None,
            cloudwatch: Any = None, chaos: Chaos | None = None) -> BatchApplier:
    """:func:`applier_and_enricher` without the enricher."""
    return applier_and_enricher(settings, dynamodb, cache_size=cache_size, bedrock=bedrock,
                                cloudwatch=cloudwatch, chaos=chaos)[0]


def worker_config(settings: Settings) -> WorkerConfig:
    s = settings
    return WorkerConfig(
        stream_name=s.stream_name, consumer_group=s.consumer_group,
        checkpoints_table=tables(s).checkpoints, read_mode=s.read_mode,
        efo_consumer=s.efo_consumer, efo_renewal_s=s.efo_renewal_s,
        get_records_limit=s.get_records_limit, poll_interval_s=s.poll_interval_s,
        idle_polls=s.idle_polls, refit_interval_s=s.refit_interval_s,
        analysis_active_days=s.analysis_active_days, usage_flush_s=s.usage_flush_s)


def request_queue(settings: Settings, sqs: Any) -> RequestQueue:
    """``CAA_ANALYSIS_QUEUE`` over ``sqs``, sending with the debounce window as delay."""
    assert settings.analysis_queue is not None
    return RequestQueue(sqs, settings.analysis_queue,
                        delay_s=delay_of(settings.analysis_debounce_s))


def request_analyzer(settings: Settings, applier: BatchApplier, ai: Enricher,
                     queue: RequestQueue | None) -> RequestAnalyzer:
    """The analyzer of durable requests around ``ai`` (the local worker, or the Lambda's)."""
    return RequestAnalyzer(ai, applier.customers, applier.predictions, queue,
                           concurrency=settings.bedrock_concurrency)


def worker(settings: Settings, kinesis: Any, dynamodb: Any,
           on_batch: Callable[[str, BatchResult], None] | None = None,
           bedrock: Any = None, cloudwatch: Any = None, sqs: Any = None) -> Worker:
    """The local consumer (``caa consume``): its applier with the state cache, the
    enricher when configured, and the poller or fan-out reader. With ``CAA_ANALYSIS_QUEUE``
    and ``sqs``, analysis requests go through that queue (sent by the applier, analysed by
    the worker's request analyzer) instead of the enricher's in-memory queue."""
    kill = chaos_of(settings)
    applier, ai = applier_and_enricher(settings, dynamodb, cache_size=settings.state_cache_size,
                                       bedrock=bedrock, cloudwatch=cloudwatch, chaos=kill)
    analyzer = None
    if ai is not None and sqs is not None and settings.analysis_queue:
        queue = request_queue(settings, sqs)
        applier.requests = queue
        analyzer = request_analyzer(settings, applier, ai, queue)
    return Worker(worker_config(settings), applier, kinesis, enricher=ai, on_batch=on_batch,
                  cloudwatch=cloudwatch, chaos=kill, requests=analyzer)


async def open_applier(settings: Settings, stack: AsyncExitStack,
                       wrap_dynamodb: Callable[[Any], Any] | None = None) -> BatchApplier:
    """The Lambda's and the KCL processor's applier: a DynamoDB client opened on ``stack``,
    no state cache (another worker may write these customers next), no AI analysis, its
    models loaded; with ``CAA_ANALYSIS_QUEUE``, an SQS client and the analysis requests sent
    there. ``wrap_dynamodb``: tests wrap the real client to inject faults."""
    queued = settings.analysis_queue is not None
    clients = await stack.enter_async_context(Aws(settings, quiet=True).clients(
        "dynamodb", *(["sqs"] if queued else [])))
    dynamodb = clients["dynamodb"]
    if wrap_dynamodb is not None:
        dynamodb = wrap_dynamodb(dynamodb)
    out = applier(settings, dynamodb, cache_size=0)
    # drift seen here asks the scheduled refit check to refit now (caa.entry.refit_lambda)
    out.on_drift = lambda reason: out.registry.request_refit(reason, time.time())
    if queued:  # the analyzer function (caa.entry.analyzer_lambda) takes them from there
        out.requests = request_queue(settings, clients["sqs"])
    await out.registry.load()
    return out


async def open_request_analyzer(settings: Settings, stack: AsyncExitStack,
                                read_queue: bool = False) -> RequestAnalyzer:
    """The SQS analyzer's: DynamoDB, Bedrock and CloudWatch clients opened on ``stack``, the
    enricher (whatever ``CAA_ANALYZER`` says: this exists to call Bedrock), its models
    loaded. The function's has no queue (Lambda receives and deletes); ``read_queue`` (the
    local ``caa analyzer``) reads ``CAA_ANALYSIS_QUEUE`` itself."""
    clients = await stack.enter_async_context(Aws(settings, quiet=True).clients(
        "dynamodb", "bedrock-runtime", "cloudwatch", *(["sqs"] if read_queue else [])))
    db = dynamo(settings, clients["dynamodb"])
    t = tables(settings)
    models = registry(settings, db)
    ai = enricher(settings, db, clients["bedrock-runtime"], models, clients["cloudwatch"])
    await models.load()
    queue = request_queue(settings, clients["sqs"]) if read_queue else None
    return RequestAnalyzer(ai, CustomerStore(db, t.customers), PredictionStore(db, t.predictions),
                           queue, concurrency=settings.bedrock_concurrency, registry=models)


# -- operations -------------------------------------------------------------------------


def batch_config(settings: Settings) -> BatchConfig:
    """The daily batch's (``caa batch``)."""
    s = settings
    return BatchConfig(usage_table=tables(s).usage, prices=prices(s),
                       price_factor=s.bedrock_batch_price_factor, model_id=s.bedrock_model_id,
                       bucket=s.batch_bucket, prefix=s.batch_prefix, role_arn=s.batch_role_arn)


def erasure_targets(settings: Settings) -> ErasureTargets:
    """Where ``caa erase`` finds a customer."""
    t = tables(settings)
    return ErasureTargets(stream_name=settings.stream_name, customers=t.customers,
                          predictions=t.predictions, analyses=t.analyses,
                          analysis_history=t.analysis_history, dead_letters=t.dead_letters,
                          audit=t.audit)
