"""The click root group. Subcommands are imported only when invoked, so `--help` stays instant.

Every error, whoever finds it, is printed here in one style: a single line `Error: ...` on stderr, escaped
(cbmctl.sanitize.safe_text), with exit status 1, or 2 for a usage error (an unknown option or command, a
missing argument, a bad option value, options that do not go together), which also names the command's help."""
from __future__ import annotations

import importlib
import sys

import click

from cbmctl import __version__
from cbmctl.errors import CbmctlError

# name -> (module, attribute, one-line help shown by `cbmctl --help` without importing the module)
COMMANDS = {
    "embed": ("cbmctl.cli.embed", "embed", "Embed a dataset's images and class names into an HDF5 cache."),
    "cms": ("cbmctl.cli.cms", "cms", "Concept Matrix Search (training-free) next to zero-shot and baselines."),
    "concepts": ("cbmctl.cli.concepts", "concepts", "Concept sets: list, show, check, filter, embed, generate."),
    "demo": ("cbmctl.cli.demo", "demo", "Make the generated demo world; evaluate the tiny CLIP; benchmark over worlds."),
    "quickstart": ("cbmctl.cli.quickstart", "quickstart", "The whole pipeline on the demo world, offline, in minutes."),
    "train": ("cbmctl.cli.train", "train", "Train a Concept Bottleneck Model (or baselines, or a comparison)."),
    "explain": ("cbmctl.cli.explain", "explain", "Explain images: predicted class, contributing concepts, interventions."),
    "inspect": ("cbmctl.cli.inspect", "inspect", "Browse class-concept matrices and per-image activations (TUI)."),
    "report": ("cbmctl.cli.report", "report", "One self-contained HTML page about a run or comparison, to share."),
    "models": ("cbmctl.cli.embed", "models", "List backbone names and pretrained tags."),
}


class _RunningCommand(click.Context):
    """A context that tells the whole tree (its shared `meta`) which command it runs, so the root's error
    handler, reached after the failing command's context has closed, names only flags that command has."""

    def __enter__(self):
        self.meta[RUNNING] = self.command
        return super().__enter__()


RUNNING = "cbmctl.running_command"


def _recording(command: click.Command) -> click.Command:
    command.context_class = _RunningCommand
    for sub in getattr(command, "commands", {}).values():
        _recording(sub)
    return command


class LazyGroup(click.Group):
    context_class = _RunningCommand

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return _recording(getattr(importlib.import_module(module), attr))

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and name not in COMMANDS and not name.startswith("-"):
            from cbmctl.suggest import did_you_mean
            ctx.fail(f"No such command {name!r}{did_you_mean(name, COMMANDS)}")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        from cbmctl.cli.common import on_interrupt
        on_interrupt(None)  # each command says for itself how its work continues
        try:
            return super().invoke(ctx)
        except CbmctlError as error:
            from cbmctl.cli.common import for_the_command_line  # messages quote names from files and servers
            click.echo(f"Error: {for_the_command_line(error, ctx.meta.get(RUNNING))}", err=True)
            ctx.exit(error.exit_code)
        except OSError as error:
            # the last resort for a file the commands did not expect to be unwritable or missing (a full disk, a
            # read-only mount): one line, not a traceback; other exceptions stay visible as the bugs they are
            from cbmctl.sanitize import safe_text
            names = [str(name) for name in (error.filename, error.filename2) if name]
            where = f"{' -> '.join(names)}: " if names else ""
            click.echo(f"Error: {safe_text(where + (error.strerror or str(error)))}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            from cbmctl.cli.common import interrupt_line
            from cbmctl.sanitize import safe_text
            click.echo(safe_text(interrupt_line()), err=True)
            ctx.exit(130)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's own errors (usage, bad parameters) in the one style instead of click's usage block."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except getattr(click.exceptions, "NoArgsIsHelpError", ()) as error:  # `cbmctl` alone: the help, as click shows it
            error.show()
            sys.exit(error.exit_code)
        except click.ClickException as error:
            from cbmctl.sanitize import safe_text
            line = error.format_message()
            if isinstance(error, click.UsageError) and error.ctx is not None:
                line += f" (see '{error.ctx.command_path} -h')"
            click.echo(f"Error: {safe_text(line)}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cbmctl")
def cli():
    """Build interpretable Concept Bottleneck Models from a CLIP backbone and a concept list."""


def main(argv=None):
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="cbmctl")
