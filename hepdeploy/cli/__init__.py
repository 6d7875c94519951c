"""The ``hepdeploy`` command: a thin click layer over the library.

Each stage's commands live in their own module here and are added to the group
below; heavy imports happen inside the commands so ``hepdeploy --help`` is fast.
Errors from the library's hierarchy become one line on stderr and an exit code:
0 ok, 1 disagreement, 2 bad input or usage.
"""
from __future__ import annotations

import logging
import sys
import traceback

import click

from hepdeploy import __version__
from hepdeploy.cli import (
    commands_build,
    commands_convert,
    commands_gate,
    commands_optimize,
    commands_preprocess,
    commands_profile,
    commands_report,
    commands_serve,
    commands_triton,
    commands_tune,
    commands_validate,
    commands_zoo,
)
from hepdeploy.errors import HepDeployError, first_line
from hepdeploy.lifetime import sweep_stale_work_folders

log = logging.getLogger("hepdeploy")


class HepDeployGroup(click.Group):
    """Turns library errors into one clear line and an exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except HepDeployError as error:
            _report(ctx, error, str(error))
            sys.exit(error.exit_code)
        except click.UsageError as error:  # one line, like every other error, and where to look
            where = error.ctx.command_path if error.ctx is not None else "hepdeploy"
            click.echo(f"error: {error.format_message()} (see: {where} --help)", err=True)
            sys.exit(2)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("hepdeploy: interrupted", err=True)
            sys.exit(130)
        except Exception as error:  # a bug or an error from a dependency we did not foresee
            _report(ctx, error, f"unexpected {type(error).__name__}: {first_line(error)}")
            sys.exit(2)


def _report(ctx: click.Context, error: BaseException, message: str) -> None:
    """One line on stderr; with -v first the whole traceback, with the dependency errors it was chained to."""
    verbose = (ctx.obj or {}).get("verbosity", 0) > 0
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    worth_details = not isinstance(error, HepDeployError) or error.__cause__ is not None
    hint = " (run with -v for details)" if worth_details and not verbose else ""
    click.echo(f"error: {message}{hint}", err=True)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to ``sys.stderr`` as it is then: while a live build view is on screen that is its
    proxy, which prints the line above the view instead of through it."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass  # StreamHandler sets it once; the current sys.stderr is always the one


def setup_logging(verbosity: int) -> None:
    """-q: warnings and errors; default: INFO (`hepdeploy build` shows its view instead, see
    commands_build); -v: DEBUG; -vv: the dependencies' logs too."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("hepdeploy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Third-party chatter (TensorFlow, absl, tf2onnx) only when asked for.
    for noisy in ("tensorflow", "absl", "tf2onnx", "onnxscript", "torch.onnx", "modelopt"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity > 1 else logging.ERROR)


@click.group(cls=HepDeployGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="hepdeploy")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for dependencies too).")
@click.option("-q", "--quiet", count=True, help="Only warnings and errors on stderr.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Export, optimize, validate and publish HEP networks for Triton / SONIC serving."""
    ctx.ensure_object(dict)
    ctx.obj["verbosity"] = verbose - quiet
    setup_logging(verbose - quiet)
    sweep_stale_work_folders()  # what a killed hepdeploy process could not remove


def _register_commands() -> None:
    # commands_serve adds `serve` to the `triton` group, so it comes after commands_triton.
    for module in (commands_convert, commands_zoo, commands_optimize, commands_validate, commands_triton,
                   commands_serve, commands_build, commands_tune, commands_preprocess, commands_report,
                   commands_gate, commands_profile):
        module.register(main)


_register_commands()
