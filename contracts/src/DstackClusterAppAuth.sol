// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";
import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

import {IAppAuth} from "./IAppAuth.sol";

/// @notice What the app-auth contract reads of its cluster.
interface IClusterInstances {
    function owner() external view returns (address);
    function isAllowedAppId(address appId) external view returns (bool);
    function tokenOfInstance(string calldata instanceId) external view returns (uint256);
    function isActiveSeat(uint256 tokenId) external view returns (bool);
    /// @notice The app the seat serves, zero before its first binding or after the owner reset it.
    function seatAppOf(uint256 tokenId) external view returns (address);
}

/// @title DstackClusterAppAuth: which CVMs a dstack-mesh cluster trusts.
/// @notice Made by its cluster (DstackClusterNFT) when that is deployed, at the address the cluster's `appAuth()`
/// returns, and managed by the cluster's owner. It holds:
///  - the compose hashes and devices that dstack's KMS may release the app's keys to, through `isAppAllowed`
///    (register this address as the app's auth contract);
///  - the OS images (keccak256(MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2) of a TDX quote) whose nodes the cluster accepts,
///    for agents to check a peer's quote against, as the compose hashes. It lives apart so that the cluster contract keeps room
/// under EIP-170.
contract DstackClusterAppAuth is IAppAuth {
    IClusterInstances public immutable cluster;

    mapping(bytes32 composeHash => bool) public isComposeHashAllowed;
    mapping(bytes32 deviceId => bool) public isDeviceAllowed;
    mapping(bytes32 osMeasurement => bool) public isOsAllowed;
    bool public requireAllowedDevice;
    bool public requireBoundInstance;

    event ComposeHashUpdated(bytes32 indexed composeHash, bool allowed);
    event DeviceUpdated(bytes32 indexed deviceId, bool allowed);
    event OsMeasurementUpdated(bytes32 indexed osMeasurement, bool allowed);
    event AppAuthPolicyUpdated(bool requireAllowedDevice, bool requireBoundInstance);

    error AppAuthNotClusterOwner(address caller);

    constructor(IClusterInstances cluster_) {
        cluster = cluster_;
    }

    modifier onlyClusterOwner() {
        if (msg.sender != cluster.owner()) revert AppAuthNotClusterOwner(msg.sender);
        _;
    }

    function setComposeHash(bytes32 composeHash, bool allowed) external onlyClusterOwner {
        isComposeHashAllowed[composeHash] = allowed;
        emit ComposeHashUpdated(composeHash, allowed);
    }

    function setDevice(bytes32 deviceId, bool allowed) external onlyClusterOwner {
        isDeviceAllowed[deviceId] = allowed;
        emit DeviceUpdated(deviceId, allowed);
    }

    /// @notice Allows (or no longer allows) nodes on the OS image `osMeasurement`: a peer whose quote measures
    /// an OS that is not allowed is not to be configured.
    function setOsMeasurement(bytes32 osMeasurement, bool allowed) external onlyClusterOwner {
        isOsAllowed[osMeasurement] = allowed;
        emit OsMeasurementUpdated(osMeasurement, allowed);
    }

    /// @notice `requireBoundInstance` is off by default because of a chicken-and-egg problem: a real CVM's
    /// instance id is random on first boot and only persisted once the KMS has released its keys. A boot the
    /// KMS refuses therefore gets a new instance id on the next attempt, so it cannot be bound beforehand.
    /// Turn it on only for instances whose ids are already known (for example after a first, allowed boot).
    function setAppAuthPolicy(bool requireAllowedDevice_, bool requireBoundInstance_) external onlyClusterOwner {
        requireAllowedDevice = requireAllowedDevice_;
        requireBoundInstance = requireBoundInstance_;
        emit AppAuthPolicyUpdated(requireAllowedDevice_, requireBoundInstance_);
    }

    /// @inheritdoc IAppAuth
    function isAppAllowed(AppBootInfo calldata bootInfo) external view returns (bool isAllowed, string memory reason) {
        if (
            bootInfo.appId != address(cluster) && bootInfo.appId != address(this)
                && !cluster.isAllowedAppId(bootInfo.appId)
        ) {
            return (false, "App id not allowed");
        }
        if (!isComposeHashAllowed[bootInfo.composeHash]) return (false, "Compose hash not allowed");
        if (requireAllowedDevice && !isDeviceAllowed[bootInfo.deviceId]) return (false, "Device not allowed");
        if (requireBoundInstance) {
            uint256 tokenId = cluster.tokenOfInstance(_instanceIdString(bootInfo.instanceId));
            if (tokenId == 0 || !cluster.isActiveSeat(tokenId)) return (false, "Instance not bound to an active seat");
            address seatApp = cluster.seatAppOf(tokenId);
            if (seatApp != address(0) && seatApp != bootInfo.appId) {
                return (false, "Instance's seat serves another app");
            }
        }
        return (true, "");
    }

    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == type(IAppAuth).interfaceId || interfaceId == type(IERC165).interfaceId;
    }

    /// @dev dstack passes the instance id as an address; seats store it as 40 lowercase hex characters.
    function _instanceIdString(address instanceId) private pure returns (string memory) {
        bytes memory s = bytes(Strings.toHexString(instanceId));
        bytes memory out = new bytes(40);
        for (uint256 i = 0; i < 40; ++i) {
            out[i] = s[i + 2];
        }
        return string(out);
    }
}
