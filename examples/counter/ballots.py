"""Ballots, the mesh's terms and majorities: what fences a deposed leader off, and what a count needs to be
acknowledged."""
from __future__ import annotations

from typing import Any

# A ballot: (mesh term, round, leader token). Compared as a tuple: the mesh's fencing term first, so a
# leadership the chain has replaced loses to the next one whatever its round; then the round, for a leader
# that syncs again within its term; then the token, so that two leaders never share one.
Ballot = tuple[int, int, int]


def majority(cluster_size: int) -> int:
    return cluster_size // 2 + 1


def ballot_of(reply: dict[str, Any] | None) -> Ballot:
    """The ballot a refusal names (what the peer promised, or its agent's newer term); zeros where absent."""
    def num(key: str) -> int:
        value = (reply or {}).get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return num("term"), num("round"), num("leader")


def mesh_term(leader: Any) -> int:
    """The leader's fencing term as the agent reports it; 0 from an agent that reports none, which leaves
    the counter's own rounds to fence leaders, as they did before the mesh had terms."""
    term = getattr(leader, "term", None)
    return term if isinstance(term, int) and not isinstance(term, bool) else 0
