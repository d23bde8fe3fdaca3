"""The `prefkit` command line: parses, calls the library, prints. No merge logic lives here."""

from __future__ import annotations

import errno
import os

import click

from prefkit.commands.clikit import (
    ALLOW_PICKLE_HELP,
    CliState,
    RegistryFactory,
    echo_err,
    parse_size,
    report_error,
)
from prefkit.commands.info_commands import add_methods, add_plugins, add_tasks
from prefkit.commands.recipe_commands import add_fetch, add_plan, add_run, add_validate
from prefkit.commands.result_commands import add_eval, add_report
from prefkit.errors import ExitCode, PrefkitError
from prefkit.version import __version__

__all__ = ["ALLOW_PICKLE_HELP", "RegistryFactory", "build_cli", "main", "parse_size"]

# Each adds one command to the group (prefkit/commands/*_commands.py), in this order.
COMMANDS = (add_validate, add_plan, add_run, add_report, add_methods, add_tasks, add_plugins,
            add_fetch, add_eval)


def _default_registry():
    from prefkit.registry import load_registry

    return load_registry()


def build_cli(registry_factory: RegistryFactory = _default_registry) -> click.Group:
    """The click group; tests pass their own registry factory (no global state)."""
    state = CliState(registry_factory)

    @click.group(cls=_PrefkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="prefkit")
    @click.option("--traceback", is_flag=True, help="Show the full traceback of errors.")
    @click.option("--plugins-dir", type=click.Path(exists=True, file_okay=False),
                  help="Also load every *.py file in this folder as a plugin (one-off plugins).")
    @click.option("--offline", is_flag=True,
                  help="Never reach the Hugging Face hub: use its cache only (HF_HUB_OFFLINE=1).")
    def cli(traceback: bool, plugins_dir: str | None, offline: bool) -> None:
        """Merge fine-tuned models for a preference over tasks.

        Recipes are mergekit YAML plus prefkit's keys (task, preference, heads, output).
        """
        state.use_plugins_dir(plugins_dir)  # one CLI object may be invoked again (tests)
        if offline:
            from prefkit.io.hub import offline_mode

            click.get_current_context().with_resource(offline_mode())

    for add in COMMANDS:
        add(cli, state)
    return cli


class _PrefkitGroup(click.Group):
    """Turns a PrefkitError from any command into one line on stderr and its exit code
    (the full traceback with --traceback or PREFKIT_DEBUG=1). Other exceptions are bugs."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PrefkitError as exc:
            if _debug(ctx):
                raise
            report_error(exc)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt as exc:  # the merge in progress has removed its partial output
            # (Ctrl-C, or SIGTERM/SIGHUP: `prefkit.io.interrupts.Terminated`)
            if _debug(ctx):
                raise
            from prefkit.io.interrupts import Terminated

            what, code = ((exc.what, exc.exit_code) if isinstance(exc, Terminated)
                          else ("interrupted", ExitCode.INTERRUPTED))
            echo_err(f"Error: {what}; nothing half-written was left behind")
            ctx.exit(int(code))
        except OSError as exc:  # out of file descriptors where no reader or writer said it
            if exc.errno not in (errno.EMFILE, errno.ENFILE) or _debug(ctx):
                raise
            from prefkit.io.jsonfile import FD_HINT

            where = f"{exc.filename}: " if exc.filename else ""
            echo_err(f"Error: {where}too many open files ({FD_HINT})")
            ctx.exit(int(ExitCode.MERGE_FAILED))


def _debug(ctx: click.Context) -> bool:
    """Errors raised with their traceback: --traceback or PREFKIT_DEBUG=1."""
    return bool(ctx.params.get("traceback")) or os.environ.get("PREFKIT_DEBUG") == "1"


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    import atexit
    import gc
    import signal

    # Tearing down an interpreter that has imported torch collects its ~10^6 objects again and
    # again (0.4 s of every merge here); frozen, the last collections skip them. atexit runs
    # this after every handler registered later (files are closed, threads joined by then).
    atexit.register(gc.freeze)
    # Past a file size limit (ulimit -f) the kernel would kill us silently; ignored, the write
    # fails with EFBIG and the merge stops with one error and no partial output.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # SIGTERM and SIGHUP stop a run as Ctrl-C does: its temporary folder and lock are removed,
    # and it exits 143 / 129 (ExitCode.TERMINATED / HANGUP) with one line.
    from prefkit.io.interrupts import install

    install()
    build_cli()(args=argv, prog_name="prefkit")
