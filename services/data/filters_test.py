"""Each filter rule on a document that passes it and one that fails it."""

import pytest

from libs import errors
from services.data import filters

PROSE = " ".join(["The river runs to the sea and that is what rivers have with them."] * 8)
CODE = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"


@pytest.mark.parametrize(
    "rule,threshold,failing",
    [
        ("min_words", 50, "too short to be a document"),
        ("max_words", 20, PROSE),
        ("min_mean_word_length", 3, " ".join(["a b"] * 40)),
        ("max_mean_word_length", 10, " ".join(["antidisestablishmentarianism"] * 40)),
        ("max_symbol_word_ratio", 0.1, PROSE + " #" * 20),
        ("max_ellipsis_lines", 0.3, "\n".join(["and then..."] * 5 + [PROSE])),
        ("min_alpha_words", 0.8, PROSE + " " + " ".join(["1234"] * 100)),
        ("min_stop_words", 2, " ".join(["Lorem ipsum dolor sit amet"] * 20)),
        ("max_line_length", 1000, "x = 1\n" + "y" * 1001),
        ("max_mean_line_length", 100, "z" * 150 + "\n" + "w" * 150),
        ("min_alphanum_fraction", 0.25, "{}[]();:,.<>?!\n" * 20 + "ab"),
    ],
)
def test_each_rule_keeps_what_passes_and_names_what_fails(rule, threshold, failing):
    f = filters.Filters.from_json({rule: threshold})
    assert f.check(failing) == rule
    passing = (
        CODE
        if rule in ("max_line_length", "max_mean_line_length", "min_alphanum_fraction")
        else PROSE
    )
    if rule == "max_words":
        passing = "a short text of a few words"
    assert f.check(passing) is None


def test_the_published_settings():
    assert filters.GOPHER.check(PROSE) is None
    assert filters.GOPHER.check(" ".join(["Lorem ipsum dolor sit amet"] * 20)) == "min_stop_words"
    assert filters.STARCODER.check(CODE) is None
    assert filters.Filters().check("") is None and not filters.Filters()


def test_unknown_or_negative_rules_are_refused_naming_the_field():
    with pytest.raises(errors.InvalidArgument) as e:
        filters.Filters.from_json({"min_wrods": 5}, field="sources.text.filters")
    assert e.value.field == "sources.text.filters.min_wrods"
    with pytest.raises(errors.InvalidArgument) as e:
        filters.Filters.from_json({"min_words": -1})
    assert e.value.field == "filters.min_words"
