"""Serve the submitted ensemble over HTTP, predicting what the pipeline predicted.

    python -m pipeline.serve [config.yaml] [key=value ...] [--host 127.0.0.1] [--port 8000]

Loads every fold model of every member of the submitted method (`summary.json`'s `submitted`) and
its combiner (`<method>/combiner.json`), after the checks the ensemble stage makes (manifests
against each other, folds.csv and the config) and the report's (the ensemble was made from these
matrices with these settings; every fold file has its recorded sha256); any disagreement is one
line `error: ...` and exit 2, before anything listens. Prediction repeats the pipeline's: the
request texts' views (pipeline/views.py, as preprocess built them), each member's fold models
(the mean over a fold's seeds, then over folds), the combiner, the decision at the tuned
threshold. Concurrent requests are micro-batched (serve.max_batch rows, serve.max_wait_ms).

    POST /predict[?members=true]  {"rows": [{"id": .., "text_a": .., "text_b": ..}]}
    GET /health, /ready, /info
"""

import asyncio
import concurrent.futures
import importlib.metadata
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

from . import cli
from .artifacts import Matrices, fold_model_dirs, folds_intact, versions
from .combiners import estimators
from .config import ExperimentConfig, config_hash, config_source, load_config, model_params
from .data import Table, whole
from .ensembling import COMBINER_FORMAT
from .errors import PipelineError
from .io import read_json
from .models import registry
from .store import checked_ensemble_file, checked_models, checked_summary, experiment_lock, with_pretrained
from .tasks import Task, get as get_task
from .views import make_views, table_of

log = logging.getLogger("pipeline.serve")


# ----------------------------------------------------------------------------- the loaded ensemble


@dataclass
class Member:
    """One model of the ensemble: folds[k] holds fold k's fitted models, one per seed."""
    name: str
    kind: str
    folds: list[list[Any]]


@dataclass
class Ensemble:
    """Everything a prediction needs, loaded and checked once."""
    cfg: ExperimentConfig
    task: Task
    method: str
    classes: list[str]
    members: list[Member]
    combiner: Any                       # an estimator of pipeline/combiners.py, rebuilt from its state
    threshold: Any                      # the tuned threshold / per-label thresholds / cut-points, or None
    views: Callable                     # texts -> {view: texts}, as preprocess made them
    is_pair: bool
    segmented: bool
    label_col: str
    summary: dict
    shared: dict = field(default_factory=dict)   # loaded sentence encoders, kept across batches


def load_ensemble(cfg: ExperimentConfig) -> Ensemble:
    """The submitted ensemble of the config's round, every check passed (PipelineError otherwise)."""
    models, _, _, meta, _ = checked_models(cfg, cfg.ensemble.models, cfg.ensemble.round)
    out, summary = checked_summary(cfg, models)
    method = summary.get("submitted")
    task = get_task(cfg.task)
    combiner, threshold = read_combiner(out, summary, method, models)
    _, seg, views = make_views(meta["lemmatizer"], meta["segmenter"], [])
    ens = Ensemble(cfg, task, method, meta["classes"], [load_member(cfg, m, task) for m in models], combiner,
                   threshold, views, bool(meta["is_pair"]), seg != "none", label_column(cfg), summary)
    predict(ens, warmup_table(ens))  # loads the sentence encoders; a model that cannot predict fails here
    return ens


def label_column(cfg: ExperimentConfig) -> str:
    """The submission's label column name (classification, regression)."""
    return cfg.data.label if isinstance(cfg.data.label, str) else "label"


def read_combiner(out, summary: dict, method: Any, models: list[Matrices]) -> tuple[Any, Any]:
    """(estimator rebuilt from <method>/combiner.json, tuned threshold), the file checked against
    its sha256 in summary.json and its members against the ensemble's models."""
    if not isinstance(method, str):
        raise PipelineError(f"{out / 'summary.json'} names no submitted method: run `python -m pipeline.ensemble` again")
    path = checked_ensemble_file(out, summary, f"{method}/combiner.json")
    record = read_json(path)
    names = [m.name for m in models]
    if not isinstance(record, dict) or record.get("format") != COMBINER_FORMAT or record.get("models") != names:
        raise PipelineError(f"{path} is not the combiner of {names}: run `python -m pipeline.ensemble` again")
    cls = estimators().get(record.get("estimator"))
    if cls is None:
        raise PipelineError(f"{path}: unknown estimator {record.get('estimator')!r} "
                            f"(known: {', '.join(sorted(estimators()))})")
    return cls.from_state(record["state"]), record.get("threshold")


