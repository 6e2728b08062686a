"""The HTTP face of the predictor: request parsing and checks (one rule for texts with the file
readers), micro-batching of concurrent requests, and the FastAPI app with /predict, /health,
/ready and /info.
"""

import asyncio
import concurrent.futures
import importlib.metadata
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Union


from .artifacts import versions
from .config import config_hash
from .data import text_value
from .errors import first_line
from .predictor import Ensemble, answer, predict
from .views import table_of

log = logging.getLogger("pipeline.serve")


# ----------------------------------------------------------------------------- requests


class BadRequest(Exception):
    """A request the service refuses: HTTP status and one line naming what is wrong."""

    def __init__(self, status: int, message: str, detail: Optional[list] = None):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


def request_model():
    """The pydantic model of a /predict body (built on call: no work at import time)."""
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

    class Row(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        id: Union[StrictStr, StrictInt]
        text_a: StrictStr
        text_b: Optional[StrictStr] = None

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        rows: list[Row] = Field(min_length=1)

    return PredictRequest


def parse_body(body: bytes, schema, ens: Ensemble) -> list:
    """The validated rows of a /predict body: 400 for bad UTF-8 or JSON, 422 naming the field."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(400, f"the body is not valid UTF-8 (byte {e.start})") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadRequest(400, f"the body is not valid JSON ({e})") from None
    from pydantic import ValidationError

    try:
        rows = schema.model_validate(obj).rows
    except ValidationError as e:
        errors = [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in e.errors()]
        where = ".".join(str(x) for x in errors[0]["loc"]) or "body"
        raise BadRequest(422, f"{where}: {errors[0]['msg']}", errors) from None
    for i, row in enumerate(rows):
        check_row(i, row, ens)
    return rows


def check_row(i: int, row, ens: Ensemble) -> None:
    """text_b exactly for pair tasks; texts that are Unicode (JSON's \\ud800 escapes are not) and
    empty only where data.on_empty_text allows it."""
    if ens.is_pair and row.text_b is None:
        raise BadRequest(422, f"rows.{i}.text_b: Field required (a pair task)")
    if not ens.is_pair and row.text_b is not None:
        raise BadRequest(422, f"rows.{i}.text_b: not allowed (a single-text task)")
    for key in ("id", "text_a", "text_b"):
        value = getattr(row, key)
        if not isinstance(value, str):
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(422, f"rows.{i}.{key}: not valid Unicode (an unpaired surrogate escape)") from None
        if key != "id" and ens.cfg.data.on_empty_text == "error" and text_value(value) == "":
            raise BadRequest(422, f"rows.{i}.{key}: empty text (data.on_empty_text=error)")


async def read_limited(request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is longer than `limit` bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BadRequest(413, f"the body has {length} bytes, more than serve.max_body_bytes={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request, DRAIN_BYTES)
            raise BadRequest(413, f"the body is longer than serve.max_body_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


# A client still sending when the answer goes out sees its connection reset instead of the 413:
# the rest of a too long (chunked) body is read and dropped, up to this much, before answering.
DRAIN_BYTES = 256 << 20


async def _drain(request, most: int) -> None:
    """Read and drop what is left of the body, at most `most` bytes (then the answer goes anyway)."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > most:
            return


# ----------------------------------------------------------------------------- micro-batching


@dataclass
class Pending:
    """One waiting request: its rows, whether it asked for the members' outputs, its answer."""
    rows: list
    members: bool
    future: asyncio.Future


class Batcher:
    """Collects concurrent requests into batches of at most max_batch rows (a request is never
    split; a larger one runs alone), waiting at most max_wait_s after the first, and runs each
    batch in one worker thread. stats: batches, rows, requests and the batch-size histogram."""

    def __init__(self, run: Callable[[list[Pending]], list], max_batch: int, max_wait_s: float):
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.arrived = asyncio.Event()
        self.carried: Optional[Pending] = None
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self.stats = {"batches": 0, "requests": 0, "rows": 0, "max_batch_rows": 0, "batch_rows": Counter()}

    async def submit(self, rows: list, members: bool = False) -> list:
        item = Pending(rows, members, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(item)
        self.arrived.set()
        return await item.future

    async def serve_forever(self) -> None:
        while True:
            batch = await self.collect()
            await self.execute(batch)

    async def collect(self) -> list[Pending]:
        first = self.carried or await self.queue.get()
        self.carried = None
        batch, n = [first], len(first.rows)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while n < self.max_batch:
            if self.queue.empty() and not await self.wait_until(deadline):
                break
            item = self.queue.get_nowait()
            if n + len(item.rows) > self.max_batch:
                self.carried = item
                break
            batch.append(item)
            n += len(item.rows)
        return batch

    async def wait_until(self, deadline: float) -> bool:
        """True when a request arrived before `deadline`."""
        self.arrived.clear()
        if not self.queue.empty():
            return True
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self.arrived.wait(), remaining)
        except asyncio.TimeoutError:
            return not self.queue.empty()
        return not self.queue.empty()

    async def execute(self, batch: list[Pending]) -> None:
        rows = sum(len(p.rows) for p in batch)
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["rows"] += rows
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], rows)
        self.stats["batch_rows"][rows] += 1
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.pool, self.run, batch)
        except Exception as e:  # noqa: BLE001 - handed to each waiting request, which answers it
            results = [e] * len(batch)
        for p, r in zip(batch, results):
            if not p.future.done():
                p.future.set_exception(r) if isinstance(r, Exception) else p.future.set_result(r)


