"""What every command-line entry point shares: `run(main)` instead of `absl.app.run(main)`.

Orbax and Grain log through absl at INFO (about 180 lines in one quickstart), which buries the
progress lines of our own commands. `run` hides absl INFO/DEBUG unless the user asks for them
with absl's own `--verbosity=0` (or `-v 0`); warnings and errors always show.
"""

from __future__ import annotations

from collections.abc import Callable


def quiet_logs() -> None:
    """absl INFO hidden (WARNING and above kept) unless --verbosity was given on the command line."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def run(main: Callable[[list[str]], object]) -> None:
    """`absl.app.run(main)` with `quiet_logs()` applied once the flags are parsed."""
    from absl import app

    def quiet_main(argv):
        quiet_logs()
        return main(argv)

    app.run(quiet_main)
