// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {IAppAuth} from "../src/IAppAuth.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice The contract answers dstack's KMS through dstack's own `isAppAllowed` selector.
contract AppAuthTest is ClusterFixture {
    bytes32 internal constant COMPOSE = keccak256("app-compose.json");
    bytes32 internal constant DEVICE = keccak256("device");

    function setUp() public {
        cluster = _deploy();
        vm.prank(OWNER);
        cluster.setComposeHash(COMPOSE, true);
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

    /// Calls the contract exactly as dstack's KMS does: by the raw selector 0x1e079198.
    function _ask(IAppAuth.AppBootInfo memory b) internal view returns (bool allowed, string memory reason) {
        (bool ok, bytes memory ret) = address(cluster).staticcall(abi.encodeWithSelector(bytes4(0x1e079198), b));
        assertTrue(ok, "isAppAllowed call");
        (allowed, reason) = abi.decode(ret, (bool, string));
    }

    function test_SelectorAndInterfaceAreDstacks() public view {
        assertEq(uint32(IAppAuth.isAppAllowed.selector), uint32(0x1e079198), "selector");
        assertEq(uint32(type(IAppAuth).interfaceId), uint32(0x1e079198), "interface id");
        assertTrue(cluster.supportsInterface(0x1e079198), "supportsInterface(IAppAuth)");
        assertTrue(cluster.supportsInterface(0x80ac58cd), "still an ERC721");
        assertFalse(cluster.supportsInterface(0xdeadbeef), "not everything");
    }

    function test_AllowsAllowedComposeHash() public view {
        (bool allowed, string memory reason) = _ask(_boot(address(0x1), COMPOSE, DEVICE));
        assertTrue(allowed, reason);
        assertEq(reason, "", "no reason");
    }

    function test_AllowsTheContractItselfAsAppId() public view {
        IAppAuth.AppBootInfo memory b = _boot(address(0x1), COMPOSE, DEVICE);
        b.appId = address(cluster); // dstack's on-chain KMS uses the app contract's address as app id
        (bool allowed,) = _ask(b);
        assertTrue(allowed, "own address");
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

    function test_DeviceAllowlistWhenRequired() public {
        vm.prank(OWNER);
        cluster.setAppAuthPolicy(true, false);
        (bool allowed, string memory reason) = _ask(_boot(address(0x1), COMPOSE, DEVICE));
        assertFalse(allowed, "device not yet allowed");
        assertEq(reason, "Device not allowed", "reason");
        vm.prank(OWNER);
        cluster.setDevice(DEVICE, true);
        (allowed,) = _ask(_boot(address(0x1), COMPOSE, DEVICE));
        assertTrue(allowed, "device allowed");
    }

    function test_BoundInstanceWhenRequired() public {
        assertFalse(cluster.requireBoundInstance(), "off by default");
        vm.prank(OWNER);
        cluster.setAppAuthPolicy(false, true);
        address instance = 0x59dF8036B824B0aAc54F8998b9E1fB2a0CFc5D3a;
        (bool allowed, string memory reason) = _ask(_boot(instance, COMPOSE, DEVICE));
        assertFalse(allowed, "unbound instance");
        assertEq(reason, "Instance not bound to an active seat", "reason");
        uint256 seat = _mint(HOLDER_A, INSTANCE_A);
        (allowed,) = _ask(_boot(instance, COMPOSE, DEVICE));
        assertTrue(allowed, "bound instance (address matched to lowercase hex)");
        vm.prank(HOLDER_A);
        cluster.deactivate(seat);
        (allowed,) = _ask(_boot(instance, COMPOSE, DEVICE));
        assertFalse(allowed, "inactive seat");
    }
}
