"""Commands that act on tasks and queues at rest: `retry`, `cancel`, `purge`, `pause`,
`resume` (each says what it did; `--dry-run` where a mistake would cost tasks)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from spool.cli.common import (
    UsageProblem,
    apply_each,
    duration_option,
    queue_option,
    settings_of,
    user_errors,
)
from spool.layout import DEFAULT_QUEUE, existing_queues, queue_dirs


@click.command()
@click.argument("task_ids", nargs=-1, metavar="ID...")
@click.option("--all-failed", is_flag=True, help="Retry every failed task (of --queue/--task).")
@click.option("--queue", "-q", metavar="Q", help="With --all-failed: only this queue.")
@click.option("--task", "task_name", metavar="NAME", help="With --all-failed: only this task.")
@click.option("--dry-run", is_flag=True, help="Say what would be retried; change nothing.")
@click.pass_context
def retry(
    ctx: click.Context,
    task_ids: tuple[str, ...],
    all_failed: bool,
    queue: str | None,
    task_name: str | None,
    dry_run: bool,
) -> None:
    """Move failed tasks back to incoming/ with attempts reset (their history is kept)."""
    from spool.manage import failed_ids
    from spool.manage import retry as retry_task

    settings = settings_of(ctx)
    if bool(task_ids) == all_failed:
        raise UsageProblem("give task IDs or --all-failed (not both)")
    if all_failed:
        targets = [
            task_id for _, task_id in failed_ids(settings.root, queue_option(queue), task_name)
        ]
    else:
        targets = list(task_ids)
    if dry_run:
        for task_id in targets:
            click.echo(f"would retry {task_id}")
        click.echo(f"would retry {len(targets)} task(s)", err=True)
        return
    failures = apply_each(targets, lambda task_id: retry_task(settings.root, task_id), "retried")
    if len(targets) > failures or not targets:  # (when none was retried, the errors say it all)
        click.echo(f"retried {len(targets) - failures} task(s)", err=True)
    ctx.exit(1 if failures else 0)


@click.command()
@click.argument("task_ids", nargs=-1, required=True, metavar="ID...")
@click.pass_context
def cancel(ctx: click.Context, task_ids: tuple[str, ...]) -> None:
    """Cancel tasks (kept in failed/ as Cancelled, counted as cancelled); a running one is
    stopped by its worker (its handler's whole process group) within a second."""
    from spool.events import outbox_for
    from spool.manage import cancel as cancel_task

    settings = settings_of(ctx)
    outbox = outbox_for(settings)
    failures = apply_each(
        task_ids,
        lambda task_id: cancel_task(settings.root, task_id, outbox=outbox),
        "cancelled",
    )
    ctx.exit(1 if failures else 0)


@click.command()
@click.argument("state", type=click.Choice(["done", "failed"]))
@click.option(
    "--older-than", metavar="DURATION", help="Only tasks finished at least this long ago."
)
@click.option("--queue", "-q", metavar="Q", help="Only this queue.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Without --older-than: delete without asking.")
@click.pass_context
def purge(
    ctx: click.Context,
    state: str,
    older_than: str | None,
    queue: str | None,
    dry_run: bool,
    yes: bool,
) -> None:
    """Delete finished tasks (done or failed), e.g. purge done --older-than 7d. Without
    --older-than every one goes: asked on a terminal, refused elsewhere unless --yes."""
    from spool.manage import purge as purge_tasks

    settings = settings_of(ctx)
    age = duration_option(older_than, "--older-than")
    queue = queue_option(queue)
    if age is None and not dry_run and not yes:
        confirm_purge_all(settings.root, state, queue)
    hidden = not sys.stderr.isatty()
    bar = click.progressbar(length=0, label="purging", file=sys.stderr, hidden=hidden)
    with bar, user_errors():
        result = purge_tasks(settings.root, state, age, queue, dry_run, bar.update)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {result.matched if dry_run else result.deleted} {state} entr(y/ies)")


def confirm_purge_all(root: Path, state: str, queue: str | None) -> None:
    """Ask before deleting every task of `state`; off a terminal, refuse (exit 2)."""
    from spool.manage import purge as purge_tasks

    where = f"queue {queue}" if queue else "every queue"
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageProblem(
            f"purge {state} without --older-than deletes every {state} task of {where}: "
            "give --yes to do that (or --older-than 7d, or --dry-run)"
        )
    with user_errors():
        count = purge_tasks(root, state, None, queue, True, lambda n: None).matched
    if not click.confirm(f"Delete all {count} {state} entr(y/ies) of {where}?"):
        raise click.ClickException("nothing deleted")


@click.command()
@click.argument("queue")
@click.option("--reason", default="", help="Shown by spool status.")
@click.option("--create", is_flag=True, help="Make QUEUE if it does not exist (paused from birth).")
@click.pass_context
def pause(ctx: click.Context, queue: str, reason: str, create: bool) -> None:
    """Pause QUEUE: workers (on any host) claim nothing from it until resumed."""
    from spool.manage import pause as pause_queue

    settings = settings_of(ctx)
    with user_errors():
        dirs = queue_dirs(settings.root, queue)
        known = known_queues(settings.root)
        if not create and dirs.name not in known and not dirs.base.is_dir():
            raise UsageProblem(
                f"QUEUE: no queue {queue!r} under {settings.root} (queues: {', '.join(known)}); "
                "--create makes it paused"
            )
        pause_queue(dirs, reason)
    click.echo(f"paused {queue}" + (f": {reason}" if reason else ""))


def known_queues(root: Path) -> list[str]:
    """The queues that exist, default, and those the published tasks' handlers declare."""
    from spool.manifest import Catalog

    declared = {options.queue for options in Catalog.load(root).by_name.values()}
    return sorted({*existing_queues(root), DEFAULT_QUEUE, *declared})


@click.command()
@click.argument("queue")
@click.pass_context
def resume(ctx: click.Context, queue: str) -> None:
    """Resume a paused QUEUE."""
    from spool.manage import resume as resume_queue

    settings = settings_of(ctx)
    with user_errors():
        was = resume_queue(queue_dirs(settings.root, queue))
    click.echo(f"resumed {queue}" if was else f"{queue} was not paused")
