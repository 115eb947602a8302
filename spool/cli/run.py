"""Commands that run or deploy the resident processes: `worker`, `scheduler` and `schedule`,
`notify`, `mqtt-intake`, `web`, `up`, `reload`, `supervisor-config`, `doctor`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click

from spool.cli.common import (
    UsageProblem,
    bad,
    queue_option,
    settings_of,
    user_errors,
)
from spool.config import Settings, load_settings
from spool.manifest import Catalog


@click.command()
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    metavar="Q",
    help="Serve Q (repeat; default: every queue).",
)
@click.option("--burst", is_flag=True, help="Run what is due, then exit.")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), help="Log lines as text (default) or JSON."
)
@click.pass_context
def worker(
    ctx: click.Context, queues: tuple[str, ...], burst: bool, log_format: str | None
) -> None:
    """Run a worker: claim tasks, run their handlers, record the outcome."""
    from spool.logs import setup_logging
    from spool.worker import run_worker

    settings = settings_of(ctx)
    for q in queues:
        queue_option(q)
    setup_logging(log_format or settings.log_format, settings.log_level)
    with user_errors():
        code = run_worker(settings, queues, burst)
    ctx.exit(code)


@click.command()
@click.pass_context
def reload(ctx: click.Context) -> None:
    """Make the workers on this host load their task modules again (SIGHUP to each).

    Each worker lets its running task finish on the old code, then imports the modules anew in
    a new handler process and logs what changed (tasks added, removed, options changed). If a
    module does not import, the worker logs one ERROR line and keeps serving the old code.
    Workers on other hosts are skipped: run `spool reload` there. Exit 1 if no worker was
    signalled. (A change to the config's `tasks` list needs a restart.)
    """
    from spool.reload import signal_workers

    settings = settings_of(ctx)
    with user_errors():
        report = signal_workers(settings.root)
    elsewhere = len(report.elsewhere)
    skipped = f"; skipped {elsewhere} on other hosts (run spool reload there)" if elsewhere else ""
    if report.signalled:
        click.echo(
            f"signalled {len(report.signalled)} worker(s): each reloads its task code "
            f"after its running task{skipped}"
        )
    if report.denied:
        raise click.ClickException(
            f"cannot signal {', '.join(report.denied)}: permission denied (run as their user)"
        )
    if not report.signalled:
        raise click.ClickException(f"no worker of {settings.root} runs on this host{skipped}")


@click.command()
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), help="Log lines as text or JSON."
)
@click.pass_context
def scheduler(ctx: click.Context, log_format: str | None) -> None:
    """Enqueue the periodic tasks of the config's [schedule] table (resident)."""
    from spool.services.scheduler import Scheduler, load_entries

    def run(settings: Settings, reload: Callable[[], Settings]) -> int:
        return Scheduler(settings, load_entries(settings), reload).run()

    run_resident(ctx, log_format, run)


@click.command()
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), help="Log lines as text or JSON."
)
@click.pass_context
def notify(ctx: click.Context, log_format: str | None) -> None:
    """Deliver completion events to the sinks of the config's [notify] (resident)."""
    from spool.services.notify import run_notifier

    run_resident(ctx, log_format, run_notifier)


@click.command("mqtt-intake")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), help="Log lines as text or JSON."
)
@click.pass_context
def mqtt_intake(ctx: click.Context, log_format: str | None) -> None:
    """Enqueue the tasks published to the MQTT topic of the config's [mqtt_intake] (resident)."""
    from spool.services.mqtt_intake import run_intake

    run_resident(ctx, log_format, run_intake)


def run_resident(
    ctx: click.Context,
    log_format: str | None,
    runner: Callable[[Settings, Callable[[], Settings]], int],
) -> None:
    """Run a resident process that reloads its settings on request; exit with its code."""
    from spool.logs import setup_logging

    settings = settings_of(ctx)
    obj = ctx.ensure_object(dict)
    setup_logging(log_format or settings.log_format, settings.log_level)

    def reload() -> Settings:
        return load_settings(obj.get("root"), obj.get("config"))

    with user_errors():
        code = runner(settings, reload)
    ctx.exit(code)


@click.group()
def schedule() -> None:
    """Look at the schedule, or run one of its entries now."""


@schedule.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def schedule_ls(ctx: click.Context, as_json: bool) -> None:
    """Each schedule entry with its next run times and last fired slot."""
    from spool.services.scheduler import describe, load_entries

    settings = settings_of(ctx)
    with user_errors():
        rows = describe(settings, load_entries(settings, check_tasks=False), time.time())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no schedule entries (add [schedule.NAME] tables to the config)")
    catalog = Catalog.load(settings.root)
    for row in rows:  # (no queue set: the one its handler declares, as the scheduler routes it)
        queue = row["queue"] or catalog.queue_of(row["task"]) or "default"
        where = f"{row['task']} on {queue}"
        click.echo(f"{row['name']}: {where}, {row['when']}, misfire={row['misfire']}")
        click.echo(f"  last fired: {row['last_fired'] or 'never'}")
        click.echo(f"  next: {', '.join(row['next'])}")


