// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {IAppAuth} from "../src/IAppAuth.sol";
import {TwoAppFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice A seat serves the app its binding was vouched for by: instances of the cluster's other allowed apps
/// cannot rebind it or sign records for it, and dstack's KMS does not boot them on it, until the owner resets it.
contract SeatAppTest is TwoAppFixture {
    uint256 internal seat;

    function setUp() public {
        cluster = _deployTwoApps();
        seat = _mint(HOLDER_A, "");
        _bindForApp(APP_1_KEY, APP_1, DERIVED_KEY_A, INSTANCE_A);
    }

    function _seatApp(uint256 tokenId) internal view returns (address appId) {
        (,,,,, appId) = cluster.seatInfo(tokenId);
    }

    function _bindForApp(uint256 appKey, address appId, uint256 nodeKey, string memory instanceId) internal {
        DstackClusterNFT.NodeBinding memory b = _appBinding(appKey, appId, nodeKey, instanceId, HOLDER_A);
        vm.prank(HOLDER_A);
        cluster.bindInstance(seat, b);
    }

    function test_TheBindingPinsTheSeatsApp() public {
        uint256 fresh = _mint(HOLDER_B, "");
        assertEq(_seatApp(fresh), address(0), "no app before the first binding");
        assertEq(cluster.seatAppOf(fresh), address(0), "seatAppOf agrees");
        assertEq(_seatApp(seat), APP_1, "the binding's app");
        assertEq(cluster.seatAppOf(seat), APP_1, "seatAppOf agrees");
        _registerForApp(APP_1_KEY, APP_1, seat, DERIVED_KEY_A, INSTANCE_A, 1);
        assertEq(_seatApp(seat), APP_1, "still app 1 after a record");
    }

    function test_RevertIf_AnotherAppsInstanceSignsForTheSeat() public {
        _registerForApp(APP_1_KEY, APP_1, seat, DERIVED_KEY_A, INSTANCE_A, 1);
        bytes32 kept = cluster.getPeer(seat).wgPublicKey;
        // App 2 vouches for the seat's own node and instance: the chain is genuine, the app is not the seat's.
        DstackClusterNFT.PeerRecordInput memory r = _record(seat, WG_KEY_B, 2);
        DstackClusterNFT.DstackProof memory p = _appProof(APP_2_KEY, APP_2, DERIVED_KEY_A, INSTANCE_A);
        bytes memory sig = _signRecord(DERIVED_KEY_A, r, INSTANCE_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistrySeatAppMismatch.selector, seat, APP_1, APP_2));
        cluster.registerPeer(r, p, sig);
        assertEq(cluster.getPeer(seat).wgPublicKey, kept, "record kept");
    }

    function test_RevertIf_AnotherAppsInstanceRebindsTheSeat() public {
        DstackClusterNFT.NodeBinding memory b = _appBinding(APP_2_KEY, APP_2, DERIVED_KEY_B, INSTANCE_B, HOLDER_A);
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistrySeatAppMismatch.selector, seat, APP_1, APP_2));
        cluster.bindInstance(seat, b);
        assertEq(cluster.getPeer(seat).node, vm.addr(DERIVED_KEY_A), "binding kept");
    }

    function test_TheSeatKeepsItsAppThroughAClearAndATransfer() public {
        _registerForApp(APP_1_KEY, APP_1, seat, DERIVED_KEY_A, INSTANCE_A, 1);
        vm.prank(HOLDER_A);
        cluster.transferFrom(HOLDER_A, HOLDER_B, seat); // clears the record
        assertEq(_seatApp(seat), APP_1, "kept");
        DstackClusterNFT.PeerRecordInput memory r = _record(seat, WG_KEY_B, 2);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistrySeatAppMismatch.selector, seat, APP_1, APP_2));
        cluster.registerPeer(
            r, _appProof(APP_2_KEY, APP_2, DERIVED_KEY_A, INSTANCE_A), _signRecord(DERIVED_KEY_A, r, INSTANCE_A)
        );
    }

    function test_OwnerResetsTheSeatsAppWithAnEvent() public {
        _registerForApp(APP_1_KEY, APP_1, seat, DERIVED_KEY_A, INSTANCE_A, 1);
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, HOLDER_A));
        cluster.resetSeatApp(seat);

        vm.prank(OWNER);
        vm.expectEmit();
        emit DstackClusterNFT.SeatAppReset(seat, APP_1);
        cluster.resetSeatApp(seat);
        assertEq(_seatApp(seat), address(0), "reset");
        // An instance of app 2 takes the seat over: the holder binds it to its node, which then registers.
        _bindForApp(APP_2_KEY, APP_2, DERIVED_KEY_B, INSTANCE_B);
        assertEq(_seatApp(seat), APP_2, "now serves app 2");
        _registerForApp(APP_2_KEY, APP_2, seat, DERIVED_KEY_B, INSTANCE_B, 2);
        assertEq(cluster.getPeer(seat).instanceId, INSTANCE_B, "app 2's instance registered");
        DstackClusterNFT.PeerRecordInput memory r = _record(seat, WG_KEY_A, 3);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistrySeatAppMismatch.selector, seat, APP_2, APP_1));
        cluster.registerPeer(
            r, _appProof(APP_1_KEY, APP_1, DERIVED_KEY_B, INSTANCE_B), _signRecord(DERIVED_KEY_B, r, INSTANCE_B)
        );
    }

    function test_BoundInstanceRuleChecksTheSeatsApp() public {
        vm.startPrank(OWNER);
        appAuth.setComposeHash(bytes32(uint256(7)), true);
        appAuth.setAppAuthPolicy(false, true);
        vm.stopPrank();
        (bool ok, string memory reason) = appAuth.isAppAllowed(_boot(APP_1));
        assertTrue(ok, reason);
        (ok, reason) = appAuth.isAppAllowed(_boot(APP_2));
        assertFalse(ok, "another app's boot on the seat's instance");
        assertEq(reason, "Instance's seat serves another app", "reason");
    }

    function _boot(address appId) internal pure returns (IAppAuth.AppBootInfo memory b) {
        b.appId = appId;
        b.composeHash = bytes32(uint256(7));
        b.instanceId = address(0x59dF8036B824B0aAc54F8998b9E1fB2a0CFc5D3a);
    }
}
