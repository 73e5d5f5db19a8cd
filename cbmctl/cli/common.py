"""Options and helpers shared by several commands."""
from __future__ import annotations

import functools
import json

import click


class Choice(click.Choice):
    """click.Choice that adds "did you mean ...?" to the error for a misspelt value."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as error:
            from cbmctl.suggest import did_you_mean
            error.message = str(error.message).rstrip(".") + did_you_mean(str(value), self.choices)
            raise


def backbone_options(func=None, *, model_default: str = "the dataset's cbmctl.yaml, else ViT-L-14"):
    """--model/--pretrained/--device; `@backbone_options(model_default=...)` for commands that take no
    dataset, so that the help says where their default really comes from."""
    if func is None:
        return functools.partial(backbone_options, model_default=model_default)

    @click.option("--model", "-m", default=None, help="open_clip name (ViT-L-14), hf-hub:org/repo, 'demo', or a "
                  f"model-config .json. Default: {model_default}.")
    @click.option("--pretrained", "-p", default=None, help="Zoo tag (openai, laion2b_s34b_b79k), a local "
                  ".pt/.safetensors file, or 'none' for random weights.")
    @click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda, cuda:N.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


allow_outside_root_option = click.option(
    "--allow-outside-root", is_flag=True, default=None,
    help="Read images that a manifest or index lists outside the dataset folder (absolute or ../ paths); the "
         "cache records which they are.")


def dataset_options(func):
    @click.option("--format", "dataset_format", default=None,
                  type=Choice(["cub", "cifar", "imagefolder", "places365", "manifest"], case_sensitive=False),
                  help="Force the on-disk format instead of detecting it.")
    @click.option("--data-root", default=None, envvar="CBMCTL_DATA",
                  help="Where known dataset names (cifar10, cub, ...) live. [env CBMCTL_DATA; default ./data]")
    @click.option("--val-fraction", type=click.FloatRange(0, 0.9), default=None,
                  help="Stratified share of train held out for validation (default 0.1).")
    @click.option("--val-seed", type=int, default=None, help="Seed of the validation split (default 0).")
    @allow_outside_root_option
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


# a library parameter whose flag is not --NAME-WITH-DASHES
FLAG_OF = {"cache_path": "--cache", "templates": "--template", "class_name": "--class", "set_values": "--set",
           "dataset_format": "--format", "spec": "DATA", "methods": "--compare"}


def flag_of(parameter: str) -> str:
    return FLAG_OF.get(parameter, "--" + parameter.replace("_", "-"))


def flags(command: click.Command) -> set[str]:
    return {flag for parameter in command.params for flag in (*parameter.opts, *parameter.secondary_opts)}


def every_command():
    """(the command as typed after `cbmctl`, the click command) of every command, subcommands of groups
    included, train's first (cbmctl.cli.COMMANDS order otherwise)."""
    from cbmctl.cli import COMMANDS, cli

    def leaves(command, path):
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from leaves(sub, f"{path} {name}")
        else:
            yield path, command
    with click.Context(cli) as root:
        for name in sorted(COMMANDS, key=lambda name: name != "train"):
            yield from leaves(cli.get_command(root, name), name)


def command_with(flag: str) -> str | None:
    """The first command (every_command's order: most library parameters are the trainer's, and embed's
    --batch-size is its own) that has the option `flag`, or None."""
    return next((path for path, command in every_command() if flag in flags(command)), None)


def for_the_command_line(error, command: click.Command | None = None) -> str:
    """A library error's message with each parameter it names (CbmctlError.options, written `name`) shown as
    the flag a user types, escaped for the terminal: the one way every command prints an error. With the
    `command` that failed, a flag it lacks is named with the command that has it (`cbmctl embed --format`)."""
    from cbmctl.sanitize import safe_text
    message = str(error)
    for name in getattr(error, "options", ()):
        flag = flag_of(name)
        if command is not None and flag.startswith("-") and flag not in flags(command):
            owner = command_with(flag)  # as a whole command, which reads right even where a value follows
            flag = f"`cbmctl {owner} {flag}`" if owner else flag
        message = message.replace(f"`{name}`", flag)
    return safe_text(message)


def echo_warning(line: str, foreign: bool = False) -> None:
    """A library's warning line on stderr as the command line says it: the parameters it names (written
    `name`) shown as flags, escaped for the terminal (for_the_command_line). `foreign`: the line carries
    another program's words (a server's answer, a plug-in's failure), whose backquotes are not ours."""
    from cbmctl.errors import CbmctlError
    context = click.get_current_context(silent=True)
    click.echo(for_the_command_line(CbmctlError(line, options=() if foreign else None),
                                    context.command if context is not None else None), err=True)


# what the root command says after Ctrl-C: the command that continues the interrupted work (None: nothing to say)
_INTERRUPT_HINT: list[str] = []


def on_interrupt(hint: str | None) -> None:
    """Set what an interrupt (Ctrl-C) of this command prints after "Interrupted": how to continue."""
    _INTERRUPT_HINT[:] = [hint] if hint else []


def interrupt_line() -> str:
    return "Interrupted" + (f"; {_INTERRUPT_HINT[0]}" if _INTERRUPT_HINT else ".")


def print_json(data, strict: bool = False) -> None:
    """`strict`: refuse NaN and Infinity (not JSON; a parser downstream would choke) with a one-line error."""
    from cbmctl.errors import CbmctlError
    try:
        text = json.dumps(data, indent=2, default=str, allow_nan=not strict)
    except ValueError:
        raise CbmctlError("the result holds NaN or infinite numbers, which JSON cannot carry") from None
    click.echo(text)


def console():
    """A rich console; when output is not a terminal (a pipe, a file, a test) tables get room instead of
    being squeezed to 80 columns."""
    import sys

    from rich.console import Console
    return Console() if sys.stdout.isatty() else Console(width=160)
