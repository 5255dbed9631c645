// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Leader election: f = ⌊(n−1)/2⌋, f+1 no-confidence votes replace the leader by the lowest-id
/// active seat that is itself under the threshold.
contract LeaderTest is ClusterFixture {
    function setUp() public {
        cluster = _deploy();
    }

    function _holder(uint256 i) internal pure returns (address) {
        return address(uint160(0x1000 + i));
    }

    function _seats(uint256 n) internal {
        for (uint256 i = 1; i <= n; ++i) {
            _mint(_holder(i), "");
        }
    }

    function _vote(uint256 voter, uint256 target) internal {
        vm.prank(_holder(voter));
        cluster.castVote(voter, target);
    }

    function test_ElectionForOneToSevenSeats() public {
        for (uint256 n = 1; n <= 7; ++n) {
            cluster = _deploy();
            _seats(n);
            _checkElection(n);
        }
    }

    function _checkElection(uint256 n) internal {
        string memory tag = string.concat("n=", _u(n));
        vm.prank(_holder(n));
        cluster.electLeader(n);
        assertEq(cluster.leaderTokenId(), 1, string.concat(tag, ": lowest id elected"));
        uint256 f = (n - 1) / 2;
        assertEq(cluster.voteThreshold(), f + 1, string.concat(tag, ": threshold f+1"));
        if (n == 1) {
            vm.prank(_holder(1));
            vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.LeaderCannotVoteForSelf.selector, 1));
            cluster.castVote(1, 1);
            return;
        }
        // f votes: not enough.
        for (uint256 v = 2; v < 2 + f; ++v) {
            _vote(v, 1);
        }
        assertEq(cluster.leaderTokenId(), 1, string.concat(tag, ": f votes keep the leader"));
        assertEq(cluster.votesAgainst(1), f, string.concat(tag, ": f votes counted"));
        // A voter changes its mind: moving a vote away and back is counted once.
        if (f > 0) {
            _vote(2, n);
            assertEq(cluster.votesAgainst(1), f - 1, string.concat(tag, ": vote moved away"));
            assertEq(cluster.votesAgainst(n), 1, string.concat(tag, ": vote moved to n"));
            vm.prank(_holder(2));
            cluster.withdrawVote(2);
            assertEq(cluster.votesAgainst(n), 0, string.concat(tag, ": vote withdrawn"));
            _vote(2, 1);
            assertEq(cluster.votesAgainst(1), f, string.concat(tag, ": vote back"));
        }
        // The (f+1)-th vote replaces the leader by seat 2, the lowest id under the threshold.
        uint256 lastVoter = 2 + f;
        uint256 term = cluster.leaderTerm();
        vm.expectEmit();
        emit DstackClusterNFT.LeaderReplaced(1, 2, f + 1, term + 1);
        _vote(lastVoter, 1);
        assertEq(cluster.leaderTerm(), term + 1, string.concat(tag, ": a replacement is a new term"));
        assertEq(cluster.leaderTokenId(), 2, string.concat(tag, ": f+1 votes replace the leader"));
    }

    function test_ReplacementSkipsSeatsOverTheThreshold() public {
        _seats(5); // f = 2, threshold 3
        vm.prank(_holder(1));
        cluster.electLeader(1);
        _vote(3, 2);
        _vote(4, 2);
        _vote(5, 2); // seat 2 is over the threshold, but it is not the leader
        assertEq(cluster.leaderTokenId(), 1, "votes against a non-leader do not change the leader");
        _vote(3, 1);
        _vote(4, 1);
        _vote(5, 1); // moved votes: seat 2 now has 0 against, seat 1 has 3
        assertEq(cluster.leaderTokenId(), 2, "seat 2 is eligible again after the votes moved");
    }

    function test_RevertIf_ElectingWithALeader() public {
        _seats(2);
        vm.prank(_holder(1));
        cluster.electLeader(1);
        vm.prank(_holder(2));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.LeaderAlreadyElected.selector, 1));
        cluster.electLeader(2);
    }

    function test_RevertIf_VoterDoesNotHoldTheSeat() public {
        _seats(3);
        vm.prank(_holder(2));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterNotSeatHolder.selector, 3, _holder(2)));
        cluster.castVote(3, 1);
    }

    function test_DeactivatingTheLeaderClearsIt() public {
        _seats(3);
        vm.prank(_holder(1));
        cluster.electLeader(1);
        vm.prank(_holder(1));
        vm.expectEmit();
        emit DstackClusterNFT.LeaderCleared(1, 2);
        cluster.deactivate(1);
        assertEq(cluster.leaderTokenId(), 0, "no leader");
        vm.prank(_holder(1));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterSeatInactive.selector, 1));
        cluster.electLeader(1);
        vm.prank(_holder(3));
        cluster.electLeader(3);
        assertEq(cluster.leaderTokenId(), 2, "lowest active seat");
    }

    function test_RevokingTheLeaderClearsItAndWithdrawsItsVotes() public {
        _seats(3);
        vm.prank(_holder(1));
        cluster.electLeader(1);
        _vote(1, 3);
        assertEq(cluster.votesAgainst(3), 1, "vote by the leader");
        vm.prank(OWNER);
        cluster.revoke(1);
        assertEq(cluster.leaderTokenId(), 0, "no leader");
        assertEq(cluster.votesAgainst(3), 0, "revoked seat's vote withdrawn");
    }

    function test_ShrinkingClusterLowersTheThreshold() public {
        _seats(5); // threshold 3
        vm.prank(_holder(1));
        cluster.electLeader(1);
        _vote(2, 1);
        _vote(3, 1);
        assertEq(cluster.leaderTokenId(), 1, "2 of 3 needed");
        vm.prank(_holder(5));
        cluster.deactivate(5); // n = 4, threshold 2
        assertEq(cluster.leaderTokenId(), 2, "threshold reached by shrinking");
    }

    /// @notice The fencing term grows by one at every leader change, whatever made it, and at nothing else.
    function test_TheTermGrowsAtEveryLeaderChangeAndOnlyThen() public {
        _seats(5); // threshold 3
        assertEq(cluster.leaderTerm(), 0, "no leader yet: term 0");
        vm.prank(_holder(3));
        vm.expectEmit();
        emit DstackClusterNFT.LeaderElected(1, 1);
        cluster.electLeader(3);
        assertEq(cluster.leaderTerm(), 1, "elected");
        _vote(2, 1);
        _vote(3, 1);
        vm.prank(_holder(2));
        cluster.withdrawVote(2);
        _vote(2, 4);
        assertEq(cluster.leaderTerm(), 1, "votes that replace nobody leave the term");
        _vote(2, 1);
        _vote(4, 1); // the third vote replaces seat 1 with seat 2
        assertEq(cluster.leaderTokenId(), 2, "replaced");
        assertEq(cluster.leaderTerm(), 2, "replaced: a new term");
        vm.prank(_holder(5));
        cluster.deactivate(5); // n = 4, threshold 2: no change for seat 2, which has no votes
        assertEq(cluster.leaderTerm(), 2, "a smaller cluster that keeps the leader keeps the term");
        vm.prank(OWNER);
        vm.expectEmit();
        emit DstackClusterNFT.LeaderCleared(2, 3);
        cluster.revoke(2);
        assertEq(cluster.leaderTerm(), 3, "cleared: a new term");
        vm.prank(_holder(4));
        cluster.electLeader(4);
        assertEq(cluster.leaderTerm(), 4, "elected again: a new term, never an old one");
    }

    function _u(uint256 v) internal pure returns (string memory) {
        return string(abi.encodePacked(bytes1(uint8(48 + v))));
    }
}
