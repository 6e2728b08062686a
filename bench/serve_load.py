"""Load test of the served ensemble: throughput and latency of `python -m pipeline.serve` under
concurrent clients, with and without micro-batching, against the offline prediction rate.

    python -m bench.serve_load [--quick] [--config configs/default.yaml] [key=value ...]
                               [--duration S] [--clients N] [--rows-per-request R] [--out DIR]

Needs a finished ensemble of the config (default: the demo, `bash run_all.sh`); trains nothing.
1. Offline: the same loaded ensemble (pipeline.serve.load_ensemble) predicts every test row in
   batches of serve.max_batch, in this process: rows/s.
2. Served, twice: the server started on a free port (as configured, then with serve.max_batch=1,
   i.e. no micro-batching); N concurrent clients each send requests of R test rows (cycling
   through the test file) for a fixed time. Reported: rows/s, p50/p95/p99 request latency,
   errors (non-200 or failed requests), rows lost (sent but not answered with their ids), rows
   off (probabilities further than 1e-2 from the ensemble's test.npy) and the server's batch
   statistics from /info.
--quick: 5 s per mode, 4 clients. Writes <out>/serve_load.json and .md (default bench/results).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OFF_TOLERANCE = 1e-2   # docs/serving.md's bound for bf16 transformer members; classical ones agree to 1e-5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config (passed to the server too)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--duration", type=float, help="seconds per mode (default 30, --quick 5)")
    p.add_argument("--clients", type=int, help="concurrent clients (default 16, --quick 4)")
    p.add_argument("--rows-per-request", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_intermixed_args(argv)
    args.duration = args.duration or (5.0 if args.quick else 30.0)
    args.clients = args.clients or (4 if args.quick else 16)
    return args


# ----------------------------------------------------------------------------- offline


def offline(cfg) -> tuple[dict, list[dict], dict[str, np.ndarray]]:
    """(offline rate, the test rows as requests, {id: expected (C,) row of the ensemble's test.npy})."""
    from pipeline import predictor as serve
    from pipeline.combination import checked_ensemble_file
    from pipeline.layout import ensembles_dir
    from pipeline.prepared import load_prepared
    from pipeline.views import table_of

    ens = serve.load_ensemble(cfg)
    _, test, _ = load_prepared(cfg)
    a, b = test.views["raw"]
    rows = [{"id": i, "text_a": x, **({"text_b": b[j]} if b is not None else {})} for j, (i, x) in enumerate(zip(test.ids, a))]
    start, n = time.perf_counter(), len(rows)
    step = cfg.serve.max_batch
    for s in range(0, n, step):
        serve.predict(ens, table_of("offline", test.ids[s:s + step], a[s:s + step],
                                          None if b is None else b[s:s + step], ens.views, segmented=ens.segmented))
    seconds = time.perf_counter() - start
    expected = np.load(checked_ensemble_file(ensembles_dir(cfg, cfg.ensemble.round), ens.summary,
                                             f"{ens.method}/test.npy"))
    return ({"rows": n, "seconds": round(seconds, 3), "rows_per_s": round(n / seconds, 1), "batch": step,
             "method": ens.method, "members": [m.name for m in ens.members]},
            rows, dict(zip(test.ids, expected)))


# ----------------------------------------------------------------------------- served


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config: str, overrides: list[str], port: int) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "pipeline.serve", config, *overrides, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited: {proc.stderr.read().strip()[-500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("error: the server was not ready in 300 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def client(http, url: str, rows: list[dict], offset: int, per_request: int, until: float,
                 expected: dict, tally: dict) -> None:
    """Send requests of `per_request` rows until `until`; tally latencies, errors, lost and off rows."""
    i = offset
    while time.perf_counter() < until:
        batch = [rows[(i + k) % len(rows)] for k in range(per_request)]
        i += per_request
        start = time.perf_counter()
        tally["sent"] += len(batch)
        try:
            r = await http.post(url, json={"rows": batch})
        except Exception:  # noqa: BLE001 - a failed request is what a load test counts
            tally["errors"] += 1
            continue
        tally["latency"].append(time.perf_counter() - start)
        if r.status_code != 200:
            tally["errors"] += 1
            continue
        check_answer(batch, r.json()["rows"], expected, tally)


def check_answer(batch: list[dict], answered: list[dict], expected: dict, tally: dict) -> None:
    """Count the answered rows and those whose outputs are off the ensemble's test.npy."""
    for row, got in zip(batch, answered):
        if got.get("id") != row["id"]:
            continue
        tally["answered"] += 1
        outputs = got.get("probabilities")
        values = list(outputs.values()) if outputs is not None else [got.get("value")]
        if np.abs(np.asarray(values, dtype=np.float64) - expected[row["id"]]).max() > OFF_TOLERANCE:
            tally["off"] += 1


async def load(port: int, rows: list[dict], expected: dict, clients: int, per_request: int, duration: float) -> dict:
    import httpx

    tally = {"sent": 0, "answered": 0, "errors": 0, "off": 0, "latency": []}
    url = f"http://127.0.0.1:{port}/predict"
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        start = time.perf_counter()
        until = start + duration
        await asyncio.gather(*(client(http, url, rows, c * 97, per_request, until, expected, tally)
                               for c in range(clients)))
        seconds = time.perf_counter() - start
    lat = np.array(tally["latency"]) * 1000
    return {"seconds": round(seconds, 2), "requests": len(lat), "rows_sent": tally["sent"],
            "rows_answered": tally["answered"], "rows_per_s": round(tally["answered"] / seconds, 1),
            "errors": tally["errors"], "rows_lost": tally["sent"] - tally["answered"], "rows_off": tally["off"],
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 2) if len(lat) else None for q in (50, 95, 99)}}


def served(args, overrides: list[str], rows: list[dict], expected: dict) -> dict:
    import httpx

    port = free_port()
    proc = start_server(args.config, args.overrides + overrides, port)
    try:
        result = asyncio.run(load(port, rows, expected, args.clients, args.rows_per_request, args.duration))
        info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=30).json()
    finally:
        stop(proc)
    return {**result, "server": {"serve": info["serve"], "batching": info["batching"]}}


