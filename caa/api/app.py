"""The HTTP API for downstream services (FastAPI on uvicorn), built by ``create_app(settings)``
and run by ``caa serve``.

Every route but ``GET /health`` needs an ``x-api-key`` header holding one of
``CAA_API_KEYS``. Requests about one customer are limited per customer (in this process:
each replica keeps its own windows): ``CAA_API_CUSTOMER_REQUESTS_PER_MINUTE`` (10) for
prediction, history and analyze together, and ``CAA_API_ANALYSES_PER_HOUR`` (5) on-demand
analyses. Consent is never rate limited. ``POST .../analyze`` is ``caa analyze``
(:func:`consumers.analysis.on_demand.on_demand`) on one enricher kept for the life of the
process, so its circuit breaker, token bucket and budget ledger hold across requests; when
Bedrock cannot answer it is 503, and the body is the statistical analysis that was stored
instead, with its fallback reason. ``PUT .../consent`` publishes a consent event on the
stream under the customer's partition key (202): the consumer, the single writer of
customer states, applies it in order with the customer's purchases, and the next analysis
after that honours it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from pydantic.json_schema import SkipJsonSchema

from caa import wiring
from caa.api.body_limit import MAX_BODY_BYTES, BodyLimit
from caa.api.ratelimit import SlidingWindow, take
from caa.aws import Aws
from caa.settings import Settings
from consumers.analysis.enricher import Enricher
from consumers.analysis.on_demand import OnDemandFailed, on_demand
from consumers.refit import SIZES
from consumers.registry import SEGMENTS, ModelRegistry
from consumers.stores.analyses import record_from_document
from consumers.stores.customers import CustomerStore
from consumers.stores.dynamo import Dynamo
from consumers.stores.model_snapshots import ModelStore
from consumers.stores.predictions import PredictionStore
from models.analysis import AnalysisRecord
from models.events import ID_MAX_CHARS, ID_PATTERN, ConsentEvent, EventRejected, unique_keys
from models.learn.segmentation import SegmentModel
from models.money import Rates
from models.prediction import Prediction

#: the customer-id format of the wire schema (models.events.Identifier)
CustomerId = Annotated[str, Path(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN,
                                 description="customer id as in the purchase events",
                                 examples=["00001"])]
#: fallback reasons that mean Bedrock (or our budget for it) could not answer: 503
UNAVAILABLE = frozenset({"circuit_open", "throttled", "unavailable", "timeout", "rejected",
                         "invalid_answer", "rate_limited", "budget_exhausted"})


class Error(BaseModel):
    detail: str


class AnalysisAnswer(AnalysisRecord):
    """One analysis as the API shows it (without the feature signature the cache keeps)."""

    signature: SkipJsonSchema[dict[str, Any] | None] = Field(default=None, exclude=True)


class ConsentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    analysis: StrictBool = Field(description="may the customer's features go to the AI model")


async def _keys_once(request: Request) -> None:
    """400 for a body whose JSON names a key twice (``{"analysis": false, "analysis":
    true}``: parsers disagree on which counts; the stream's decoder refuses such events
    as ``duplicate_key``, and a consent statement must not be ambiguous)."""
    try:
        json.loads(await request.body(), object_pairs_hook=unique_keys)
    except EventRejected as exc:
        raise HTTPException(400, f"body: {exc.detail}") from None
    except ValueError:
        pass  # not JSON: the body's own validation says so


class ConsentOut(BaseModel):
    customer_id: str
    analysis: bool
    stated_at: datetime = Field(description="when the statement was made (later statements, "
                                            "from events or this API, replace it)")
    event_id: str = Field(description="the consent event published on the stream")
    sequence_number: str = Field(description="its position on the stream")


class Centre(BaseModel):
    recency_days: float
    frequency: float
    monetary: float = Field(description="average order value, in the segments' currency")


class Segment(BaseModel):
    id: int
    name: str
    customers: int = Field(description="customers in the segment at the last refit")
    learned: int = Field(description="vectors the model learned into this centre")
    centre: Centre


class Segments(BaseModel):
    version: int = Field(description="segment model version (0: no model yet)")
    currency: str = Field(description="ISO 4217 code of the monetary centres (the reporting "
                                      "currency, CAA_REPORTING_CURRENCY)")
    segments: list[Segment]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    dynamodb: str


def _error(description: str) -> dict[str, Any]:
    return {"model": Error, "description": description}


@dataclass
class _Ctx:
    """One app's settings, keys and limits, and what its lifespan opens."""

    settings: Settings
    keys: list[bytes]
    minute: SlidingWindow
    hour: SlidingWindow
    clock: Callable[[], float]
    db: Dynamo | None = None
    kinesis: Any = None
    registry: ModelRegistry | None = None
    enricher: Enricher | None = None


def _ctx(request: Request) -> _Ctx:
    return cast(_Ctx, request.app.state.caa)


def _live(request: Request) -> tuple[_Ctx, Dynamo]:
    c = _ctx(request)
    if c.db is None:
        raise HTTPException(503, "starting or stopping")
    return c, c.db


