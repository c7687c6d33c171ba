"""Synthetic verified Python: generated problems kept only if their tests pass.

The paper adds 3.2B tokens of formally verified synthetic Python problems.
Here a seeded generator draws problems from templated families (arithmetic
functions, string transforms, list algorithms, dictionaries), each with
varied names, constants and coding style. A problem is a function with a
docstring (the statement), a reference solution, and asserts whose expected
values come from a separate oracle written in the generator. The generator
makes mistakes too: a fraction of candidates get a seeded mutation (an
off-by-one, a flipped comparison, a wrong constant, an infinite loop, a
syntax error, an early `os._exit(0)`), as a careless author would. Every
candidate runs in the bubblewrap sandbox (libs/sandbox, `run_tests`), and
only those whose tests pass are kept as documents; the rest are counted by
sandbox status.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from typing import Any, Callable, Iterator, Sequence


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A generated problem: `program` (signature, docstring, solution) and
    `tests` (asserts). `mutation` names the mistake injected, if any."""

    family: str
    program: str
    tests: str
    mutation: str = ""

    @property
    def document(self) -> str:
        return self.program.rstrip("\n") + "\n\n\n" + self.tests


@dataclasses.dataclass
class Stats:
    """What happened to the candidates of one run."""

    candidates: int = 0
    mutated: int = 0
    kept: int = 0
    kept_mutated: int = 0  # mutations that happened to be harmless
    duplicates: int = 0
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)  # sandbox status -> count
    rejected_mutations: dict[str, int] = dataclasses.field(default_factory=dict)
    error: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------
# Families. Each returns (function name, parameter list, docstring, body,
# oracle, list of argument tuples).


def _pick(r: random.Random, *options):
    return r.choice(options)


def _sum_multiples(r):
    a, b = sorted(r.sample([2, 3, 4, 5, 6, 7, 9, 11, 13], 2))
    name = _pick(
        r, "sum_of_multiples", "multiples_sum", f"sum_multiples_{a}_{b}", "total_of_multiples"
    )
    n = _pick(r, "n", "limit", "bound", "upper")
    doc = f"Return the sum of the non-negative integers below {n} that are divisible by {a} or {b}."
    if r.random() < 0.5:
        body = f"""    total = 0
    for i in range({n}):
        if i % {a} == 0 or i % {b} == 0:
            total += i
    return total"""
    else:
        body = f"    return sum(i for i in range({n}) if i % {a} == 0 or i % {b} == 0)"
    oracle = lambda x: sum(i for i in range(x) if i % a == 0 or i % b == 0)  # noqa: E731
    args = [(0,), (1,), (a + 1,), (b * 3,)] + [(r.randint(10, 500),) for _ in range(2)]
    return name, n, doc, body, oracle, args


def _digit_sum(r):
    base = r.choice([2, 3, 5, 7, 8, 10, 16])
    name = _pick(
        r, f"digit_sum_base{base}", "sum_of_digits", "digit_total", f"base{base}_digit_sum"
    )
    n = _pick(r, "n", "number", "value")
    doc = f"Return the sum of the digits of the non-negative integer {n} written in base {base}."
    body = f"""    total = 0
    while {n} > 0:
        total += {n} % {base}
        {n} //= {base}
    return total"""

    def oracle(x):
        s = 0
        while x:
            x, d = divmod(x, base)
            s += d
        return s

    args = [(0,), (base - 1,), (base,)] + [(r.randint(1, 10**6),) for _ in range(3)]
    return name, n, doc, body, oracle, args


def _count_divisors(r):
    name = _pick(r, "count_divisors", "divisor_count", "number_of_divisors", "num_divisors")
    n = _pick(r, "n", "k", "number")
    doc = f"Return how many positive integers divide the positive integer {n} exactly."
    if r.random() < 0.5:
        body = f"""    count = 0
    for d in range(1, {n} + 1):
        if {n} % d == 0:
            count += 1
    return count"""
    else:
        body = f"    return sum(1 for d in range(1, {n} + 1) if {n} % d == 0)"
    oracle = lambda x: len([d for d in range(1, x + 1) if x % d == 0])  # noqa: E731
    args = [(1,), (2,), (12,), (r.randint(13, 400),), (r.choice([36, 49, 64, 97, 100]),)]
    return name, n, doc, body, oracle, args


