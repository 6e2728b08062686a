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

import logging
from typing import Optional

from . import cli
from .config import ExperimentConfig, load_config
from .http_app import create_app
from .layout import experiment_lock
from .predictor import load_ensemble

log = logging.getLogger("pipeline.serve")


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