Live = Annotated[tuple[_Ctx, Dynamo], Depends(_live)]
_HEADER = APIKeyHeader(name="x-api-key", auto_error=False,
                       description="one of the keys in CAA_API_KEYS")


async def _require_key(request: Request,
                       key: Annotated[str | None, Security(_HEADER)] = None) -> None:
    given = hashlib.sha256((key or "").encode()).digest()
    ok = False
    for k in _ctx(request).keys:  # every key compared, in constant time
        ok |= hmac.compare_digest(given, k)
    if not ok:
        raise HTTPException(401, "missing or wrong x-api-key",
                            headers={"WWW-Authenticate": "ApiKey"})


def _limited(analysis: bool) -> Callable[[Request, str], Coroutine[Any, Any, None]]:
    async def check(request: Request, customer_id: CustomerId) -> None:
        c = _ctx(request)
        windows = (c.minute, c.hour) if analysis else (c.minute,)
        wait = take(windows, customer_id, c.clock())
        if wait > 0:
            raise HTTPException(429, f"too many requests for customer {customer_id!r}",
                                headers={"Retry-After": str(math.ceil(wait))})
    return check


_COMMON: dict[int | str, dict[str, Any]] = {
    400: _error("malformed customer id, query or body"),
    401: _error("missing or wrong x-api-key"), 404: _error("unknown customer"),
    429: _error("over the customer's rate limit; see Retry-After")}
_ANALYZE_503 = {"model": AnalysisAnswer, "description": "Bedrock could not answer: the "
                "statistical analysis stored instead, with its fallback_reason"}
router = APIRouter(dependencies=[Depends(_require_key)])
per_minute, per_analysis = Depends(_limited(False)), Depends(_limited(True))


@router.get("/customers/{customer_id}/prediction", response_model=Prediction,
            dependencies=[per_minute], responses=_COMMON)
async def prediction(customer_id: CustomerId, live: Live) -> Prediction:
    """The customer's prediction, with the latest analysis merged in."""
    c, db = live
    stored = await PredictionStore(db, c.settings.table("predictions")).get(customer_id)
    if stored is None:
        raise HTTPException(404, f"no customer {customer_id!r}")
    return Prediction.model_validate(stored)


@router.get("/customers/{customer_id}/history", response_model=list[AnalysisAnswer],
            dependencies=[per_minute], responses=_COMMON)
async def history(customer_id: CustomerId, live: Live,
                  limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[AnalysisAnswer]:
    """The customer's analyses, newest first."""
    c, db = live
    docs = await wiring.analysis_store(c.settings, db).history(customer_id, limit)
    if not docs and not await CustomerStore(db, c.settings.tables.customers).known(customer_id):
        raise HTTPException(404, f"no customer {customer_id!r}")
    out = []
    for doc in docs:
        try:
            out.append(AnalysisAnswer.model_validate(record_from_document(doc).model_dump()))
        except ValidationError:  # an older record schema: not shown
            continue
    return out


@router.post("/customers/{customer_id}/analyze", response_model=AnalysisAnswer,
             dependencies=[per_analysis], responses={**_COMMON, 503: _ANALYZE_503})
async def analyze(customer_id: CustomerId, live: Live) -> Any:
    """Analyse the customer now, bypassing debounce and the analysis cache (consent, circuit
    breaker, budget and token limits still apply)."""
    c, db = live
    assert c.registry is not None
    try:
        rec = await on_demand(CustomerStore(db, c.settings.tables.customers),
                              PredictionStore(db, c.settings.tables.predictions), c.registry,
                              c.enricher, customer_id, lambda: wiring.pseudonym_key(c.settings))
    except OnDemandFailed as exc:
        raise HTTPException(500, "the analysis could not be stored") from exc
    if rec is None:
        raise HTTPException(404, f"no customer {customer_id!r}")
    answer = AnalysisAnswer.model_validate(rec.model_dump())
    if rec.fallback_reason not in UNAVAILABLE:
        return answer
    retry = (_seconds_to_utc_midnight() if rec.fallback_reason == "budget_exhausted"
             else math.ceil(c.settings.breaker_reset_s))
    return JSONResponse(answer.model_dump(mode="json"), status_code=503,
                        headers={"Retry-After": str(retry)})


@router.put("/customers/{customer_id}/consent", response_model=ConsentOut, status_code=202,
            responses={400: _COMMON[400], 401: _COMMON[401], 404: _COMMON[404],
                       413: _error(f"a body over {MAX_BODY_BYTES:,} bytes")},
            dependencies=[Depends(_keys_once)])
async def consent(customer_id: CustomerId, body: ConsentIn, live: Live) -> ConsentOut:
    """Whether the customer's features may be analysed by the AI model: published on the
    stream, it holds from the next analysis after the consumer applied it (on demand or
    after a purchase). Not rate limited."""
    c, db = live
    if not await CustomerStore(db, c.settings.tables.customers).known(customer_id):
        raise HTTPException(404, f"no customer {customer_id!r}")
    event = ConsentEvent(type="consent", event_id=f"consent-{uuid.uuid4().hex}",
                         customer_id=customer_id, occurred_at=datetime.now(UTC),
                         analysis=body.analysis)
    put = await c.kinesis.put_record(StreamName=c.settings.stream_name, Data=event.to_bytes(),
                                     PartitionKey=customer_id)
    return ConsentOut(customer_id=customer_id, analysis=body.analysis,
                      stated_at=event.occurred_at, event_id=event.event_id,
                      sequence_number=put["SequenceNumber"])


@router.get("/segments", response_model=Segments, responses={401: _COMMON[401]})
async def segments(live: Live) -> Segments:
    """Segment centres (in original units) and sizes at the last refit."""
    c, db = live
    store = ModelStore(db, c.settings.table("models"))
    found, sized = await asyncio.gather(store.load(SEGMENTS), store.load(SIZES))
    currency = c.settings.reporting_currency
    if found is None:
        return Segments(version=0, currency=currency, segments=[])
    sizes: dict[str, Any] = sized[1].get("sizes", {}) if sized else {}
    by_id: dict[str, Any] = sized[1].get("sizes_by_id", {}) if sized else {}
    described = SegmentModel.from_dict(found[1]).describe()
    shared = Counter(str(d["name"]) for d in described)
    rows = []
    for d in described:
        name, ident = str(d["name"]), int(str(d["id"]))
        # per centre; sizes kept only by name count for a name one centre has
        n = by_id.get(str(ident), sizes.get(name, 0) if shared[name] == 1 else 0)
        rows.append(Segment(id=ident, name=name, customers=int(n),
                            learned=int(str(d["count"])),
                            centre=Centre.model_validate(d["centre"])))
    return Segments(version=found[0], currency=currency, segments=rows)


health_router = APIRouter()


@health_router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request) -> Any:
    """Is DynamoDB reachable (the customers table described)? No key needed."""
    c = _ctx(request)
    try:
        db = _live(request)[1]
        await asyncio.wait_for(db.client.describe_table(TableName=c.settings.table("customers")),
                               c.settings.api_health_timeout_s)
    except Exception as exc:  # noqa: BLE001 -- any failure is "unavailable", never a 500
        body = Health(status="unavailable", dynamodb=type(exc).__name__)
        return JSONResponse(body.model_dump(), status_code=503)
    return Health(status="ok", dynamodb="ok")