def load_member(cfg: ExperimentConfig, m: Matrices, task: Task) -> Member:
    """Every fold model of one member, after checking that each fold's files are the ones its
    matrices were assembled from."""
    if not folds_intact(m.path, m.manifest, m.manifest["config_sha256"]):
        raise PipelineError(f"model {m.name!r} ({m.path}): its fold files are missing or changed since its "
                            "matrices were made: retrain it")
    mc = cfg.model(m.name)
    kind, n = registry.kind(mc.kind), len(m.manifest["classes"])
    params = with_pretrained(cfg, model_params(mc))   # pretrained:<name> -> the pretrain stage's folder
    folds = []
    for k in range(m.manifest["n_splits"]):
        try:
            folds.append([kind.load(d, params, n, mc.view, task) for d in fold_model_dirs(m.path, k)])
        except PipelineError as e:  # e.g. saved before serving existed: the fingerprint alone does not retrain it
            raise PipelineError(f"model {m.name!r} fold {k} cannot be served ({e}): retrain it with `python -m "
                                f"pipeline.train {config_source(cfg)} --models {m.name} --force`") from None
    return Member(m.name, mc.kind, folds)


def warmup_table(ens: Ensemble) -> Table:
    texts = ["warm up"]
    return table_of("warmup", ["warmup"], texts, texts if ens.is_pair else None, ens.views, segmented=ens.segmented)


# ----------------------------------------------------------------------------- prediction


def batch_cache(ens: Ensemble) -> dict:
    """A cache for one batch: the loaded encoders only. Entries keyed by a table (token ids, pair
    features) must not outlive the batch: a later table may reuse a freed table's id."""
    return {k: v for k, v in ens.shared.items() if k[0] == "encoder"}


def member_prediction(member: Member, table: Table, cache: dict) -> np.ndarray:
    """(n, C) float32: per fold the mean over its seeds, then the mean over folds, in float32 as
    the driver assembles test.npy."""
    per_fold = []
    for models in member.folds:
        seeds = []
        for model in models:
            model.use_cache(cache)
            seeds.append(model.predict_proba(whole(table)).astype(np.float32))
        per_fold.append(np.mean(np.stack(seeds), axis=0).astype(np.float32))
    return np.stack(per_fold).mean(axis=0).astype(np.float32)


def predict(ens: Ensemble, table: Table) -> tuple[np.ndarray, list[np.ndarray]]:
    """(combined (n, C) float64 as the ensemble stage computes its test matrix, [member (n, C) float32])."""
    cache = batch_cache(ens)
    mats = [member_prediction(m, table, cache) for m in ens.members]
    ens.shared.update({k: v for k, v in cache.items() if k[0] == "encoder"})
    return np.asarray(ens.combiner.predict_proba(mats), dtype=np.float64), mats


def answer(ens: Ensemble, ids: list, combined: np.ndarray, mats: list[np.ndarray], members: bool) -> list[dict]:
    """One dict per row: id, label (as the submission writes it), probabilities or value (as test.npy
    holds it, float32), and with `members` each member's outputs."""
    decisions = ens.task.decide(combined, ens.threshold)
    columns = ens.task.submission(decisions, ens.classes, ens.label_col)
    labels = [{c: columns[c][i] for c in columns} for i in range(len(ids))]
    if len(columns) == 1:
        labels = [next(iter(row.values())) for row in labels]
    outputs = ens.task.served_outputs(combined.astype(np.float32), ens.classes)
    rows = [{"id": i, "label": lab, **out} for i, lab, out in zip(ids, labels, outputs)]
    if members:
        per_member = {m.name: ens.task.served_outputs(p, ens.classes) for m, p in zip(ens.members, mats)}
        for j, row in enumerate(rows):
            row["members"] = {name: outs[j] for name, outs in per_member.items()}
    return rows


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
        if key != "id" and ens.cfg.data.on_empty_text == "error" and not value.strip():
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
            raise BadRequest(413, f"the body is longer than serve.max_body_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


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
    table = table_of("request", [str(r.id) for r in rows], [r.text_a for r in rows],
                     [r.text_b for r in rows] if ens.is_pair else None, ens.views, segmented=ens.segmented)
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
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"},
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


# ----------------------------------------------------------------------------- script


def serve_config(argv: Optional[list[str]]) -> ExperimentConfig:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--host", help="overrides serve.host")
    p.add_argument("--port", help="overrides serve.port")
    args = p.parse_intermixed_args(argv)
    cli.split_config_arg(args)
    extra = [f"serve.{k}={getattr(args, k)}" for k in ("host", "port") if getattr(args, k) is not None]
    return load_config(args.config, args.overrides + extra)


def main(argv: Optional[list[str]] = None) -> int:
    import uvicorn

    cfg = serve_config(argv)
    with experiment_lock(cfg):  # held while loading only: serving reads nothing after
        ens = load_ensemble(cfg)
    log.info("serving %s: %s of %s on http://%s:%d", cfg.experiment, ens.method,
             ", ".join(m.name for m in ens.members), cfg.serve.host, cfg.serve.port)
    uvicorn.run(create_app(ens), host=cfg.serve.host, port=cfg.serve.port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    cli.run(main)
