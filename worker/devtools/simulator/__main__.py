"""``python -m worker.devtools.simulator``: run the fake API until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from worker.devtools.simulator.server import DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY, Simulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.devtools.simulator",
        description="A fake Tencent Cloud job-query API (every kind of the provider table).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--secret-id", default=DEFAULT_SECRET_ID)
    parser.add_argument("--secret-key", default=DEFAULT_SECRET_KEY)
    parser.add_argument("--qps", type=float, default=None, help="per-action limit (default: none)")
    parser.add_argument(
        "--limiter",
        choices=["bucket", "window"],
        default="bucket",
        help="how --qps is enforced: a token bucket, or a strict sliding 1-second window",
    )
    parser.add_argument(
        "--other-qps",
        type=float,
        default=0.0,
        help="with --limiter window: another service's calls spending the same quota",
    )
    parser.add_argument("--slow", type=float, default=2.0, help="seconds a 'slow' answer takes")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sim = Simulator(
        secret_id=args.secret_id,
        secret_key=args.secret_key,
        host=args.host,
        port=args.port,
        qps=args.qps,
        limiter=args.limiter,
        other_qps=args.other_qps,
        slow_s=args.slow,
    ).start()
    print(sim.url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    print("simulator stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
