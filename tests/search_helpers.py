"""Driving a backend's search without building anything, for the tests of its stages."""

from __future__ import annotations

from tuners.base import TrialOutcome


def all_proposals(search) -> list[dict]:
    """Every configuration the search proposes when each one is measured ok and the baseline stays the best."""
    proposed, latency = [], 1.0
    while batch := search.ask():
        for candidate in batch:
            proposed.append(dict(candidate.config))
            search.tell(TrialOutcome(candidate, True, latency))
            latency += 1.0
    return proposed