def _is_prime(r):
    name = _pick(r, "is_prime", "prime_check", "check_prime", "isprime")
    n = _pick(r, "n", "x", "candidate")
    doc = f"Return True if {n} is a prime number, False otherwise."
    body = f"""    if {n} < 2:
        return False
    i = 2
    while i * i <= {n}:
        if {n} % i == 0:
            return False
        i += 1
    return True"""

    def oracle(x):
        return x >= 2 and all(x % d for d in range(2, x))

    args = [
        (0,),
        (1,),
        (2,),
        (9,),
        (r.choice([25, 49, 121, 169]),),
        (r.choice([97, 101, 113, 127, 131]),),
        (r.randint(2, 300),),
    ]
    return name, n, doc, body, oracle, args


def _poly_eval(r):
    degree = r.randint(1, 4)
    coeffs = [r.randint(-9, 9) for _ in range(degree)] + [r.choice([-3, -2, -1, 1, 2, 3, 4, 5])]
    terms = []
    for power in range(degree, -1, -1):
        c = coeffs[power]
        if c == 0:
            continue
        mono = "" if power == 0 else ("x" if power == 1 else f"x**{power}")
        mag = abs(c)
        piece = str(mag) if not mono else (mono if mag == 1 else f"{mag}*{mono}")
        sign = "-" if c < 0 else "+"
        terms.append((sign, piece))
    text = (
        ("-" if terms[0][0] == "-" else "")
        + terms[0][1]
        + "".join(f" {s} {p}" for s, p in terms[1:])
    )
    name = _pick(r, "evaluate_polynomial", "poly", "polynomial_at", f"p{degree}")
    doc = f"Return the value of the polynomial {text} at x."
    listed = ", ".join(str(c) for c in reversed(coeffs))
    body = f"""    result = 0
    for c in ({listed},):
        result = result * x + c
    return result"""
    oracle = lambda x: sum(c * x**p for p, c in enumerate(coeffs))  # noqa: E731
    args = [(0,), (1,), (-1,), (r.randint(2, 9),), (r.randint(-20, -2),)]
    return name, "x", doc, body, oracle, args


def _collatz_steps(r):
    name = _pick(r, "collatz_steps", "steps_to_one", "collatz_length", "hailstone_steps")
    n = _pick(r, "n", "start", "value")
    doc = f"Return how many Collatz steps (halve if even, else 3*n + 1) take the positive integer {n} to 1."
    body = f"""    steps = 0
    while {n} != 1:
        if {n} % 2 == 0:
            {n} //= 2
        else:
            {n} = 3 * {n} + 1
        steps += 1
    return steps"""

    def oracle(x):
        s = 0
        while x != 1:
            x = x // 2 if x % 2 == 0 else 3 * x + 1
            s += 1
        return s

    args = [(1,), (2,), (3,), (6,), (r.randint(7, 1000),), (27,)]
    return name, n, doc, body, oracle, args


def _fizzbuzz(r):
    a, b = r.sample([2, 3, 4, 5, 7], 2)
    w1, w2 = r.sample(["Fizz", "Buzz", "Ping", "Pong", "Foo", "Bar", "Zip", "Zap"], 2)
    name = _pick(r, "fizzbuzz", "label", f"{w1.lower()}_{w2.lower()}", "say")
    n = _pick(r, "n", "i", "number")
    doc = (
        f"Return '{w1}{w2}' if {n} is divisible by both {a} and {b}, '{w1}' if only by {a}, "
        f"'{w2}' if only by {b}, and str({n}) otherwise."
    )
    body = f"""    if {n} % {a} == 0 and {n} % {b} == 0:
        return '{w1}{w2}'
    if {n} % {a} == 0:
        return '{w1}'
    if {n} % {b} == 0:
        return '{w2}'
    return str({n})"""

    def oracle(x):
        return (w1 if x % a == 0 else "") + (w2 if x % b == 0 else "") or str(x)

    args = [(a,), (b,), (a * b,), (1,), (r.randint(1, 200),), (r.randint(1, 200),)]
    return name, n, doc, body, oracle, args


_WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "apple",
    "banana",
    "kiwi",
    "tree",
    "river",
    "stone",
    "sky",
    "code",
    "data",
    "zebra",
]


def _random_text(r, n_words=None):
    n_words = n_words if n_words is not None else r.randint(0, 6)
    return " ".join(r.choice(_WORDS) for _ in range(n_words))


def _caesar(r):
    k = r.randint(1, 25)
    name = _pick(r, "caesar", "shift_letters", f"rot{k}", "encode_shift")
    s = _pick(r, "text", "s", "message")
    doc = f"Shift every lowercase ASCII letter of {s} by {k} places in the alphabet (wrapping around); leave other characters unchanged."
    body = f"""    out = []
    for ch in {s}:
        if 'a' <= ch <= 'z':
            out.append(chr((ord(ch) - ord('a') + {k}) % 26 + ord('a')))
        else:
            out.append(ch)
    return ''.join(out)"""
    oracle = lambda t: "".join(
        chr((ord(c) - 97 + k) % 26 + 97) if c.islower() and c.isascii() else c for c in t
    )  # noqa: E731
    args = [("",), ("abc xyz",), ("Hello, World!",), (_random_text(r),), (_random_text(r, 3),)]
    return name, s, doc, body, oracle, args


def _run_length(r):
    name = _pick(r, "run_length_encode", "rle", "compress_runs", "encode_runs")
    s = _pick(r, "s", "text", "chars")
    doc = f"Encode {s} as runs: each maximal run of one character becomes the character followed by the run length, e.g. 'aab' -> 'a2b1'."
    body = f"""    if not {s}:
        return ''
    parts = []
    current, count = {s}[0], 1
    for ch in {s}[1:]:
        if ch == current:
            count += 1
        else:
            parts.append(current + str(count))
            current, count = ch, 1
    parts.append(current + str(count))
    return ''.join(parts)"""

    def oracle(t):
        import itertools

        return "".join(k + str(len(list(g))) for k, g in itertools.groupby(t))

    alphabet = r.choice(["ab", "xyz", "01", "aabbc"])
    args = [("",), ("a",), ("aaab",)] + [
        ("".join(r.choice(alphabet) for _ in range(r.randint(2, 14))),) for _ in range(3)
    ]
    return name, s, doc, body, oracle, args


def _count_chars(r):
    chars = r.choice(["aeiou", "xyz", "aeiouy", "0123456789", " ", "abc"])
    label = {
        "aeiou": "vowels",
        "aeiouy": "vowels (y included)",
        "0123456789": "digits",
        " ": "spaces",
    }.get(chars, f"characters in {chars!r}")
    name = _pick(
        r,
        "count_"
        + (
            "vowels"
            if "ae" in chars
            else "digits"
            if "0" in chars
            else "spaces"
            if chars == " "
            else "chars"
        ),
        "tally",
        "count_matching",
        "how_many",
    )
    s = _pick(r, "s", "text", "line")
    doc = (
        f"Return how many characters of {s} are {label} (case-sensitive, characters of {chars!r})."
    )
    if r.random() < 0.5:
        body = f"    return sum(1 for ch in {s} if ch in {chars!r})"
    else:
        body = f"""    count = 0
    for ch in {s}:
        if ch in {chars!r}:
            count += 1
    return count"""
    oracle = lambda t: len([c for c in t if c in chars])  # noqa: E731
    args = [("",), (_random_text(r),), (_random_text(r) + " 42 x9",), (chars * 2,), ("Q",)]
    return name, s, doc, body, oracle, args


def _reverse_words(r):
    sep = r.choice([" ", ",", "-", "/"])
    name = _pick(r, "reverse_words", "reverse_fields", "flip_order", "backwards_words")
    s = _pick(r, "s", "text", "sentence")
    doc = f"Return {s} with its {sep!r}-separated fields in reverse order."
    body = f"    return {sep!r}.join(reversed({s}.split({sep!r})))"
    oracle = lambda t: sep.join(t.split(sep)[::-1])  # noqa: E731
    args = [
        ("",),
        ("one",),
        (sep.join(["a", "b", "c"]),),
        (sep.join(r.sample(_WORDS, 4)),),
        (sep + "x" + sep,),
    ]
    return name, s, doc, body, oracle, args


def _int_list(r, lo=-50, hi=50, max_len=8):
    return [r.randint(lo, hi) for _ in range(r.randint(0, max_len))]


def _running_max(r):
    name = _pick(r, "running_max", "prefix_maxima", "cumulative_max", "best_so_far")
    xs = _pick(r, "xs", "values", "numbers")
    doc = f"Return a list whose i-th element is the largest of {xs}[0], ..., {xs}[i]."
    body = f"""    result = []
    best = None
    for x in {xs}:
        if best is None or x > best:
            best = x
        result.append(best)
    return result"""

    def oracle(v):
        return [max(v[: i + 1]) for i in range(len(v))]

    args = [([],), ([3],), ([1, 2, 3],), ([3, 2, 1],)] + [(_int_list(r),) for _ in range(2)]
    return name, xs, doc, body, oracle, args


def _second_largest(r):
    name = _pick(r, "second_largest", "runner_up", "second_max", "next_best")
    xs = _pick(r, "xs", "values", "nums")
    doc = f"Return the second largest distinct value in {xs}, or None if it has fewer than two distinct values."
    body = f"""    distinct = sorted(set({xs}), reverse=True)
    if len(distinct) < 2:
        return None
    return distinct[1]"""
    oracle = lambda v: sorted(set(v))[-2] if len(set(v)) >= 2 else None  # noqa: E731
    args = [([],), ([5],), ([5, 5],), ([1, 3, 2],)] + [(_int_list(r),) for _ in range(2)]
    return name, xs, doc, body, oracle, args


def _chunk(r):
    k = r.randint(2, 5)
    name = _pick(r, "chunk", f"groups_of_{k}", "split_into_chunks", "batched")
    xs = _pick(r, "xs", "items", "seq")
    doc = f"Split the list {xs} into consecutive chunks of {k} elements; the last chunk may be shorter."
    body = f"    return [{xs}[i:i + {k}] for i in range(0, len({xs}), {k})]"
    oracle = lambda v: [v[i : i + k] for i in range(0, len(v), k)]  # noqa: E731
    args = [([],), (list(range(k)),), (list(range(k + 1)),)] + [
        (_int_list(r, 0, 9, 12),) for _ in range(2)
    ]
    return name, xs, doc, body, oracle, args


def _rotate(r):
    k = r.randint(1, 7)
    name = _pick(r, "rotate_left", f"rotate_by_{k}", "shift_list", "cycle_left")
    xs = _pick(r, "xs", "items", "values")
    doc = f"Return {xs} rotated left by {k} positions (an empty list stays empty)."
    body = f"""    if not {xs}:
        return []
    s = {k} % len({xs})
    return {xs}[s:] + {xs}[:s]"""

    def oracle(v):
        out = list(v)
        for _ in range(k if v else 0):
            out = out[1:] + out[:1]
        return out

    args = [([],), ([1],), (list(range(k)),)] + [(_int_list(r, 0, 9, 10),) for _ in range(3)]
    return name, xs, doc, body, oracle, args


def _dedupe(r):
    name = _pick(r, "dedupe", "unique_in_order", "remove_duplicates", "first_occurrences")
    xs = _pick(r, "xs", "items", "values")
    doc = f"Return the elements of {xs} without repeats, each at the position of its first occurrence."
    body = f"""    seen = set()
    result = []
    for x in {xs}:
        if x not in seen:
            seen.add(x)
            result.append(x)
    return result"""
    oracle = lambda v: list(dict.fromkeys(v))  # noqa: E731
    args = [([],), ([1, 1, 1],), ([3, 1, 3, 2, 1],)] + [(_int_list(r, 0, 5, 12),) for _ in range(2)]
    return name, xs, doc, body, oracle, args


def _binary_search(r):
    name = _pick(r, "binary_search", "find_index", "bisect_find", "search_sorted")
    doc = "Return the index of target in the sorted list xs of distinct integers, or -1 if it is absent."
    body = """    lo, hi = 0, len(xs) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if xs[mid] == target:
            return mid
        if xs[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1"""
    oracle = lambda v, t: v.index(t) if t in v else -1  # noqa: E731
    args = [([], 3), ([1], 1), ([1, 3, 5], 4)]
    for _ in range(4):
        v = sorted(r.sample(range(-30, 60), r.randint(1, 12)))
        args.append((v, r.choice(v) if r.random() < 0.6 else r.randint(-40, 70)))
    return name, "xs, target", doc, body, oracle, args


def _word_counts(r):
    m = r.randint(1, 5)
    name = _pick(r, "word_counts", "count_words", "frequencies", f"long_word_counts")
    s = _pick(r, "text", "s", "document")
    doc = f"Return a dict mapping each whitespace-separated word of {s} with at least {m} characters to its number of occurrences."
    body = f"""    counts = {{}}
    for word in {s}.split():
        if len(word) >= {m}:
            counts[word] = counts.get(word, 0) + 1
    return counts"""

    def oracle(t):
        import collections

        return dict(collections.Counter(w for w in t.split() if len(w) >= m))

    args = [("",), ("a bb ccc dddd eeeee",), (_random_text(r, 8),), (_random_text(r, 12),)]
    return name, s, doc, body, oracle, args


def _clamp_all(r):
    lo = r.randint(-10, 5)
    hi = lo + r.randint(1, 20)
    tag = lambda v: f"m{-v}" if v < 0 else str(v)  # noqa: E731
    name = _pick(r, "clamp_all", "clip_values", f"clamp_{tag(lo)}_{tag(hi)}", "bound_values")
    xs = _pick(r, "xs", "values", "data")
    doc = f"Return a list of the values of {xs} clamped to the range [{lo}, {hi}]."
    if r.random() < 0.5:
        body = f"    return [min(max(x, {lo}), {hi}) for x in {xs}]"
    else:
        body = f"""    result = []
    for x in {xs}:
        if x < {lo}:
            x = {lo}
        elif x > {hi}:
            x = {hi}
        result.append(x)
    return result"""
    oracle = lambda v: [lo if x < lo else hi if x > hi else x for x in v]  # noqa: E731
    args = [([],), ([lo - 1, hi + 1],), ([lo, hi],)] + [(_int_list(r, -30, 30),) for _ in range(2)]
    return name, xs, doc, body, oracle, args


def _gcd(r):
    name = _pick(r, "gcd", "greatest_common_divisor", "euclid", "common_factor")
    doc = (
        "Return the greatest common divisor of the non-negative integers a and b (gcd(0, 0) is 0)."
    )
    body = """    while b:
        a, b = b, a % b
    return a"""
    import math

    oracle = lambda a, b: math.gcd(a, b)  # noqa: E731
    args = [
        (0, 0),
        (0, 7),
        (12, 18),
        (r.randint(1, 500), r.randint(1, 500)),
        (r.randint(1, 99) * 6, r.randint(1, 99) * 4),
    ]
    return name, "a, b", doc, body, oracle, args


FAMILIES: dict[str, Callable] = {
    "sum_multiples": _sum_multiples,
    "digit_sum": _digit_sum,
    "count_divisors": _count_divisors,
    "is_prime": _is_prime,
    "poly_eval": _poly_eval,
    "collatz_steps": _collatz_steps,
    "fizzbuzz": _fizzbuzz,
    "caesar": _caesar,
    "run_length": _run_length,
    "count_chars": _count_chars,
    "reverse_words": _reverse_words,
    "running_max": _running_max,
    "second_largest": _second_largest,
    "chunk": _chunk,
    "rotate": _rotate,
    "dedupe": _dedupe,
    "binary_search": _binary_search,
    "word_counts": _word_counts,
    "clamp_all": _clamp_all,
    "gcd": _gcd,
}


# ---------------------------------------------------------------------------
# The generator's mistakes: each rewrites a solution's body, or returns None
# when it does not apply.


def _sub_first(pattern: str, repl: str, text: str) -> str | None:
    new, n = re.subn(pattern, repl, text, count=1)
    return new if n else None


MUTATIONS: dict[str, Callable[[str], str | None]] = {
    "off_by_one": lambda b: (
        _sub_first(r"range\(([^()]*?)\)", r"range(\1 + 1)", b) or _sub_first(r"\[1\]", "[0]", b)
    ),
    "flipped_comparison": lambda b: (
        _sub_first(r" <= ", " < ", b)
        or _sub_first(r" < ", " <= ", b)
        or _sub_first(r" == ", " != ", b)
    ),
    "wrong_constant": lambda b: _sub_first(
        r"(?<![\w.])([2-9])(?![\w.])", lambda m: str(int(m.group(1)) + 1), b
    ),
    "wrong_operator": lambda b: _sub_first(r" \+ ", " - ", b) or _sub_first(r" \* ", " + ", b),
    "infinite_loop": lambda b: "    while True:\n        pass\n" + b,
    "syntax_error": lambda b: b.replace(":\n", "\n", 1) if ":\n" in b else "    return (\n" + b,
    "early_exit": lambda b: "    import os\n    os._exit(0)\n" + b,
    "raises": lambda b: "    raise ValueError('not implemented')\n" + b,
}
# Rough weights: subtle mistakes are common, blunt ones rare (the blunt ones
# cost a sandbox timeout each).
_MUTATION_WEIGHTS = {
    "off_by_one": 4,
    "flipped_comparison": 4,
    "wrong_constant": 3,
    "wrong_operator": 3,
    "infinite_loop": 1,
    "syntax_error": 1,
    "early_exit": 1,
    "raises": 1,
}


def _render(
    name: str, params: str, doc: str, body: str, oracle, args: Sequence[tuple]
) -> tuple[str, str]:
    program = f'def {name}({params}):\n    """{doc}"""\n{body}\n'
    tests = "".join(
        f"assert {name}({', '.join(repr(a) for a in call)}) == {oracle(*call)!r}\n" for call in args
    )
    return program, tests


def generate(num: int, seed: int = 0, broken_fraction: float = 0.15) -> list[Candidate]:
    """`num` candidates; candidate i depends only on (seed, i)."""
    names = sorted(FAMILIES)
    out = []
    for i in range(num):
        r = random.Random(seed * 1_000_003 + i)
        family = names[r.randrange(len(names))]
        name, params, doc, body, oracle, args = FAMILIES[family](r)
        mutation = ""
        if r.random() < broken_fraction:
            # A weighted pick among the mistakes that apply to this body.
            kinds = [k for k in _MUTATION_WEIGHTS if MUTATIONS[k](body) not in (None, body)]
            kind = r.choices(kinds, weights=[_MUTATION_WEIGHTS[k] for k in kinds])[0]
            body, mutation = MUTATIONS[kind](body), kind
        program, tests = _render(name, params, doc, body, oracle, args)
        out.append(Candidate(family=family, program=program, tests=tests, mutation=mutation))
    return out


def verify(
    candidates: Sequence[Candidate],
    *,
    timeout_s: float = 2.0,
    memory_mb: int = 256,
    parallelism: int | None = None,
) -> list[Any]:
    """Runs each candidate's tests in the sandbox; returns sandbox Results."""
    from libs.sandbox import sandbox

    limits = sandbox.Limits(timeout_s=timeout_s, memory_mb=memory_mb, max_processes=16)
    jobs = [sandbox.Job(program=c.program, tests=c.tests, limits=limits) for c in candidates]
    return sandbox.run_many(jobs, parallelism=parallelism)


@functools.lru_cache(maxsize=8)
def verified(
    num_candidates: int = 400,
    seed: int = 0,
    broken_fraction: float = 0.15,
    timeout_s: float = 2.0,
    parallelism: int | None = None,
) -> tuple[tuple[str, ...], Stats]:
    """The documents of the candidates whose tests pass, and the run's Stats.
    Cached per process, so reading the source twice verifies once. If the
    sandbox cannot run here, no document is kept and Stats.error says why."""
    from libs.sandbox import sandbox

    candidates = generate(num_candidates, seed, broken_fraction)
    stats = Stats(candidates=len(candidates), mutated=sum(1 for c in candidates if c.mutation))
    try:
        sandbox.check_available()
    except sandbox.SandboxUnavailable as e:
        stats.error = f"sandbox unavailable, nothing kept: {e}"
        return (), stats
    results = verify(candidates, timeout_s=timeout_s, parallelism=parallelism)
    docs: list[str] = []
    seen: set[str] = set()
    for c, res in zip(candidates, results):
        if not res.passed:
            stats.rejected[res.status] = stats.rejected.get(res.status, 0) + 1
            if c.mutation:
                stats.rejected_mutations[c.mutation] = (
                    stats.rejected_mutations.get(c.mutation, 0) + 1
                )
            continue
        if c.document in seen:
            stats.duplicates += 1
            continue
        seen.add(c.document)
        stats.kept += 1
        stats.kept_mutated += bool(c.mutation)
        docs.append(c.document)
    return tuple(docs), stats


def verified_documents(**options) -> Iterator[str]:
    """The documents of `verified(**options)` (the source reader's entry)."""
    docs, _ = verified(**options)
    yield from docs
