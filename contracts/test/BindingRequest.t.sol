// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice A seatless node asks for a seat on-chain, so that its binding reaches the holder without a shell in
/// the CVM. The request is checked as a binding is (chain, evidence, consent), names the holder it is for, and
/// is walked back from `lastBindingRequestBlock` without scanning logs.
contract BindingRequestTest is ClusterFixture {
    address internal constant RELAYER = address(0xFEE);

    function setUp() public {
        cluster = _deploy();
    }

    function test_ANodeRequestsAndTheHolderBindsWithIt() public {
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        vm.roll(100);
        vm.expectEmit();
        emit DstackClusterNFT.BindingRequested(keccak256(bytes(INSTANCE_A)), b.node, HOLDER_A, 0, b);
        vm.prank(RELAYER); // anyone may send it: only the node's consent counts
        cluster.requestBinding(HOLDER_A, b);
        assertEq(cluster.bindingRequestedOf(b.node), HOLDER_A, "pending for the holder");
        assertEq(cluster.lastBindingRequestBlock(), 100, "the walk starts here");

        // The owner mints the holder a seat with the request's binding: the id is whatever comes next.
        vm.prank(OWNER);
        uint256 seat = cluster.mintNodeAccess(HOLDER_A, b);
        assertEq(cluster.tokenOfInstance(INSTANCE_A), seat, "bound");
        assertEq(cluster.bindingRequestedOf(b.node), address(0), "no longer pending once bound");
    }

    function test_EachRequestNamesTheBlockOfTheOneBefore() public {
        DstackClusterNFT.NodeBinding memory a = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_B, INSTANCE_B, HOLDER_B);
        vm.roll(10);
        cluster.requestBinding(HOLDER_A, a);
        vm.roll(20);
        vm.expectEmit();
        emit DstackClusterNFT.BindingRequested(keccak256(bytes(INSTANCE_B)), b.node, HOLDER_B, 10, b);
        cluster.requestBinding(HOLDER_B, b);
        // A second request in the same block names its own block: the walker has read it already.
        vm.expectEmit();
        emit DstackClusterNFT.BindingRequested(keccak256(bytes(INSTANCE_A)), a.node, HOLDER_A, 20, a);
        cluster.requestBinding(HOLDER_A, a);
        assertEq(cluster.lastBindingRequestBlock(), 20, "latest");
    }

    function test_RevertIf_TheConsentIsForAnotherHolder() public {
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        address recovered = _recovered(cluster.bindConsentDigest(INSTANCE_A, b.node, HOLDER_B), b.consent);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterBindConsentInvalid.selector, b.node, recovered));
        cluster.requestBinding(HOLDER_B, b);
        assertEq(cluster.bindingRequestedOf(b.node), address(0), "nothing pending");
    }

    function test_RevertIf_TheChainDoesNotNameTheNode() public {
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        b.proof = _proof(DERIVED_KEY_B, INSTANCE_A);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryPurposeMismatch.selector,
                _purpose(INSTANCE_A, b.node),
                _purpose(INSTANCE_A, vm.addr(DERIVED_KEY_B))
            )
        );
        cluster.requestBinding(HOLDER_A, b);
    }

    function test_RevertIf_TheAppIsNotAllowed() public {
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        vm.prank(OWNER);
        cluster.setAppId(APP_ID, false);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryAppIdNotAllowed.selector, APP_ID));
        cluster.requestBinding(HOLDER_A, b);
    }

    /// An upgraded instance keeps its node key; it asks for a rebind with a quote of its new image.
    function test_ABoundNodeAsksForARebindWithAFreshQuote() public {
        uint256 seat = _mint(HOLDER_A, INSTANCE_A);
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        b.evidence = abi.encode("a quote of the new image", INSTANCE_A);
        cluster.requestBinding(HOLDER_A, b);
        assertEq(cluster.bindingRequestedOf(b.node), HOLDER_A, "pending");
        vm.prank(HOLDER_A);
        cluster.bindInstance(seat, b);
        assertEq(cluster.getPeer(seat).evidenceHash, keccak256(b.evidence), "the seat keeps the fresh quote");
        assertEq(cluster.bindingRequestedOf(b.node), address(0), "answered");
    }

    /// An instance that lost its volume has a new node key; it asks for its seat again, and the holder rebinds.
    function test_AnInstanceWithANewNodeKeyAsksForItsSeatAgain() public {
        uint256 seat = _mint(HOLDER_A, INSTANCE_A);
        DstackClusterNFT.NodeBinding memory b = _binding(OTHER_KEY, INSTANCE_A, HOLDER_A);
        cluster.requestBinding(HOLDER_A, b);
        assertEq(cluster.bindingRequestedOf(b.node), HOLDER_A, "pending");
        vm.prank(HOLDER_A);
        cluster.bindInstance(seat, b);
        assertEq(cluster.getPeer(seat).node, b.node, "rebound to the new key");
    }

    function test_RevertIf_NoEvidenceNoHolderOrABadInstanceId() public {
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        vm.expectRevert(DstackClusterNFT.ClusterInvalidHolder.selector);
        cluster.requestBinding(address(0), b);
        b.evidence = "";
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterBindNeedsEvidence.selector, INSTANCE_A));
        cluster.requestBinding(HOLDER_A, b);
        b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        b.instanceId = "59DF8036B824B0AAC54F8998B9E1FB2A0CFC5D3A";
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterInvalidInstanceId.selector, b.instanceId));
        cluster.requestBinding(HOLDER_A, b);
    }
}