# ----------------------------------------------------------------------------- report


def markdown(out: dict) -> str:
    o = out["offline"]
    lines = [f"# Serving load test ({out['experiment']}, {o['method']} of {', '.join(o['members'])})", "",
             f"{out['clients']} concurrent clients, {out['rows_per_request']} row(s) per request, "
             f"{out['duration_s']} s per mode; {out['machine']}.", "",
             f"Offline (in-process, batches of {o['batch']}): {o['rows_per_s']} rows/s over {o['rows']} test rows.", "",
             "| mode | rows/s | p50 ms | p95 ms | p99 ms | requests | errors | rows lost | rows off | batches | max batch rows |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in out["served"].items():
        b = r["server"]["batching"]
        lines.append(f"| {name} | {r['rows_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['requests']} "
                     f"| {r['errors']} | {r['rows_lost']} | {r['rows_off']} | {b.get('batches')} | {b.get('max_batch_rows')} |")
    lines += ["", f"rows off: served outputs further than {OFF_TOLERANCE} from the ensemble's test.npy.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)
    rate, rows, expected = offline(cfg)
    print(f"offline: {rate['rows_per_s']} rows/s", flush=True)
    modes = {f"micro-batching (max_batch={cfg.serve.max_batch}, max_wait_ms={cfg.serve.max_wait_ms})": [],
             "no batching (max_batch=1)": ["serve.max_batch=1"]}
    results = {}
    for name, extra in modes.items():
        results[name] = served(args, extra, rows, expected)
        print(f"{name}: {results[name]['rows_per_s']} rows/s, p50 {results[name]['p50_ms']} ms, "
              f"errors {results[name]['errors']}, lost {results[name]['rows_lost']}", flush=True)
    out = {"experiment": cfg.experiment, "config": args.config, "overrides": args.overrides, "quick": args.quick,
           "clients": args.clients, "rows_per_request": args.rows_per_request, "duration_s": args.duration,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
           "offline": rate, "served": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(out, indent=2) + "\n")
    (args.out / "serve_load.md").write_text(markdown(out))
    print(f"wrote {args.out / 'serve_load.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
