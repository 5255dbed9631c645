// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {DstackClusterElection} from "../src/DstackClusterElection.sol";
import {LeaderFixture} from "./utils/LeaderFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Leader election: f = ⌊(n−1)/2⌋, f+1 no-confidence votes replace the leader by the lowest-id
/// active seat that is itself under the threshold.
contract LeaderTest is LeaderFixture {

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
        election.electLeader(n);
        assertEq(election.leaderTokenId(), 1, string.concat(tag, ": lowest id elected"));
        uint256 f = (n - 1) / 2;
        assertEq(election.voteThreshold(), f + 1, string.concat(tag, ": threshold f+1"));
        if (n == 1) {
            vm.prank(_holder(1));
            vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderCannotVoteForSelf.selector, 1));
            election.castVote(1, 1);
            return;
        }
        // f votes: not enough.
        for (uint256 v = 2; v < 2 + f; ++v) {
            _vote(v, 1);
        }
        assertEq(election.leaderTokenId(), 1, string.concat(tag, ": f votes keep the leader"));
        assertEq(election.votesAgainst(1), f, string.concat(tag, ": f votes counted"));
        // A voter changes its mind: moving a vote away and back is counted once.
        if (f > 0) {
            _vote(2, n);
            assertEq(election.votesAgainst(1), f - 1, string.concat(tag, ": vote moved away"));
            assertEq(election.votesAgainst(n), 1, string.concat(tag, ": vote moved to n"));
            vm.prank(_holder(2));
            election.withdrawVote(2);
            assertEq(election.votesAgainst(n), 0, string.concat(tag, ": vote withdrawn"));
            _vote(2, 1);
            assertEq(election.votesAgainst(1), f, string.concat(tag, ": vote back"));
        }
        // The (f+1)-th vote replaces the leader by seat 2, the lowest id under the threshold.
        uint256 lastVoter = 2 + f;
        uint256 term = election.leaderTerm();
        vm.expectEmit();
        emit DstackClusterElection.LeaderReplaced(1, 2, f + 1, term + 1);
        _vote(lastVoter, 1);
        assertEq(election.leaderTerm(), term + 1, string.concat(tag, ": a replacement is a new term"));
        assertEq(election.leaderTokenId(), 2, string.concat(tag, ": f+1 votes replace the leader"));
    }

    function test_ReplacementSkipsSeatsOverTheThreshold() public {
        _seats(5); // f = 2, threshold 3
        vm.prank(_holder(1));
        election.electLeader(1);
        _vote(3, 2);
        _vote(4, 2);
        _vote(5, 2); // seat 2 is over the threshold, but it is not the leader
        assertEq(election.leaderTokenId(), 1, "votes against a non-leader do not change the leader");
        _vote(3, 1);
        _vote(4, 1);
        _vote(5, 1); // moved votes: seat 2 now has 0 against, seat 1 has 3
        assertEq(election.leaderTokenId(), 2, "seat 2 is eligible again after the votes moved");
    }

    function test_RevertIf_ElectingWithALeader() public {
        _seats(2);
        vm.prank(_holder(1));
        election.electLeader(1);
        vm.prank(_holder(2));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderAlreadyElected.selector, 1));
        election.electLeader(2);
    }

    function test_RevertIf_VoterDoesNotHoldTheSeat() public {
        _seats(3);
        vm.prank(_holder(2));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNotSeatAgent.selector, 3, _holder(2)));
        election.castVote(3, 1);
    }

    function test_DeactivatingTheLeaderClearsIt() public {
        _seats(3);
        vm.prank(_holder(1));
        election.electLeader(1);
        vm.prank(_holder(1));
        vm.expectEmit();
        emit DstackClusterElection.LeaderCleared(1, 2);
        cluster.deactivate(1);
        assertEq(election.leaderTokenId(), 0, "no leader");
        vm.prank(_holder(1));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderSeatInactive.selector, 1));
        election.electLeader(1);
        vm.prank(_holder(3));
        election.electLeader(3);
        assertEq(election.leaderTokenId(), 2, "lowest active seat");
    }

    function test_RevokingTheLeaderClearsItAndWithdrawsItsVotes() public {
        _seats(3);
        vm.prank(_holder(1));
        election.electLeader(1);
        _vote(1, 3);
        assertEq(election.votesAgainst(3), 1, "vote by the leader");
        vm.prank(OWNER);
        cluster.revoke(1);
        assertEq(election.leaderTokenId(), 0, "no leader");
        assertEq(election.votesAgainst(3), 0, "revoked seat's vote withdrawn");
    }

    function test_ShrinkingClusterLowersTheThreshold() public {
        _seats(5); // threshold 3
        vm.prank(_holder(1));
        election.electLeader(1);
        _vote(2, 1);
        _vote(3, 1);
        assertEq(election.leaderTokenId(), 1, "2 of 3 needed");
        vm.prank(_holder(5));
        cluster.deactivate(5); // n = 4, threshold 2
        assertEq(election.leaderTokenId(), 2, "threshold reached by shrinking");
    }

    /// @notice The fencing term grows by one at every leader change, whatever made it, and at nothing else.
    function test_TheTermGrowsAtEveryLeaderChangeAndOnlyThen() public {
        _seats(5); // threshold 3
        assertEq(election.leaderTerm(), 0, "no leader yet: term 0");
        vm.prank(_holder(3));
        vm.expectEmit();
        emit DstackClusterElection.LeaderElected(1, 1);
        election.electLeader(3);
        assertEq(election.leaderTerm(), 1, "elected");
        _vote(2, 1);
        _vote(3, 1);
        vm.prank(_holder(2));
        election.withdrawVote(2);
        _vote(2, 4);
        assertEq(election.leaderTerm(), 1, "votes that replace nobody leave the term");
        _vote(2, 1);
        _vote(4, 1); // the third vote replaces seat 1 with seat 2
        assertEq(election.leaderTokenId(), 2, "replaced");
        assertEq(election.leaderTerm(), 2, "replaced: a new term");
        vm.prank(_holder(5));
        cluster.deactivate(5); // n = 4, threshold 2: no change for seat 2, which has no votes
        assertEq(election.leaderTerm(), 2, "a smaller cluster that keeps the leader keeps the term");
        vm.prank(OWNER);
        vm.expectEmit();
        emit DstackClusterElection.LeaderCleared(2, 3);
        cluster.revoke(2);
        assertEq(election.leaderTerm(), 3, "cleared: a new term");
        vm.prank(_holder(4));
        election.electLeader(4);
        assertEq(election.leaderTerm(), 4, "elected again: a new term, never an old one");
    }

    function test_TheClusterMakesItsElectionAndOnlyTheClusterSaysASeatLeft() public {
        _seats(2);
        assertEq(address(election.cluster()), address(cluster), "the election reads this cluster");
        vm.prank(_holder(1));
        election.electLeader(1);
        vm.prank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderOnlyCluster.selector, OWNER));
        election.seatLeft(1);
        vm.prank(_holder(1));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderOnlyCluster.selector, _holder(1)));
        election.seatLeft(1);
        assertEq(election.leaderTokenId(), 1, "nobody but the cluster unseats a leader by saying it left");
        vm.prank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderOnlyCluster.selector, OWNER));
        election.seatJoined(5);
    }

    function test_WhoMayActForASeat() public {
        _seats(2);
        assertTrue(cluster.canActFor(1, _holder(1)), "its holder");
        assertFalse(cluster.canActFor(1, _holder(2)), "another seat's holder");
        assertFalse(cluster.canActFor(3, _holder(1)), "a seat never minted: nobody");
        vm.prank(_holder(1));
        cluster.approve(address(0xA11CE), 1);
        assertTrue(cluster.canActFor(1, address(0xA11CE)), "whoever the holder approved");
        vm.prank(OWNER);
        cluster.revoke(1);
        assertFalse(cluster.canActFor(1, _holder(1)), "a revoked seat: nobody");
        assertFalse(cluster.isActiveSeat(1), "revoked");
        assertTrue(cluster.isActiveSeat(2), "active");
    }

    function _u(uint256 v) internal pure returns (string memory) {
        return string(abi.encodePacked(bytes1(uint8(48 + v))));
    }
}
