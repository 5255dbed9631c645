// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Instance ids are public. Whoever binds a seat, the cluster's owner included, binds it to an instance's
/// node only with that node's consent to this holder, so nobody can take another operator's node
/// onto their own seat ahead of the owner.
contract BindConsentTest is ClusterFixture {
    uint256 internal seatA;
    address internal constant ATTACKER = address(0xBAD);
    string internal constant INSTANCE_C = "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0";

    function setUp() public {
        cluster = _deploy();
        seatA = _mint(HOLDER_A, "");
    }

    function test_HolderBindsWithTheNodesConsent() public {
        _bindWithConsent(HOLDER_A, seatA, DERIVED_KEY_A, INSTANCE_A);
        assertEq(cluster.tokenOfInstance(INSTANCE_A), seatA, "bound");
        assertEq(cluster.getPeer(seatA).node, vm.addr(DERIVED_KEY_A), "to the consenting node");
        _register(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
    }

    /// The contract's digest is the one the fixture (and so the agent) computes independently.
    function test_ConsentDigestIsTheEip712OfBindConsent() public view {
        address node = vm.addr(DERIVED_KEY_A);
        assertEq(
            cluster.bindConsentDigest(INSTANCE_A, node, HOLDER_A), _consentDigest(INSTANCE_A, node, HOLDER_A), "digest"
        );
        assertEq(
            cluster.BIND_CONSENT_TYPEHASH(),
            keccak256("BindConsent(string instanceId,address node,address holder)"),
            "typehash"
        );
    }

    /// The front-run: an attacker mints a seat and binds the victim's instance and node before the owner's mint,
    /// with everything public about the victim but the node's consent.
    function test_RevertIf_HolderBindsAnotherOperatorsNodeWithoutConsent() public {
        DstackClusterNFT.NodeBinding memory none = _noBinding();
        vm.prank(OWNER);
        uint256 attackerSeat = cluster.mintNodeAccess(ATTACKER, none);
        address nodeB = vm.addr(DERIVED_KEY_B);
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_B, INSTANCE_B, ATTACKER);
        b.consent = "";
        vm.prank(ATTACKER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryMalformedSignature.selector, "consent"));
        cluster.bindInstance(attackerSeat, b);
        // The attacker signs the consent with a key of its own.
        b.consent = _sign(OTHER_KEY, cluster.bindConsentDigest(INSTANCE_B, nodeB, ATTACKER));
        vm.prank(ATTACKER);
        vm.expectRevert(
            abi.encodeWithSelector(DstackClusterNFT.ClusterBindConsentInvalid.selector, nodeB, vm.addr(OTHER_KEY))
        );
        cluster.bindInstance(attackerSeat, b);
        // The owner's mint for the victim still works.
        uint256 victim = _mint(HOLDER_B, INSTANCE_B);
        assertEq(cluster.tokenOfInstance(INSTANCE_B), victim, "the owner bound the victim's seat");
    }

    function test_RevertIf_ConsentWasGivenForAnotherHolder() public {
        DstackClusterNFT.NodeBinding memory none = _noBinding();
        vm.prank(OWNER);
        uint256 attackerSeat = cluster.mintNodeAccess(ATTACKER, none);
        address node = vm.addr(DERIVED_KEY_B);
        // Consent for HOLDER_A, replayed by the attacker on its own seat.
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_B, INSTANCE_B, HOLDER_A);
        address recovered = _recovered(cluster.bindConsentDigest(INSTANCE_B, node, ATTACKER), b.consent);
        assertTrue(recovered != node, "another holder's consent recovers someone else");
        vm.prank(ATTACKER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterBindConsentInvalid.selector, node, recovered));
        cluster.bindInstance(attackerSeat, b);
        // And at mint.
        vm.prank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterBindConsentInvalid.selector, node, recovered));
        cluster.mintNodeAccess(ATTACKER, b);
        assertEq(cluster.tokenOfInstance(INSTANCE_B), 0, "still unbound");
    }

    /// A consent names the holder, not a seat: two mints with bindings made at the same time both land, whatever
    /// ids they get, and the holder binds whichever of its seats it chooses.
    function test_ConsentNamesNoSeatSoConcurrentMintsBothBind() public {
        DstackClusterNFT.NodeBinding memory forB = _binding(DERIVED_KEY_B, INSTANCE_B, HOLDER_B);
        DstackClusterNFT.NodeBinding memory forC = _binding(OTHER_KEY, INSTANCE_C, HOLDER_A);
        // Both were made when the next id was the same; the second lands on the id after.
        vm.prank(OWNER);
        uint256 first = cluster.mintNodeAccess(HOLDER_A, forC);
        vm.prank(OWNER);
        uint256 second = cluster.mintNodeAccess(HOLDER_B, forB);
        assertEq(second, first + 1, "consecutive seats");
        assertEq(cluster.tokenOfInstance(INSTANCE_C), first, "C bound to the first");
        assertEq(cluster.tokenOfInstance(INSTANCE_B), second, "B bound to the second");
    }

    function test_RevertIf_ConsentIsSignedByAnotherInstance() public {
        // Instance A's genuine binding, offered for instance B: its chain names instance A.
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        b.instanceId = INSTANCE_B;
        address node = vm.addr(DERIVED_KEY_A);
        vm.prank(HOLDER_A);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryPurposeMismatch.selector,
                _purpose(INSTANCE_B, node),
                _purpose(INSTANCE_A, node)
            )
        );
        cluster.bindInstance(seatA, b);
    }

    function test_RevertIf_ConsentSignatureReEncoded() public {
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        bytes memory genuine = bytes.concat(b.consent);
        b.consent[64] = bytes1(uint8(b.consent[64]) - 27);
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryMalformedSignature.selector, "consent"));
        cluster.bindInstance(seatA, b);
        b.consent = genuine;
        vm.prank(HOLDER_A);
        cluster.bindInstance(seatA, b);
        assertEq(cluster.tokenOfInstance(INSTANCE_A), seatA, "the genuine consent binds");
    }

    /// A public minter binds at mint, as anyone else binds: with the node's consent to the seat being minted and
    /// to the minter's address.
    function test_PublicMinterBindsAtMintOnlyWithTheNodesConsent() public {
        vm.prank(OWNER);
        cluster.setPublicMinting(true);
        uint256 next = cluster.lastTokenId() + 1;
        address nodeB = vm.addr(DERIVED_KEY_B);
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_B, INSTANCE_B, ATTACKER);
        b.consent = _sign(OTHER_KEY, cluster.bindConsentDigest(INSTANCE_B, nodeB, ATTACKER));
        vm.prank(ATTACKER);
        vm.expectRevert(
            abi.encodeWithSelector(DstackClusterNFT.ClusterBindConsentInvalid.selector, nodeB, vm.addr(OTHER_KEY))
        );
        cluster.mintNodeAccess(ATTACKER, b);
        assertEq(cluster.lastTokenId(), next - 1, "nothing minted");

        b = _binding(DERIVED_KEY_B, INSTANCE_B, ATTACKER); // the node consents to this minter
        vm.prank(ATTACKER);
        uint256 bought = cluster.mintNodeAccess(ATTACKER, b);
        assertEq(bought, next, "the consented seat");
        assertEq(cluster.tokenOfInstance(INSTANCE_B), bought, "bound with consent");
        assertEq(cluster.getPeer(bought).node, nodeB, "to the consenting node");
    }

    /// The owner once bound its own seats without consent; now it needs one like anybody else.
    function test_RevertIf_OwnerBindsItsOwnSeatWithoutConsent() public {
        DstackClusterNFT.NodeBinding memory none = _noBinding();
        vm.prank(OWNER);
        uint256 ownSeat = cluster.mintNodeAccess(OWNER, none);
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_B, INSTANCE_B, OWNER);
        bytes memory consent = b.consent;
        b.consent = "";
        vm.prank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryMalformedSignature.selector, "consent"));
        cluster.bindInstance(ownSeat, b);
        assertEq(cluster.tokenOfInstance(INSTANCE_B), 0, "not bound");
        b.consent = consent;
        vm.prank(OWNER);
        cluster.bindInstance(ownSeat, b);
        assertEq(cluster.tokenOfInstance(INSTANCE_B), ownSeat, "bound by the owner with the node's consent");
    }
}
