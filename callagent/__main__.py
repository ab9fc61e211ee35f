"""``python -m callagent serve [--host --port ...]``: parse the command line, run the app."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .logs import configure_logging
from .settings import UPSTREAMS, ConfigError, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="callagent", description="Gateway between telephone calls and LLM workflows.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP/SSE/WebSocket server")
    serve.add_argument("--host", help="listen address (CALLAGENT_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (CALLAGENT_PORT, default 8000)")
    serve.add_argument("--upstream", choices=UPSTREAMS, help="CALLAGENT_UPSTREAM")
    serve.add_argument("--store", help="CALLAGENT_STORE, e.g. sqlite:///var/callagent.db, redis://127.0.0.1:6379/0")
    serve.add_argument("--env-file", default=".env", help="optional KEY=value file read before the environment")
    serve.add_argument("--log-format", choices=["console", "json", "auto"], help="CALLAGENT_LOG_FORMAT")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env(
            env_file=args.env_file,
            host=args.host,
            port=args.port,
            upstream=args.upstream,
            store=args.store,
            log_format=args.log_format,
        )
    except ConfigError as e:
        print(f"callagent: configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)

    from .web.app import create_app
    from .web.server import run

    try:
        app = create_app(settings)
    except ConfigError as e:
        print(f"callagent: configuration error: {e}", file=sys.stderr)
        return 2
    # web.run_app, with the server that answers unparsable requests in the JSON error shape;
    # a gateway that hangs up cancels its turn at once (handler cancellation).
    run(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        loop=_event_loop(settings.uvloop),
    )
    return 0


def _event_loop(prefer_uvloop: bool) -> asyncio.AbstractEventLoop:
    """uvloop when wanted and installed (the ``fast`` extra), else the standard loop."""
    if prefer_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


if __name__ == "__main__":
    sys.exit(main())
