"""Quality and language filters of a source, as configurable steps.

A source's `filters` (a JSON object in its spec) names the rules it applies;
each rule has a threshold, and a document failing one is dropped and counted
under that rule's name. The rules are the ones the field publishes:

Natural language (Gopher's quality rules, Rae et al. 2021, as in datatrove's
GopherQualityFilter and SlimPajama's cleaning):
    min_words, max_words         words in the document
    min_mean_word_length,
    max_mean_word_length         mean characters a word
    max_symbol_word_ratio        ("#" and "..." occurrences) / words
    max_ellipsis_lines           fraction of lines ending in "..." or "…"
    min_alpha_words              fraction of words with a letter
    min_stop_words               English stop words present ("the", "be",
                                 "to", "of", "and", "that", "have", "with"):
                                 Gopher's language check for English

Code (The Stack / StarCoder's near-data filters):
    max_line_length              longest line, characters
    max_mean_line_length         mean line length, characters
    min_alphanum_fraction        alphanumeric characters / all characters

    filters = Filters.from_json({"min_words": 50, "min_stop_words": 2})
    reason = filters.check(text)    # None: kept; else the failing rule's name
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from libs import errors

STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
_WORD = re.compile(r"\S+")


@dataclasses.dataclass(frozen=True)
class Filters:
    """The rules of one source; a rule left None is not applied."""

    min_words: int | None = None
    max_words: int | None = None
    min_mean_word_length: float | None = None
    max_mean_word_length: float | None = None
    max_symbol_word_ratio: float | None = None
    max_ellipsis_lines: float | None = None
    min_alpha_words: float | None = None
    min_stop_words: int | None = None
    max_line_length: int | None = None
    max_mean_line_length: float | None = None
    min_alphanum_fraction: float | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None, field: str = "filters") -> Filters:
        """From {rule: threshold}; an unknown rule or a negative threshold is
        refused naming `field.rule`."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in d.items():
            if key not in known:
                raise errors.InvalidArgument(
                    f"{field}.{key}", f"unknown filter; known: {', '.join(sorted(known))}"
                )
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise errors.InvalidArgument(
                    f"{field}.{key}", f"must be a number >= 0, got {value!r}"
                )
        return cls(**d)

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    def check(self, text: str) -> str | None:
        """The name of the first rule `text` fails, or None."""
        words = _WORD.findall(text)
        n = len(words)
        if self.min_words is not None and n < self.min_words:
            return "min_words"
        if self.max_words is not None and n > self.max_words:
            return "max_words"
        if n and (self.min_mean_word_length is not None or self.max_mean_word_length is not None):
            mean = sum(map(len, words)) / n
            if self.min_mean_word_length is not None and mean < self.min_mean_word_length:
                return "min_mean_word_length"
            if self.max_mean_word_length is not None and mean > self.max_mean_word_length:
                return "max_mean_word_length"
        if self.max_symbol_word_ratio is not None:
            symbols = text.count("#") + text.count("...") + text.count("…")
            if symbols / max(n, 1) > self.max_symbol_word_ratio:
                return "max_symbol_word_ratio"
        lines = text.splitlines() or [""]
        if self.max_ellipsis_lines is not None:
            ending = sum(1 for line in lines if line.rstrip().endswith(("...", "…")))
            if ending / len(lines) > self.max_ellipsis_lines:
                return "max_ellipsis_lines"
        if self.min_alpha_words is not None:
            alpha = sum(1 for w in words if any(c.isalpha() for c in w))
            if alpha / max(n, 1) < self.min_alpha_words:
                return "min_alpha_words"
        if self.min_stop_words is not None:
            present = STOP_WORDS.intersection(w.lower() for w in words)
            if len(present) < self.min_stop_words:
                return "min_stop_words"
        if self.max_line_length is not None and max(map(len, lines)) > self.max_line_length:
            return "max_line_length"
        if self.max_mean_line_length is not None:
            if sum(map(len, lines)) / len(lines) > self.max_mean_line_length:
                return "max_mean_line_length"
        if self.min_alphanum_fraction is not None:
            alnum = sum(1 for c in text if c.isalnum())
            if alnum / max(len(text), 1) < self.min_alphanum_fraction:
                return "min_alphanum_fraction"
        return None


# The field's published settings, for recipes to name.
GOPHER = Filters(
    min_words=50,
    max_words=100_000,
    min_mean_word_length=3,
    max_mean_word_length=10,
    max_symbol_word_ratio=0.1,
    max_ellipsis_lines=0.3,
    min_alpha_words=0.8,
    min_stop_words=2,
)
STARCODER = Filters(max_line_length=1000, max_mean_line_length=100, min_alphanum_fraction=0.25)
