import pytest

from libs import errors


def test_message_names_the_field():
    e = errors.InvalidArgument("seq_len", "must be in [8, 1048576], got 3")
    assert str(e) == "seq_len: must be in [8, 1048576], got 3"
    assert (e.field, e.message) == ("seq_len", "must be in [8, 1048576], got 3")
    assert str(errors.Unavailable("", "no field at fault")) == "no field at fault"


def test_kinds_are_field_errors_and_value_errors():
    for kind in (errors.NotFound, errors.AlreadyExists, errors.OutOfRange):
        with pytest.raises(errors.FieldError):
            raise kind("x", "y")
    assert issubclass(errors.FieldError, ValueError)


@pytest.mark.parametrize(
    "field, parent, root, rooted",
    [
        ("run_id", "spec", "", "spec.run_id"),
        ("[2].source", "weights", "", "weights[2].source"),
        ("", "data_address", "", "data_address"),
        (
            "mixture.stages[0].weights[1].source",
            "phases[1].mixture",
            "mixture",
            "phases[1].mixture.stages[0].weights[1].source",
        ),
        ("mixture", "phases[1].mixture", "mixture", "phases[1].mixture"),
        ("mixtures[0]", "spec", "mixture", "spec.mixtures[0]"),
    ],
)
def test_within_reroots_the_field_and_keeps_the_kind(field, parent, root, rooted):
    e = errors.NotFound(field, "unknown source 'x'").within(parent, root=root)
    assert type(e) is errors.NotFound
    assert (e.field, e.message) == (rooted, "unknown source 'x'")
