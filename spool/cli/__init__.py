"""The `spool` command line: thin click commands over the app, producer, worker and status,
grouped by who uses them: `produce` (putting tasks in), `wait` (waiting for results), `look`
(seeing what is in the spool), `operate` (acting on tasks and queues at rest), `run` (the
resident processes and their deployment); `common` holds what they share.

Errors a user can cause are one line on stderr: exit 2 for usage and configuration errors,
1 for an operation that failed (or a failed task), 3 for a timeout.
"""

from __future__ import annotations

import click

from spool import __version__
from spool.cli import look, operate, produce, run, wait
from spool.errors import TaskNotFound


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    envvar=None,
    metavar="DIR",
    help="Spool root (default: SPOOL_ROOT, config, var/spool).",
)
@click.option(
    "--config", metavar="FILE", help="Config file (default: SPOOL_CONFIG, conf/spool.toml)."
)
@click.version_option(__version__, prog_name="spool")
@click.pass_context
def cli(ctx: click.Context, root: str | None, config: str | None) -> None:
    """spool: background tasks in a directory tree, run by resident workers."""
    ctx.ensure_object(dict).update(root=root, config=config)


COMMANDS = [
    *(produce.enqueue, wait.wait, produce.tasks_command),
    *(look.status, look.ls_command, look.show, look.logs, look.batch_command),
    *(look.top, look.metrics),
    *(operate.retry, operate.cancel, operate.purge, operate.pause, operate.resume),
    *(run.worker, run.reload, run.scheduler, run.schedule, run.notify, run.mqtt_intake),
    *(run.web, run.up, run.supervisor_config, run.doctor),
]
for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli(prog_name="spool")


__all__ = ["TaskNotFound", "cli", "main"]
