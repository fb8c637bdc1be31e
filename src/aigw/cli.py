"""``aigw serve`` / ``aigw migrate`` / ``aigw usage``: parse flags and AIGW_CONFIG, then hand over to app/store.
No logic here beyond formatting ``aigw usage``'s table."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from datetime import date
from decimal import Decimal
from pathlib import Path
from types import FrameType

from aigw import __version__
from aigw.config import ConfigError, Settings, load_settings


def _config_path(arg: str | None) -> str:
    path = arg or os.environ.get("AIGW_CONFIG")
    if not path:
        print("aigw: no config given: pass --config FILE or set AIGW_CONFIG", file=sys.stderr)  # noqa: T201
        raise SystemExit(2)
    return str(Path(path).resolve())


def _settings(path: str) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"aigw: {exc}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None


def _migrate(settings: Settings) -> None:
    from aigw.store.migrate import upgrade_to_head

    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line of our own says it is done

    upgrade_to_head(settings.database_url)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(_config_path(args.config))
    _migrate(settings)
    print("aigw: database migrated to the latest revision")  # noqa: T201
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from aigw.api.server import HeadWithBodyProtocol

    path = _config_path(args.config)
    settings = _settings(path)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Never below WARNING, even with log_level: debug: botocore's DEBUG lines include the canonical request it
    # signs (session token included), and aiohttp's/asyncpg's can include URLs and query parameters.
    for noisy in ("botocore", "aiohttp", "asyncpg", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if settings.database_url.startswith("sqlite"):
        _migrate(settings)  # the embedded default needs no separate step; PostgreSQL is migrated explicitly
    common = {
        "host": args.host,
        "port": args.port,
        "loop": "uvloop",
        "http": HeadWithBodyProtocol,  # uvicorn's httptools protocol, a response's head sent with its body
        "access_log": False,  # per-request logs are structured and cheap (issue 7), not uvicorn's
        "log_level": settings.log_level,
        # Drain: uvicorn stops accepting at once, waits for in-flight requests and streams up to this, then runs the
        # lifespan shutdown, which flushes the usage queue.
        "timeout_graceful_shutdown": settings.shutdown_drain_s,
    }
    if args.workers > 1 or args.reload:
        os.environ["AIGW_CONFIG"] = path  # each worker process rebuilds the app from it
        if args.workers > 1:  # one Prometheus registry across workers (files), set before any worker imports it
            prom_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="aigw-prom-"))
            from aigw.telemetry.metrics import prepare_multiproc_dir  # imports prometheus_client: after the env

            prepare_multiproc_dir(prom_dir)
        uvicorn.run("aigw.app:app_from_env", factory=True, workers=args.workers, reload=args.reload, **common)
    else:
        from aigw.app import create_app

        # uvicorn re-raises the signal it shut down on once its own handlers are removed; a graceful stop on
        # SIGTERM (what process managers send) is a clean exit, so let that re-raised SIGTERM end with status 0.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        from aigw.telemetry.logs import configure_logging

        configure_logging(settings.log_level)  # structured JSON lines, written off the event loop
        uvicorn.run(create_app(settings, config_path=path, server_process=True), **common)
    return 0


def _day(value: str) -> date:
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date as YYYY-MM-DD: {value!r}") from None


def cmd_usage(args: argparse.Namespace) -> int:
    """Per-tenant totals over UTC days [--from, --to] (inclusive), from the daily rollups."""
    import asyncio

    from aigw.store.db import make_engine
    from aigw.store.usage import TenantUsage, UsageRepo

    settings = _settings(_config_path(args.config))
    if args.start is not None and args.end is not None and args.start > args.end:
        print(f"aigw: --from {args.start} is after --to {args.end}", file=sys.stderr)  # noqa: T201
        return 2

    async def fetch() -> list[TenantUsage]:
        engine = make_engine(settings.database_url)
        try:
            return await UsageRepo(engine).tenants_report(start=args.start, end=args.end, tenant_id=args.tenant)
        finally:
            await engine.dispose()

    try:
        rows = asyncio.run(fetch())
    except Exception as exc:  # unreachable or unmigrated database: say so plainly, no traceback
        print(f"aigw: cannot read usage from the database ({type(exc).__name__}); run `aigw migrate`?", file=sys.stderr)  # noqa: T201
        return 1
    period = f"{args.start or 'beginning'} .. {args.end or 'now'} (UTC days, inclusive)"
    table: list[tuple[str, ...]] = [("TENANT", "NAME", "REQUESTS", "PROMPT", "COMPLETION", "COST_USD")]
    table += [
        (r.tenant_id, r.name or "-", str(r.requests), str(r.prompt_tokens), str(r.completion_tokens), f"{r.cost_usd:f}")
        for r in rows
    ]
    total = (sum(r.requests for r in rows), sum(r.prompt_tokens for r in rows), sum(r.completion_tokens for r in rows))
    cost = sum((r.cost_usd for r in rows), Decimal("0E-9"))
    table.append(("TOTAL", "", *(str(n) for n in total), f"{cost:f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print(f"usage {period}")  # noqa: T201
    for row in table:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())  # noqa: T201
    return 0


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aigw", description="aigw: an OpenAI-compatible AI gateway")
    parser.add_argument("--version", action="version", version=f"aigw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $AIGW_CONFIG)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    serve.set_defaults(func=cmd_serve)
    migrate = sub.add_parser("migrate", help="apply database migrations to database_url")
    migrate.add_argument("--config", help="config file (default: $AIGW_CONFIG)")
    migrate.set_defaults(func=cmd_migrate)
    usage = sub.add_parser("usage", help="print per-tenant usage for a period (from the daily rollups)")
    usage.add_argument("--config", help="config file (default: $AIGW_CONFIG)")
    usage.add_argument("--from", dest="start", type=_day, help="first UTC day, YYYY-MM-DD (default: all time)")
    usage.add_argument("--to", dest="end", type=_day, help="last UTC day, inclusive, YYYY-MM-DD (default: today)")
    usage.add_argument("--tenant", help="only this tenant id")
    usage.set_defaults(func=cmd_usage)
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc
