"""The verdict rule: an interval that crosses zero is never a finding."""

import pytest

from studies import findings
from studies.compare import Effect


def _gain(low, high):
    return Effect((low + high) / 2, low, high, seeds=3, items=100)


@pytest.mark.parametrize(
    "gains, verdict",
    [
        ((_gain(0.1, 0.3), _gain(-1, 1)), findings.REPRODUCED),
        ((_gain(0.1, 0.3), None), findings.REPRODUCED),
        ((_gain(-0.3, -0.1), _gain(-1, 1)), findings.CONTRADICTED),
        ((_gain(0.1, 0.3), _gain(-0.3, -0.1)), findings.MIXED),
        ((_gain(-0.1, 0.3), _gain(-1, 1)), findings.UNRESOLVED),
        ((_gain(0.0, 0.0), None), findings.UNRESOLVED),
        ((None, None), findings.PENDING),
    ],
)
def test_verdicts(gains, verdict):
    assert findings.verdict(*gains) == verdict


def test_every_claim_names_a_scored_category_and_two_arms():
    for claim in findings.CLAIMS:
        assert claim.category in ("nl_reasoning", "world_knowledge", "code")
        assert claim.a != claim.b and claim.finding and claim.paper
    # Each of the paper's findings the tiny study's arms can test is there.
    assert len({c.finding for c in findings.CLAIMS}) == 7
