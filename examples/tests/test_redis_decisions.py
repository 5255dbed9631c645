"""follow_leader's Redis decisions that need no Redis: when a hand-off's flush is done, and what INFO says."""
from __future__ import annotations

import pytest
from follow_leader import Flushed, RedisUnavailable, connected_replicas


@pytest.mark.parametrize(("offset", "acked", "connected", "complete"), [
    (10, [], 0, False),         # no replica: nothing has the stream
    (10, [10], 2, False),       # one replica still in its first sync, missing from ROLE
    (10, [10, 9], 2, False),    # one behind
    (10, [10, 12], 2, True),
])
def test_a_flush_is_complete_only_when_every_replica_is_online_and_has_the_offset(
        offset: int, acked: list[int], connected: int, complete: bool) -> None:
    assert Flushed(offset, acked, connected).complete() is complete


def test_the_replica_count_reads_from_either_clients_info() -> None:
    assert connected_replicas([{"role": "master", "connected_slaves": 2}]) == 2
    assert connected_replicas(["# Replication", "role:master", "connected_slaves:1",
                               "slave0:ip=127.0.0.1,port=7702,state=wait_bgsave,offset=0,lag=0"]) == 1
    with pytest.raises(RedisUnavailable, match="connected_slaves"):
        connected_replicas(["role:master"])
