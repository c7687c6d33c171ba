"""How a value of one of our proto enums is spelled in text (results, catalogues,
manifests, configs): its name without the enum's own prefix, in lower case, e.g.
data.proto's SOURCE_KIND_SYNTHETIC_CODE is "synthetic_code"."""

from __future__ import annotations

import re


def _prefix(enum) -> str:
    """SourceKind -> "SOURCE_KIND_": the prefix every value of `enum` carries."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"


def spelled(enum, value: int) -> str:
    """`enum`'s `value` as text: spelled(data_pb2.SourceKind, 5) == "synthetic_code"."""
    return enum.Name(value).removeprefix(_prefix(enum)).lower()


def spellings(enum) -> tuple[str, ...]:
    """Every value of `enum` but the unspecified one, spelled, in number order."""
    return tuple(spelled(enum, v) for v in sorted(enum.values()) if v != 0)
