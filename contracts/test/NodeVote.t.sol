// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {DstackClusterElection} from "../src/DstackClusterElection.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice A seat's node, the key the seat is bound to, may elect, vote and withdraw for the seat while the seat
/// has a record, as its holder may: the agent fails a leader over without a person. It is still the seat's one
/// vote, and the right goes with the record.
contract NodeVoteTest is ClusterFixture {
    uint256 internal seatA;
    uint256 internal seatB;
    uint256 internal seatC;
    address internal nodeA;
    address internal nodeB;

    function setUp() public {
        cluster = _deploy();
        seatA = _mint(HOLDER_A, INSTANCE_A);
        seatB = _mint(HOLDER_B, INSTANCE_B);
        seatC = _mint(address(0xC), "");
        nodeA = vm.addr(DERIVED_KEY_A);
        nodeB = vm.addr(DERIVED_KEY_B);
        _register(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        _register(seatB, DERIVED_KEY_B, INSTANCE_B, WG_KEY_B, 1);
    }

    function test_TheBoundNodeIsTheSeatsNodeWhileItHasARecord() public {
        assertEq(cluster.nodeOf(seatA), nodeA, "node of seat A");
        assertEq(cluster.nodeOf(seatB), nodeB, "node of seat B");
        assertEq(cluster.nodeOf(seatC), address(0), "a seat without a record has no node");
        uint256 seatD = _mint(address(0xD), "0000000000000000000000000000000000000d0d");
        address nodeD = vm.addr(_nodeKey("0000000000000000000000000000000000000d0d"));
        assertEq(cluster.getPeer(seatD).node, nodeD, "bound");
        assertEq(cluster.nodeOf(seatD), address(0), "bound, but no record yet: no node");
    }

    function test_ANodeElectsVotesAndWithdraws() public {
        vm.prank(nodeB);
        election.electLeader(seatB);
        assertEq(election.leaderTokenId(), seatA, "the lowest active seat leads");

        vm.prank(nodeB);
        vm.expectEmit();
        emit DstackClusterElection.VoteCast(seatB, seatA);
        election.castVote(seatB, seatA);
        assertEq(election.voteOf(seatB), seatA, "seat B's vote");
        assertEq(election.votesAgainst(seatA), 1, "counted once");

        vm.prank(nodeB);
        election.withdrawVote(seatB);
        assertEq(election.votesAgainst(seatA), 0, "withdrawn by the node");
    }

    function test_HolderAndNodeShareTheSeatsOneVote() public {
        vm.prank(HOLDER_B);
        election.castVote(seatB, seatA);
        vm.prank(nodeB);
        election.castVote(seatB, seatA);
        assertEq(election.votesAgainst(seatA), 1, "the node's vote is the holder's vote, not a second one");
        vm.prank(nodeB);
        election.withdrawVote(seatB);
        assertEq(election.voteOf(seatB), 0, "the node withdrew the holder's vote");
        vm.prank(HOLDER_B);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNoVote.selector, seatB));
        election.withdrawVote(seatB);
    }

    function test_TwoNodesOutOfThreeReplaceTheLeader() public {
        vm.prank(address(0xC));
        election.electLeader(seatC);
        vm.prank(nodeB);
        election.castVote(seatB, seatA);
        vm.prank(address(0xC));
        vm.expectEmit();
        emit DstackClusterElection.LeaderReplaced(seatA, seatB, 2, 2);
        election.castVote(seatC, seatA);
        assertEq(election.leaderTokenId(), seatB, "seat B leads");
    }

    function test_RevertIf_ANodeVotesForAnotherSeat() public {
        vm.prank(nodeA);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNotSeatAgent.selector, seatB, nodeA));
        election.castVote(seatB, seatC);
        vm.prank(nodeA);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNotSeatAgent.selector, seatC, nodeA));
        election.electLeader(seatC);
    }

    function test_RevertIf_ANodeVotesBeforeItsRecord() public {
        string memory instanceD = "0000000000000000000000000000000000000d0d";
        uint256 seatD = _mint(address(0xD), instanceD);
        address nodeD = vm.addr(_nodeKey(instanceD));
        vm.prank(nodeD);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNotSeatAgent.selector, seatD, nodeD));
        election.castVote(seatD, seatA);
        assertFalse(cluster.canActFor(seatD, nodeD), "bound is not enough");
        _register(seatD, _nodeKey(instanceD), instanceD, keccak256("wireguard key D"), 1);
        vm.prank(nodeD);
        election.castVote(seatD, seatA);
        assertEq(election.voteOf(seatD), seatA, "with its record, the node votes");
    }

    function test_ATransferTakesTheNodesRightAway() public {
        vm.prank(nodeB);
        election.castVote(seatB, seatA);
        vm.prank(HOLDER_B);
        cluster.transferFrom(HOLDER_B, address(0xBB), seatB);
        assertEq(cluster.nodeOf(seatB), address(0), "the record went with the transfer");
        vm.prank(nodeB);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNotSeatAgent.selector, seatB, nodeB));
        election.withdrawVote(seatB);
        vm.prank(address(0xBB));
        election.withdrawVote(seatB);
    }

    function test_ANodeVotesOnlyWhileItsRecordStands() public {
        vm.prank(HOLDER_B);
        cluster.deactivate(seatB);
        vm.prank(HOLDER_B);
        cluster.activate(seatB);
        assertEq(cluster.nodeOf(seatB), address(0), "deactivating cleared the record");
        vm.prank(nodeB);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNotSeatAgent.selector, seatB, nodeB));
        election.castVote(seatB, seatA);
        _register(seatB, DERIVED_KEY_B, INSTANCE_B, WG_KEY_B, 2);
        vm.prank(nodeB);
        election.castVote(seatB, seatA);
        assertEq(election.voteOf(seatB), seatA, "registered again, the node votes again");
    }
}