def _seconds_to_utc_midnight() -> int:
    now = datetime.now(UTC)
    return max(1, math.ceil((datetime.combine(now.date() + timedelta(days=1),
                                              datetime.min.time(), UTC) - now).total_seconds()))


def _describe(exc: RequestValidationError) -> str:
    """The first five distinct errors, ``where: what``; a path parameter checked by the route
    and by a dependency (the rate limit's key) is one error, said once."""
    said = dict.fromkeys(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                         for e in exc.errors())
    return "; ".join(list(said)[:5]) or "malformed request"


def create_app(settings: Settings, clock: Callable[[], float] = time.monotonic,
               rates: Rates | None = None) -> FastAPI:
    """The API over ``settings``; ``rates``: the exchange rates the models' view carries
    (read from ``CAA_FX_RATES`` when the app starts, when not given)."""
    s = settings
    ctx = _Ctx(s, [hashlib.sha256(k.get_secret_value().encode()).digest() for k in s.api_keys],
               SlidingWindow(s.api_customer_requests_per_minute, 60.0),
               SlidingWindow(s.api_analyses_per_hour, 3600.0), clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ai = s.analyzer == "bedrock"
        async with Aws(s, quiet=True).clients("dynamodb", "kinesis",
                                              *(["bedrock-runtime"] if ai else [])) as c:
            ctx.db = wiring.dynamo(s, c["dynamodb"])
            ctx.kinesis = c["kinesis"]
            ctx.registry = wiring.registry(s, ctx.db, rates)
            ctx.enricher = (wiring.enricher(s, ctx.db, c["bedrock-runtime"], ctx.registry)
                            if ai else None)
            try:
                yield
            finally:
                if ctx.enricher is not None:
                    await ctx.enricher.flush_counters()
                ctx.db = ctx.registry = ctx.enricher = ctx.kinesis = None

    app = FastAPI(title="customer-ai-analytics", version="1", lifespan=lifespan,
                  description="Predictions, segments and AI analyses of customers.")
    app.state.caa = ctx
    app.add_middleware(BodyLimit)
    app.include_router(router)
    app.include_router(health_router)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _describe(exc)}, status_code=400)

    def openapi() -> dict[str, Any]:
        """FastAPI's spec without its 422: we answer 400 (see ``bad_request``)."""
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version,
                               description=app.description, routes=app.routes)
            for ops in spec["paths"].values():
                for op in ops.values():
                    op["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                spec["components"]["schemas"].pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def spec_json(settings: Settings) -> str:
    """The OpenAPI document as checked in at docs/openapi.json."""
    return json.dumps(create_app(settings).openapi(), indent=2, sort_keys=True) + "\n"
