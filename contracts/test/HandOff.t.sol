// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterElection} from "../src/DstackClusterElection.sol";
import {LeaderFixture} from "./utils/LeaderFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Planned changes of leader: the leader hands its term over, and seats are drained.
contract HandOffTest is LeaderFixture {
    function test_TheLeaderHandsItsTermToAnotherSeat() public {
        _seats(3);
        _elect();
        vm.prank(_holder(1));
        vm.expectEmit();
        emit DstackClusterElection.LeaderHandedOff(1, 3, 2);
        election.handOff(1, 3);
        assertEq(election.leaderTokenId(), 3, "seat 3 leads");
        assertEq(election.leaderTerm(), 2, "a hand-off is a new term");
    }

    function test_TheLeadersNodeMayHandOffAsItsHolderMay() public {
        _seats(2);
        uint256 third = _mint(_holder(3), INSTANCE_A);
        _register(third, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        _elect();
        vm.prank(_holder(1));
        election.handOff(1, third);
        vm.prank(vm.addr(DERIVED_KEY_A));
        election.handOff(third, 2);
        assertEq(election.leaderTokenId(), 2, "seat 3's bound node handed its term on");
        assertEq(election.leaderTerm(), 3, "two hand-offs, two terms");
    }

    function test_RevertIf_TheCallerIsNotTheLeaderOrDoesNotActForIt() public {
        _seats(3);
        _elect();
        vm.prank(_holder(2));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNotLeader.selector, 2, 1));
        election.handOff(2, 3);
        vm.prank(_holder(2));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNotSeatAgent.selector, 1, _holder(2)));
        election.handOff(1, 2);
    }

    function test_RevertIf_TheSuccessorIsItselfInactiveOverTheThresholdOrDraining() public {
        _seats(5); // threshold 3
        _elect();
        vm.startPrank(_holder(1));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderHandOffIneligible.selector, 1));
        election.handOff(1, 1);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderHandOffIneligible.selector, 9));
        election.handOff(1, 9);
        vm.stopPrank();
        _vote(3, 2);
        _vote(4, 2);
        _vote(5, 2);
        vm.prank(_holder(1));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderHandOffIneligible.selector, 2));
        election.handOff(1, 2);
        vm.prank(_holder(3));
        election.setDraining(3, true);
        vm.prank(_holder(1));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderHandOffIneligible.selector, 3));
        election.handOff(1, 3);
        vm.prank(_holder(1));
        election.handOff(1, 4);
        assertEq(election.leaderTokenId(), 4, "the eligible seat leads");
    }

    function test_ASeatsHolderDrainsItAndTakesItBack() public {
        _seats(2);
        vm.prank(_holder(2));
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNotSeatAgent.selector, 1, _holder(2)));
        election.setDraining(1, true);
        vm.prank(_holder(1));
        vm.expectEmit();
        emit DstackClusterElection.SeatDraining(1, true);
        election.setDraining(1, true);
        assertTrue(election.draining(1), "draining");
        vm.recordLogs();
        vm.prank(_holder(1));
        election.setDraining(1, true);
        assertEq(vm.getRecordedLogs().length, 0, "the same again: no event");
        vm.prank(_holder(2));
        election.setDraining(2, true);
        assertEq(election.drainingSeats().length, 2, "both listed");
        vm.prank(_holder(1));
        election.setDraining(1, false);
        assertTrue(!election.draining(1), "back");
        uint256[] memory left = election.drainingSeats();
        assertEq(left.length, 1, "one left");
        assertEq(left[0], 2, "seat 2 still drains");
        vm.prank(OWNER);
        cluster.revoke(2);
        assertEq(election.drainingSeats().length, 0, "a seat that leaves stops draining");
    }

    function test_ElectionsAndReplacementsPassOverDrainingSeatsWhileAnotherIsEligible() public {
        _seats(3); // threshold 2
        vm.prank(_holder(1));
        election.setDraining(1, true);
        vm.prank(_holder(3));
        election.electLeader(3);
        assertEq(election.leaderTokenId(), 2, "seat 1 drains: seat 2 is elected");
        vm.prank(_holder(3));
        election.setDraining(3, true);
        _vote(1, 2);
        _vote(3, 2);
        assertEq(election.leaderTokenId(), 1, "every eligible seat drains: the lowest of them");
    }
}
