"""What a command-line tool prints: its own progress and results, and the
warnings and errors of the libraries it uses, but not their INFO chatter.

orbax, jax and absl log at INFO by default (every checkpoint write, every
compilation cache miss); a researcher reading a tool's output wants the
tool's lines. `--verbosity=1` (absl's own flag) or higher brings them back.
"""

from __future__ import annotations

import logging

from absl import flags
from absl import logging as absl_logging

# Loggers of libraries whose INFO records are not for the tool's user.
LIBRARY_LOGGERS = ("absl", "jax", "jax._src", "orbax", "orbax.checkpoint", "etils", "ray", "tensorstore")


def quiet_libraries() -> None:
    """Raise the libraries' loggers to WARNING unless --verbosity >= 1 asked for more.
    Call after flags are parsed (in `main`)."""
    verbosity = flags.FLAGS["verbosity"].value if "verbosity" in flags.FLAGS else 0
    if verbosity >= 1:
        absl_logging.set_verbosity(absl_logging.INFO if verbosity == 1 else absl_logging.DEBUG)
        return
    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
