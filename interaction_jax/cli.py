"""What every command-line entry point shares: one error boundary, config flags, quiet logs.

Each command calls `run(main, name=..., define_flags=...)` instead of `absl.app.run(main)`:

* **Error boundary.** A bad flag, a `UsageError` or any `interaction_jax.errors.UserError` (bad
  config value, missing file, corrupt store, unknown task ...) prints exactly one line on stderr,
  `[name] error: <what is wrong and what was expected> (--helpshort lists the flags)`, and exits
  with status 2; nothing has been written by then. Other exceptions are bugs and keep their
  traceback.
* **Config flags.** `DEFINE_config` defines `--config=FILE[:arg]`; `--config.a.b=VALUE` (or
  `--config.a.b VALUE`) overrides are applied by `config_lib.apply_override` and the result is
  validated (`config_lib.validate_config`) before `main` runs, so a wrong type or an
  out-of-range value is named at load time, not deep inside a jitted function.
* **Quiet logs.** Orbax and Grain log through absl at INFO (about 180 lines in one quickstart);
  absl INFO/DEBUG is hidden unless `--verbosity=0` (or `-v 0`) is given.

`invoke` runs a command's `main` in the calling process exactly as the command line would (same
parsing and boundary, flags removed afterwards): the tests use it for the per-command error tables.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from interaction_jax.errors import UserError, one_line

USAGE_ERROR_STATUS = 2
HELP_HINT = "(--helpshort lists the flags)"


def quiet_logs() -> None:
    """absl INFO hidden (WARNING and above kept) unless --verbosity was given on the command line."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def DEFINE_config(name: str = "config", help: str = "Config file (get_config), FILE or FILE:arg.",  # noqa: N802
                  default: str | None = None) -> None:
    """Defines `--<name>=FILE[:arg]`, loaded with `config_lib.load_config` (overrides: see `parse_flags`)."""
    from absl import flags

    class ConfigFileParser(flags.ArgumentParser):
        path: str | None = None

        def parse(self, argument):
            if not isinstance(argument, str):  # a ConfigDict assigned directly
                return argument
            from interaction_jax.config_lib import load_config

            config = load_config(argument)
            self.path = argument
            return config

        def flag_type(self) -> str:
            return "config file"

    flags.DEFINE(ConfigFileParser(), name, default, help, serializer=flags.ArgumentSerializer())


def config_filename(name: str = "config") -> str | None:
    """The FILE[:arg] the `DEFINE_config` flag `name` was loaded from."""
    from absl import flags

    return getattr(flags.FLAGS[name].parser, "path", None)


def split_overrides(argv: Sequence[str], name: str = "config") -> tuple[list[str], list[tuple[str, str]]]:
    """(argv without the `--name.key=value` overrides, [(key, value)]); `--name.key value` works too."""
    rest, overrides, i = [], [], 0
    prefix = f"--{name}."
    while i < len(argv):
        arg = argv[i]
        if arg == "--":  # everything after it is positional
            rest.extend(argv[i:])
            break
        if i and arg.startswith(prefix):
            if "=" in arg:
                key, value = arg[len(prefix) :].split("=", 1)
            elif i + 1 < len(argv):
                key, value = arg[len(prefix) :], argv[i + 1]
                i += 1
            else:
                raise UserError(f"{arg} needs a value ({arg}=VALUE)")
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def parse_flags(argv: Sequence[str]) -> list[str]:
    """Parses absl flags and config overrides; every problem is a `UserError` with one clear line."""
    from absl import flags

    from interaction_jax.config_lib import apply_override, validate_config

    FLAGS = flags.FLAGS
    rest, overrides = split_overrides(list(argv))
    try:
        args = FLAGS(rest)
    except flags.Error as e:
        raise UserError(one_line(e)) from None
    if overrides:
        if "config" not in FLAGS:
            raise UserError(f"--config.{overrides[0][0]}: this command has no --config flag")
        if FLAGS.config is None:
            raise UserError(f"--config.{overrides[0][0]}=... overrides need --config=FILE")
        for key, value in overrides:
            apply_override(FLAGS.config, key, value)
        validate_config(FLAGS.config)
    return args


def check_output_dir(path: str, flag: str = "--out") -> None:
    """Raises UserError before any work when the output folder `path` cannot be created or written."""
    import os

    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag}={path} is a file; expected a folder (new or existing)")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{flag}={path}: {probe} is a file, so the folder cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag}={path}: {probe} is not writable")


def _report(name: str, error: BaseException | str, hint: bool = False) -> int:
    line = f"[{name}] error: {one_line(error)}" + (f" {HELP_HINT}" if hint else "")
    print(line, file=sys.stderr, flush=True)
    return USAGE_ERROR_STATUS


def _call_main(main: Callable[[list[str]], object], args: list[str], name: str) -> int:
    """Runs `main` inside the boundary; returns the exit status."""
    from absl import app

    try:
        result = main(args)
    except UserError as e:
        return _report(name, e)
    except app.UsageError as e:
        return _report(name, e, hint=True)
    return result if isinstance(result, int) else 0


def run(main: Callable[[list[str]], object], *, name: str = "", define_flags: Callable[[], None] | None = None) -> None:
    """`absl.app.run(main)` with the error boundary, config overrides and quiet logs (module docstring)."""
    import os

    from absl import app

    name = name or os.path.basename(sys.argv[0]).removesuffix(".py")
    if define_flags is not None:
        define_flags()

    def parser(argv: list[str]) -> list[str]:
        try:
            return parse_flags(argv)
        except UserError as e:
            sys.exit(_report(name, e, hint=True))

    def wrapped(args: list[str]) -> int:
        quiet_logs()
        return _call_main(main, args, name)

    app.run(wrapped, flags_parser=parser)


def invoke(main: Callable[[list[str]], object], argv: Sequence[str], *, name: str = "cli",
           define_flags: Callable[[], None] | None = None) -> int:
    """Runs a command in this process as its command line would; returns its exit status.

    Flags that `define_flags` adds are removed again afterwards (and the flags are unparsed if
    they were before), so many commands can be invoked one after another in one process. Flags a
    library defines when the command first imports it (Grain's, for one) are kept: the library
    reads them again later.
    """
    from absl import flags

    FLAGS = flags.FLAGS
    was_parsed, before, defined = FLAGS.is_parsed(), set(FLAGS), set()
    try:
        try:
            if define_flags is not None:
                define_flags()
        finally:
            defined = set(FLAGS) - before
        try:
            args = parse_flags(argv)
        except UserError as e:
            return _report(name, e, hint=True)
        quiet_logs()
        try:
            return _call_main(main, args, name)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (print(e.code, file=sys.stderr) or 1)
    finally:
        for flag in defined:
            if flag in FLAGS:
                delattr(FLAGS, flag)
        if not was_parsed:
            FLAGS.unparse_flags()