@schedule.command("run")
@click.argument("name")
@click.pass_context
def schedule_run(ctx: click.Context, name: str) -> None:
    """Enqueue entry NAME's task now (outside its slots); print the task id."""
    from spool.services.scheduler import enqueue_now, load_entries

    settings = settings_of(ctx)
    with user_errors():
        entries = load_entries(settings, check_tasks=False)
        if name not in entries:
            known = ", ".join(entries) or "none"
            raise bad("NAME", f"no schedule entry {name!r} (entries: {known})")
        click.echo(enqueue_now(settings, entries[name]))


@click.command()
@click.option("--host", metavar="ADDR", help="Address to bind (default: [web] host, 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Port (default: [web] port, 8750).",
)
@click.pass_context
def web(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the dashboard and the HTTP API (enqueue, retry, cancel, metrics)."""
    from spool.web.server import is_loopback, listen, serve

    settings = settings_of(ctx)
    host = host or settings.web_host
    port = port or settings.web_port
    if not is_loopback(host) and not settings.web_token:
        raise UsageProblem(
            f"--host {host}: refusing a non-loopback address without a token "
            "(set SPOOL_WEB_TOKEN or [web] token)"
        )
    with user_errors():
        sock = listen(host, port)  # before the address is announced: a port in use is one line
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"spool web: http://{shown}:{port}/ (root {settings.root})", err=True)
    if not settings.web_token:
        click.echo(
            "spool web: no token configured: actions and POST /api/tasks are refused "
            "(set SPOOL_WEB_TOKEN or [web] token)",
            err=True,
        )
    with user_errors(), sock:
        code = serve(settings, host, port, sock)
    ctx.exit(code)


@click.command()
@click.option(
    "--workers", type=click.IntRange(min=1), metavar="N", help="Worker processes (default: config)."
)
@click.option("--quiet", is_flag=True, help="No line per task event (claimed, done, failed).")
@click.pass_context
def up(ctx: click.Context, workers: int | None, quiet: bool) -> None:
    """Run supervisord in the foreground with the workers (and scheduler, dashboard); show a
    line per task claimed, done or failed (unless --quiet); Ctrl-C stops all."""
    from spool.deploy.foreground import say
    from spool.deploy.up import run_up
    from spool.inspect.stream import TaskStream

    settings = settings_of(ctx)
    stopping = threading.Event()
    stream = threading.Thread(
        target=TaskStream(settings.root, say).run, args=(stopping,), daemon=True
    )
    try:
        with user_errors():
            code = run_up(settings, workers, started=None if quiet else stream.start)
    finally:
        stopping.set()
        if stream.is_alive():
            stream.join(timeout=10)
    ctx.exit(code)


@click.command("supervisor-config")
@click.option(
    "--workers", type=click.IntRange(min=1), metavar="N", help="Worker processes (default: config)."
)
@click.option("--user", metavar="USER", help="Run the programs as USER.")
@click.pass_context
def supervisor_config(ctx: click.Context, workers: int | None, user: str | None) -> None:
    """Print a Supervisor program block for a system install (/etc/supervisor/conf.d/)."""
    from spool.deploy.supervisor import render_program_block

    settings = settings_of(ctx)
    with user_errors():
        click.echo(render_program_block(settings, workers, user), nl=False)


@click.command()
@click.option("--fs", "probe_fs", is_flag=True, help="Probe the filesystem (a few seconds).")
@click.option(
    "--other-mount",
    metavar="PATH",
    help="The root seen through another mount: are locks and listings shared? (implies --fs)",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object of all results.")
@click.pass_context
def doctor(ctx: click.Context, probe_fs: bool, other_mount: str | None, as_json: bool) -> None:
    """Check the root's filesystem from this host and say which mode is safe (exit 1 if none)."""
    from spool.deploy.doctor import examine, render
    from spool.layout import existing_queues

    settings = settings_of(ctx)
    if other_mount is not None and not Path(other_mount).is_dir():
        raise bad("--other-mount", f"{other_mount} is not a directory")
    if not settings.root.is_dir():
        raise bad("--root", f"{settings.root} is not a directory")
    other = None if other_mount is None else Path(other_mount)
    with user_errors():
        report = examine(
            settings.root,
            settings.config_path,
            existing_queues(settings.root),
            probe=probe_fs or other is not None,
            other=other,
            lease_seconds=settings.lease_seconds,
        )
    click.echo(json.dumps(report, indent=2) if as_json else render(report))
    ctx.exit(0 if report["safe"] else 1)
