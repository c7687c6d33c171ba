"""Library INFO logs are off by default and come back with --verbosity."""

import logging

from absl import flags

from libs.cli import logs


def test_library_info_is_off_by_default_and_warnings_still_show():
    flags.FLAGS(["prog"])
    logs.quiet_libraries()
    orbax = logging.getLogger("orbax")
    assert not orbax.isEnabledFor(logging.INFO)
    assert orbax.isEnabledFor(logging.WARNING)


def test_verbosity_brings_library_info_back():
    flags.FLAGS(["prog", "--verbosity=1"])
    try:
        logging.getLogger("orbax").setLevel(logging.NOTSET)
        logs.quiet_libraries()
        assert logging.getLogger("orbax").getEffectiveLevel() <= logging.WARNING
        from absl import logging as absl_logging

        assert absl_logging.get_verbosity() == absl_logging.INFO
    finally:
        flags.FLAGS["verbosity"].value = 0
