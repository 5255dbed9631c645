// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterAppAuth} from "../src/DstackClusterAppAuth.sol";
import {IAppAuth} from "../src/IAppAuth.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice The cluster's app-auth contract answers dstack's KMS through dstack's own `isAppAllowed` selector, and
/// only the cluster's owner changes what it allows.
contract AppAuthTest is ClusterFixture {
    bytes32 internal constant COMPOSE = keccak256("app-compose.json");
    bytes32 internal constant DEVICE = keccak256("device");

    function setUp() public {
        cluster = _deploy();
        vm.prank(OWNER);
        appAuth.setComposeHash(COMPOSE, true);
    }

    function _boot(address instanceId, bytes32 composeHash, bytes32 deviceId)
        internal
        pure
        returns (IAppAuth.AppBootInfo memory b)
    {
        b.appId = APP_ID;
        b.composeHash = composeHash;
        b.instanceId = instanceId;
        b.deviceId = deviceId;
        b.tcbStatus = "UpToDate";
    }

    /// Calls the app auth exactly as dstack's KMS does: by the raw selector 0x1e079198.
    function _ask(IAppAuth.AppBootInfo memory b) internal view returns (bool allowed, string memory reason) {
        (bool ok, bytes memory ret) = address(appAuth).staticcall(abi.encodeWithSelector(bytes4(0x1e079198), b));
        assertTrue(ok, "isAppAllowed call");
        (allowed, reason) = abi.decode(ret, (bool, string));
    }

    function test_TheClusterMakesItsAppAuth() public view {
        assertTrue(address(appAuth) != address(0), "made at deployment");
        assertEq(address(appAuth.cluster()), address(cluster), "the app auth reads this cluster");
        assertEq(address(cluster.appAuth()), address(appAuth), "the cluster names it");
    }

    function test_SelectorAndInterfaceAreDstacks() public view {
        assertEq(uint32(IAppAuth.isAppAllowed.selector), uint32(0x1e079198), "selector");
        assertEq(uint32(type(IAppAuth).interfaceId), uint32(0x1e079198), "interface id");
        assertTrue(appAuth.supportsInterface(0x1e079198), "supportsInterface(IAppAuth)");
        assertTrue(appAuth.supportsInterface(0x01ffc9a7), "supportsInterface(IERC165)");
        assertFalse(appAuth.supportsInterface(0xdeadbeef), "not everything");
        assertFalse(appAuth.supportsInterface(0xffffffff), "never 0xffffffff");
        assertFalse(cluster.supportsInterface(0x1e079198), "the cluster no longer answers dstack's KMS");
        assertTrue(cluster.supportsInterface(0x80ac58cd), "the cluster is still an ERC721");
    }

    function test_AllowsAllowedComposeHash() public view {
        (bool allowed, string memory reason) = _ask(_boot(address(0x1), COMPOSE, DEVICE));
        assertTrue(allowed, reason);
        assertEq(reason, "", "no reason");
    }

    /// dstack's on-chain KMS uses the app contract's address as app id: the app auth's, or the cluster's.
    function test_AllowsTheAppAuthAndTheClusterAsAppId() public view {
        IAppAuth.AppBootInfo memory b = _boot(address(0x1), COMPOSE, DEVICE);
        b.appId = address(appAuth);
        (bool allowed,) = _ask(b);
        assertTrue(allowed, "the app auth's own address");
        b.appId = address(cluster);
        (allowed,) = _ask(b);
        assertTrue(allowed, "the cluster's address");
    }

    function test_RefusesUnknownComposeHashAndAppId() public view {
        (bool allowed, string memory reason) = _ask(_boot(address(0x1), keccak256("other"), DEVICE));
        assertFalse(allowed, "compose hash");
        assertEq(reason, "Compose hash not allowed", "reason");
        IAppAuth.AppBootInfo memory b = _boot(address(0x1), COMPOSE, DEVICE);
        b.appId = address(0x5);
        (allowed, reason) = _ask(b);
        assertFalse(allowed, "app id");
        assertEq(reason, "App id not allowed", "reason");
    }

    function test_AnAppIdTheClusterRemovesIsRefused() public {
        vm.prank(OWNER);
        cluster.setAppId(APP_ID, false);
        (bool allowed, string memory reason) = _ask(_boot(address(0x1), COMPOSE, DEVICE));
        assertFalse(allowed, "removed from the cluster");
        assertEq(reason, "App id not allowed", "reason");
    }

    function test_AComposeHashTheOwnerRemovesIsRefused() public {
        vm.prank(OWNER);
        vm.expectEmit();
        emit DstackClusterAppAuth.ComposeHashUpdated(COMPOSE, false);
        appAuth.setComposeHash(COMPOSE, false);
        assertFalse(appAuth.isComposeHashAllowed(COMPOSE), "read back");
        (bool allowed,) = _ask(_boot(address(0x1), COMPOSE, DEVICE));
        assertFalse(allowed, "removed");
    }

    function test_DeviceAllowlistWhenRequired() public {
        vm.prank(OWNER);
        vm.expectEmit();
        emit DstackClusterAppAuth.AppAuthPolicyUpdated(true, false);
        appAuth.setAppAuthPolicy(true, false);
        assertTrue(appAuth.requireAllowedDevice(), "device rule on");
        (bool allowed, string memory reason) = _ask(_boot(address(0x1), COMPOSE, DEVICE));
        assertFalse(allowed, "device not yet allowed");
        assertEq(reason, "Device not allowed", "reason");
        vm.prank(OWNER);
        vm.expectEmit();
        emit DstackClusterAppAuth.DeviceUpdated(DEVICE, true);
        appAuth.setDevice(DEVICE, true);
        assertTrue(appAuth.isDeviceAllowed(DEVICE), "read back");
        (allowed,) = _ask(_boot(address(0x1), COMPOSE, DEVICE));
        assertTrue(allowed, "device allowed");
    }

    function test_BoundInstanceWhenRequired() public {
        assertFalse(appAuth.requireBoundInstance(), "off by default");
        vm.prank(OWNER);
        appAuth.setAppAuthPolicy(false, true);
        address instance = 0x59dF8036B824B0aAc54F8998b9E1fB2a0CFc5D3a;
        (bool allowed, string memory reason) = _ask(_boot(instance, COMPOSE, DEVICE));
        assertFalse(allowed, "unbound instance");
        assertEq(reason, "Instance not bound to an active seat", "reason");
        uint256 seat = _mint(HOLDER_A, INSTANCE_A);
        (allowed,) = _ask(_boot(instance, COMPOSE, DEVICE));
        assertTrue(allowed, "bound instance (address matched to lowercase hex)");
        vm.prank(HOLDER_A);
        cluster.deactivate(seat);
        (allowed, reason) = _ask(_boot(instance, COMPOSE, DEVICE));
        assertFalse(allowed, "inactive seat");
        assertEq(reason, "Instance not bound to an active seat", "reason");
    }

    // ------------------------------------------------------------ who may set

    function test_RevertIf_SomeoneButTheClusterOwnerSetsTheAppAuth() public {
        address[3] memory strangers = [HOLDER_A, address(cluster), address(appAuth)];
        for (uint256 i = 0; i < strangers.length; ++i) {
            address who = strangers[i];
            bytes memory err = abi.encodeWithSelector(DstackClusterAppAuth.AppAuthNotClusterOwner.selector, who);
            vm.prank(who);
            vm.expectRevert(err);
            appAuth.setComposeHash(keccak256("evil compose"), true);
            vm.prank(who);
            vm.expectRevert(err);
            appAuth.setDevice(DEVICE, true);
            vm.prank(who);
            vm.expectRevert(err);
            appAuth.setOsMeasurement(keccak256("evil os"), true);
            vm.prank(who);
            vm.expectRevert(err);
            appAuth.setAppAuthPolicy(true, true);
        }
        assertFalse(appAuth.isComposeHashAllowed(keccak256("evil compose")), "compose hash unchanged");
        assertFalse(appAuth.isDeviceAllowed(DEVICE), "device unchanged");
        assertFalse(appAuth.isOsAllowed(keccak256("evil os")), "os unchanged");
        assertFalse(appAuth.requireAllowedDevice(), "policy unchanged");
        assertFalse(appAuth.requireBoundInstance(), "policy unchanged");
    }

    /// The app auth follows the cluster's ownership: after a handover only the new owner sets it.
    function test_TheClusterOwnersHandoverMovesTheAppAuth() public {
        address next = address(0x0B0B);
        vm.prank(OWNER);
        cluster.transferOwnership(next);
        vm.prank(next);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthNotClusterOwner.selector, next));
        appAuth.setDevice(DEVICE, true); // pending: not yet the owner
        vm.prank(next);
        cluster.acceptOwnership();
        vm.prank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthNotClusterOwner.selector, OWNER));
        appAuth.setDevice(DEVICE, true);
        vm.prank(next);
        appAuth.setDevice(DEVICE, true);
        assertTrue(appAuth.isDeviceAllowed(DEVICE), "set by the new owner");
    }
}
