"""Run the server: `python -m server [--host H] [--port P] [--weights DIR] [--device auto|cpu|cuda]`.

Flags override VOCODER_* environment variables. The weights are loaded before the socket opens, so
missing or corrupt weights, or a bad VOCODER_CONTRACTS_DIR, end the process at once with a one-line message and
exit code 2.
SIGTERM drains: uvicorn stops accepting and finishes in-flight requests, then the lifespan waits for
the queue, both within VOCODER_SHUTDOWN_TIMEOUT_S.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from model.checkpoint import CheckpointError
from model.contract import ContractError

from .app import create_app, grpc_front
from .settings import Settings, load_contracts, load_vocoder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", help="bind address (VOCODER_HOST, default 127.0.0.1)")
    ap.add_argument("--port", type=int, help="port (VOCODER_PORT, default 8000)")
    ap.add_argument("--weights", type=Path, help="weights directory (VOCODER_WEIGHTS; default: weights/base on CUDA, "
                                                    "weights/small on a CPU)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), help="VOCODER_DEVICE, default auto")
    args = ap.parse_args(argv)
    try:
        settings = Settings(**{k: v for k, v in vars(args).items() if v is not None})
    except ValidationError as e:
        print(f"error: bad setting: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.grpc_port is not None:
        try:
            grpc_front()
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        contracts = load_contracts(settings)
    except ContractError as e:
        print(f"error: bad contracts directory (VOCODER_CONTRACTS_DIR): {e}", file=sys.stderr)
        return 2
    try:
        vocoder = load_vocoder(settings)
    except CheckpointError as e:
        print(f"error: cannot load weights: {e}", file=sys.stderr)
        return 2
    app = create_app(settings, vocoder, contracts=contracts)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal: make that a clean exit, not a kill.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                    timeout_graceful_shutdown=settings.shutdown_timeout_s or None)
    except KeyboardInterrupt:
        return 130
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
