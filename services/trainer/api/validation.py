"""The trainer's RunSpec rules, for clients that plan runs before submitting them.

A study plans dozens of runs; checking each against the trainer's own validator
(services/trainer/spec.py) before the first starts turns a bad field into an
error at once instead of after hours of training. Parent checkpoints are not
opened (a planned run's parent may not exist yet); mixtures are checked by
`check_mixture` when one is given (the data service's verdict).
"""

from __future__ import annotations

from typing import Callable

from proto import trainer_pb2
from services.trainer import spec as spec_lib


def check_run_spec(
    spec: trainer_pb2.RunSpec,
    *,
    num_devices: int = 1,
    check_mixture: Callable[[str, object], None] | None = None,
) -> None:
    """Raises libs.errors.FieldError naming the field the trainer would refuse."""
    spec_lib.validate(
        spec_lib.with_defaults(spec),
        num_devices=num_devices,
        check_mixture=check_mixture,
        check_parents=False,
    )
