// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {DstackClusterElection} from "../src/DstackClusterElection.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice A seat's holder can bind it to any instance id with a sibling's genuine chain (dstack's GetKey proves
/// the app, not the instance), and the contract cannot verify the quote that would show the lie; agents refuse
/// such a seat, but its claim locked the genuine instance out until the owner revoked it. Now the members
/// dispute it: f + 1 active seats, as many as vote a leader out, release the binding, the genuine instance is
/// bound with no owner's hand, and the squatting seat may not claim that instance again.
contract DisputeTest is ClusterFixture {
    /// The instance the squatter claims before its genuine node is bound, and that node's key.
    string internal constant INSTANCE_D = "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0";
    address internal constant HOLDER_S = address(0x5);
    /// The squatter's node key: a sibling instance's, which dstack vouches for under any instance id.
    uint256 internal constant KEY_S = 0x5A5;

    uint256 internal seatA;
    uint256 internal seatB;
    uint256 internal seatS;

    function setUp() public {
        cluster = _deploy();
        seatA = _mint(HOLDER_A, INSTANCE_A);
        seatB = _mint(HOLDER_B, INSTANCE_B);
        seatS = _mint(HOLDER_S, "");
        vm.roll(50);
        _bindWithConsent(HOLDER_S, seatS, KEY_S, INSTANCE_D);
    }

    function _dispute(address holder, uint256 voter, uint256 target) internal {
        uint64 boundBlock = cluster.boundBlockOf(target);
        vm.prank(holder);
        election.disputeBinding(voter, target, boundBlock);
    }

    function test_ASquattedInstanceIsReleasedByAMajorityAndTheGenuineNodeIsBound() public {
        DstackClusterNFT.NodeBinding memory genuine = _binding(_nodeKey(INSTANCE_D), INSTANCE_D, HOLDER_A);
        vm.prank(OWNER);
        vm.expectRevert(
            abi.encodeWithSelector(DstackClusterNFT.ClusterInstanceAlreadyBound.selector, INSTANCE_D, seatS)
        );
        cluster.mintNodeAccess(HOLDER_A, genuine);

        vm.expectEmit();
        emit DstackClusterElection.BindingDisputed(seatA, seatS, 50, 1);
        _dispute(HOLDER_A, seatA, seatS);
        assertEq(cluster.tokenOfInstance(INSTANCE_D), seatS, "one of three is not a majority");

        vm.expectEmit();
        emit DstackClusterElection.BindingReleased(seatS, 50, 2);
        vm.expectEmit();
        emit DstackClusterNFT.InstanceUnbound(seatS, INSTANCE_D);
        _dispute(HOLDER_B, seatB, seatS);
        assertEq(cluster.tokenOfInstance(INSTANCE_D), 0, "released");
        DstackClusterNFT.Peer memory s = cluster.getPeer(seatS);
        assertEq(s.node, address(0), "no node may sign for the seat");
        assertEq(s.instanceId, "", "no instance");
        assertEq(uint256(cluster.boundBlockOf(seatS)), 0, "no binding to dispute");

        // The genuine node's binding lands, with no owner's hand: its holder may be anyone with a seat.
        _bindWithConsent(HOLDER_A, _mint(HOLDER_A, ""), _nodeKey(INSTANCE_D), INSTANCE_D);
        assertTrue(cluster.tokenOfInstance(INSTANCE_D) != 0, "bound to the genuine node");
    }

    function test_RevertIf_TheDisputedSeatClaimsTheSameInstanceAgain() public {
        _dispute(HOLDER_A, seatA, seatS);
        _dispute(HOLDER_B, seatB, seatS);
        DstackClusterNFT.NodeBinding memory again = _binding(KEY_S, INSTANCE_D, HOLDER_S);
        vm.prank(HOLDER_S);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterClaimDisputed.selector, INSTANCE_D, seatS));
        cluster.bindInstance(seatS, again);
        // Another instance it may still bind: the seat is the holder's.
        _bindWithConsent(HOLDER_S, seatS, KEY_S, "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0");
    }

    function test_TheOwnerClearsAReleasedClaimAndTheSeatBindsItsInstanceAgain() public {
        _dispute(HOLDER_A, seatA, seatS);
        _dispute(HOLDER_B, seatB, seatS);
        vm.prank(HOLDER_S);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterClaimDisputed.selector, INSTANCE_D, seatS));
        cluster.bindInstance(seatS, _binding(KEY_S, INSTANCE_D, HOLDER_S));

        vm.expectEmit();
        emit DstackClusterNFT.DisputedClaimCleared(seatS, keccak256(bytes(INSTANCE_D)));
        vm.prank(OWNER);
        cluster.clearDisputedClaim(seatS, keccak256(bytes(INSTANCE_D)));
        _bindWithConsent(HOLDER_S, seatS, KEY_S, INSTANCE_D);
        assertEq(cluster.tokenOfInstance(INSTANCE_D), seatS, "bound again");
    }

    function test_RevertIf_AnyoneButTheOwnerClearsAReleasedClaim() public {
        _dispute(HOLDER_A, seatA, seatS);
        _dispute(HOLDER_B, seatB, seatS);
        vm.prank(HOLDER_S);
        vm.expectRevert();
        cluster.clearDisputedClaim(seatS, keccak256(bytes(INSTANCE_D)));
    }

    function test_ASeatDisputesABindingOnceAndAnEarlierBindingsDisputesDoNotCount() public {
        _dispute(HOLDER_A, seatA, seatS);
        _dispute(HOLDER_A, seatA, seatS);
        assertEq(election.disputesAgainst(seatS, 50), 1, "one seat, one voice");

        // The holder rebinds the seat (to the same claim, at a later block): the dispute was of the old binding.
        vm.roll(60);
        _bindWithConsent(HOLDER_S, seatS, KEY_S ^ 1, INSTANCE_D);
        _dispute(HOLDER_B, seatB, seatS);
        assertEq(cluster.tokenOfInstance(INSTANCE_D), seatS, "B's dispute alone is not two");
        _dispute(HOLDER_A, seatA, seatS);
        assertEq(cluster.tokenOfInstance(INSTANCE_D), 0, "released at the new binding's two");
    }

    function test_RevertIf_ASeatDisputesItselfAnUnboundSeatOrOneItDoesNotActFor() public {
        vm.prank(HOLDER_S);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderCannotVoteForSelf.selector, seatS));
        election.disputeBinding(seatS, seatS, 50);

        uint256 unbound = _mint(HOLDER_B, "");
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.DisputeSeatNotBound.selector, unbound));
        election.disputeBinding(seatA, unbound, 50);

        vm.prank(HOLDER_S);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNotSeatAgent.selector, seatA, HOLDER_S));
        election.disputeBinding(seatA, seatS, 50);
    }

    /// A dispute names the binding its voter checked: after a rebind, it does not count against the new one.
    function test_RevertIf_TheDisputedBindingWasReplaced() public {
        vm.roll(60);
        _bindWithConsent(HOLDER_S, seatS, KEY_S ^ 1, INSTANCE_D);
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.DisputeBindingChanged.selector, seatS, 50, 60));
        election.disputeBinding(seatA, seatS, 50);
        assertEq(election.disputesAgainst(seatS, 60), 0, "nothing counted against the new binding");
    }

    function test_RevertIf_AnyoneButTheElectionReleasesABinding() public {
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterOnlyElection.selector, HOLDER_A));
        cluster.releaseBinding(seatS, 50);
    }

    /// The gas of the dispute that releases a binding (the second of three seats), for the closing note.
    function test_GasOfTheReleasingDispute() public {
        _dispute(HOLDER_A, seatA, seatS);
        vm.prank(HOLDER_B);
        uint256 before = gasleft();
        election.disputeBinding(seatB, seatS, 50);
        uint256 used = before - gasleft();
        emit log_named_uint("disputeBinding, releasing", used);
        assertTrue(used < 150_000, "a dispute stays cheap");
    }

    event log_named_uint(string key, uint256 val);
}
