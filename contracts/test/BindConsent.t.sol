// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Instance ids are public. A holder other than the owner binds a seat to an instance only with that
/// instance's consent, so nobody can take another operator's node onto their own seat ahead of the owner.
contract BindConsentTest is ClusterFixture {
    uint256 internal seatA;
    address internal constant ATTACKER = address(0xBAD);

    function setUp() public {
        cluster = _deploy();
        seatA = _mint(HOLDER_A, "");
    }

    function test_HolderBindsWithTheInstancesConsent() public {
        _bindWithConsent(HOLDER_A, seatA, DERIVED_KEY_A, INSTANCE_A);
        assertEq(cluster.tokenOfInstance(INSTANCE_A), seatA, "bound");
        _register(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
    }

    /// The front-run: an attacker mints a seat and binds the victim's instance id before the owner's mint.
    function test_RevertIf_HolderBindsAnotherOperatorsInstanceWithoutConsent() public {
        vm.prank(OWNER);
        uint256 attackerSeat = cluster.mintNodeAccess(ATTACKER, "");
        (DstackClusterNFT.DstackProof memory p, bytes memory sig) = _noConsent();
        vm.prank(ATTACKER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterBindNeedsConsent.selector, INSTANCE_B));
        cluster.bindInstance(attackerSeat, INSTANCE_B, p, sig);
        // The owner's mint for the victim still works.
        uint256 victim = _mint(HOLDER_B, INSTANCE_B);
        assertEq(cluster.tokenOfInstance(INSTANCE_B), victim, "the owner bound the victim's seat");
    }

    function test_RevertIf_ConsentWasGivenForAnotherHolderOrSeat() public {
        vm.prank(OWNER);
        uint256 attackerSeat = cluster.mintNodeAccess(ATTACKER, "");
        address derived = vm.addr(DERIVED_KEY_B);
        // Consent for HOLDER_A's seat, replayed by the attacker on theirs.
        (DstackClusterNFT.DstackProof memory p, bytes memory sig) = _consent(seatA, DERIVED_KEY_B, INSTANCE_B, HOLDER_A);
        vm.prank(ATTACKER);
        vm.expectRevert();
        cluster.bindInstance(attackerSeat, INSTANCE_B, p, sig);
        // Consent for the right seat but another holder.
        (p, sig) = _consent(attackerSeat, DERIVED_KEY_B, INSTANCE_B, HOLDER_A);
        address recovered = ecrecover(cluster.bindConsentDigest(attackerSeat, INSTANCE_B, ATTACKER), uint8(sig[64]), _r(sig), _s(sig));
        vm.prank(ATTACKER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterBindConsentInvalid.selector, derived, recovered));
        cluster.bindInstance(attackerSeat, INSTANCE_B, p, sig);
    }

    function test_RevertIf_ConsentIsSignedByAnotherInstance() public {
        // Instance A's genuine proof and signature, offered as consent for instance B.
        (DstackClusterNFT.DstackProof memory p, bytes memory sig) = _consent(seatA, DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        vm.prank(HOLDER_A);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryPurposeMismatch.selector, _purpose(INSTANCE_B), _purpose(INSTANCE_A)
            )
        );
        cluster.bindInstance(seatA, INSTANCE_B, p, sig);
    }

    function test_RevertIf_ConsentSignatureReEncoded() public {
        (DstackClusterNFT.DstackProof memory p, bytes memory sig) = _consent(seatA, DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        sig[64] = bytes1(uint8(sig[64]) - 27);
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryMalformedSignature.selector, "consentSignature"));
        cluster.bindInstance(seatA, INSTANCE_A, p, sig);
    }

    function test_RevertIf_PublicMinterBindsAtMint() public {
        vm.startPrank(OWNER);
        cluster.setPublicMinting(true);
        vm.stopPrank();
        vm.prank(ATTACKER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterBindNeedsConsent.selector, INSTANCE_B));
        cluster.mintNodeAccess(ATTACKER, INSTANCE_B);
        vm.prank(ATTACKER);
        uint256 bought = cluster.mintNodeAccess(ATTACKER, ""); // buying a seat needs no instance
        _bindWithConsent(ATTACKER, bought, DERIVED_KEY_B, INSTANCE_B); // and a consenting one binds to it
        assertEq(cluster.tokenOfInstance(INSTANCE_B), bought, "bound with consent");
    }

    function test_OwnerBindsItsOwnSeatWithoutConsent() public {
        vm.prank(OWNER);
        uint256 ownSeat = cluster.mintNodeAccess(OWNER, "");
        (DstackClusterNFT.DstackProof memory p, bytes memory sig) = _noConsent();
        vm.prank(OWNER);
        cluster.bindInstance(ownSeat, INSTANCE_B, p, sig);
        assertEq(cluster.tokenOfInstance(INSTANCE_B), ownSeat, "bound by the owner");
    }

    function _r(bytes memory sig) internal pure returns (bytes32 r) {
        assembly {
            r := mload(add(sig, 32))
        }
    }

    function _s(bytes memory sig) internal pure returns (bytes32 s) {
        assembly {
            s := mload(add(sig, 64))
        }
    }
}