def run_batch(ens: Ensemble) -> Callable[[list[Pending]], list]:
    """The worker's function: a batch of requests -> per request its answer (or the exception its
    rows raised: a batch that fails is retried one request at a time, so one cannot fail others)."""

    def run(requests: list[Pending]) -> list:
        try:
            return _answers(ens, requests)
        except Exception:  # noqa: BLE001 - retried below, request by request
            if len(requests) == 1:
                raise
        out = []
        for req in requests:
            try:
                out += _answers(ens, [req])
            except Exception as e:  # noqa: BLE001 - this request's own failure
                out.append(e)
        return out

    return run


def _answers(ens: Ensemble, requests: list[Pending]) -> list[list[dict]]:
    """One model pass over every row of the batch, split back per request."""
    rows = [r for req in requests for r in req.rows]
    table = table_of("request", [str(r.id) for r in rows], [text_value(r.text_a) for r in rows],
                     [text_value(r.text_b) for r in rows] if ens.is_pair else None, ens.views,
                     segmented=ens.segmented)
    combined, mats = predict(ens, table)
    out, start = [], 0
    for req in requests:
        end = start + len(req.rows)
        out.append(answer(ens, [r.id for r in req.rows], combined[start:end], [m[start:end] for m in mats],
                          req.members))
        start = end
    return out


# ----------------------------------------------------------------------------- the app


def library_versions() -> dict[str, str]:
    out = versions()
    for pkg in ("fastapi", "uvicorn", "starlette", "pydantic"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def info(ens: Ensemble, batcher: Optional[Batcher]) -> dict:
    stats = dict(batcher.stats) if batcher else {}
    if stats:
        stats["batch_rows"] = {str(k): v for k, v in sorted(stats["batch_rows"].items())}
    return {"experiment": ens.cfg.experiment, "task": ens.task.name, "method": ens.method,
            "estimator": type(ens.combiner).__name__, "threshold": ens.threshold, "classes": ens.classes,
            "is_pair": ens.is_pair,
            "members": [{"name": m.name, "kind": m.kind, "folds": len(m.folds), "models_per_fold": [len(f) for f in m.folds]}
                        for m in ens.members],
            "config_sha256": config_hash(ens.cfg), "ensemble": ens.summary.get("made_from"),
            "serve": {k: getattr(ens.cfg.serve, k) for k in ("max_batch", "max_wait_ms", "max_body_bytes")},
            "batching": stats, "versions": library_versions()}


def create_app(ens: Ensemble):
    """The FastAPI app serving `ens`; the batcher starts with the app's event loop."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    schema, state = request_model(), {}
    s = ens.cfg.serve

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(run_batch(ens), s.max_batch, s.max_wait_ms / 1000.0)
        task = asyncio.create_task(state["batcher"].serve_forever())
        state["ready"] = True
        yield
        state["ready"] = False
        task.cancel()
        state["batcher"].pool.shutdown(wait=False)

    app = FastAPI(title=f"pipeline.serve {ens.cfg.experiment}", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest):
        body = {"error": e.message, **({"detail": e.detail} if e.detail else {})}
        return JSONResponse(body, status_code=e.status)

    @app.exception_handler(Exception)
    async def failed(request: Request, e: Exception):
        log.exception("prediction failed")
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {first_line(e) if str(e) else ''}"},
                            status_code=500)

    @app.get("/health")
    async def health():
        return {"alive": True}

    @app.get("/ready")
    async def ready():
        ok = bool(state.get("ready"))
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/info")
    async def get_info():
        return info(ens, state.get("batcher"))

    @app.post("/predict")
    async def post_predict(request: Request, members: bool = False):
        rows = parse_body(await read_limited(request, s.max_body_bytes), schema, ens)
        start = time.perf_counter()
        out = await state["batcher"].submit(rows, members)
        return {"rows": out, "method": ens.method, "seconds": round(time.perf_counter() - start, 6)}

    return app
