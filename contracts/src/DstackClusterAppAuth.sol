// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";
import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

import {DstackClusterGrants} from "./DstackClusterGrants.sol";
import {IAppAuth} from "./IAppAuth.sol";
import {RecordFormat} from "./RecordFormat.sol";

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
///    for agents to check a peer's quote against, as the compose hashes;
///  - the TCB policy agents apply to those quotes;
///  - the base domains a peer's gateway URL must be under in production mode, which the cluster asks here;
///  - who may reach whom: tags and grants between seats (DstackClusterGrants).
/// It lives apart so that the cluster contract keeps room under EIP-170.
contract DstackClusterAppAuth is IAppAuth, DstackClusterGrants {
    IClusterInstances public immutable cluster;

    mapping(bytes32 composeHash => bool) public isComposeHashAllowed;
    mapping(bytes32 deviceId => bool) public isDeviceAllowed;
    mapping(bytes32 osMeasurement => bool) public isOsAllowed;
    bool public requireAllowedDevice;
    bool public requireBoundInstance;

    /// @notice The TCB statuses whose platforms the cluster accepts, one bit each from bit 0: UpToDate (always
    /// set), SWHardeningNeeded, ConfigurationNeeded, ConfigurationAndSWHardeningNeeded, OutOfDate,
    /// OutOfDateConfigurationNeeded, TDRelaunchAdvised, TDRelaunchAdvisedConfigurationNeeded. 0 while the owner
    /// has set no TCB policy, when each agent goes by its own `--allow-tcb-status` flags. Revoked is never
    /// accepted.
    uint8 public tcbStatuses;
    /// @notice The lowest TCB evaluation data number (Intel's count of TCB recoveries) whose collateral a verdict
    /// may rest on; 0 for any.
    uint32 public minTcbEvaluationDataNumber;
    /// @notice How long a peer that falls below the policy stays admitted, warned, before it is admitted no more.
    uint32 public tcbGraceSeconds;
    /// @notice How long after that it is dropped.
    uint32 public tcbDropSeconds;
    /// @dev The advisory ids (`INTEL-SA-…`) a platform below UpToDate may be affected by and still be accepted,
    /// and each one's place in the list, plus one.
    string[] private _tcbAdvisories;
    mapping(bytes32 advisory => uint256) private _tcbAdvisoryPlace;
    /// @dev The base domains, and each one's place in the list, plus one.
    string[] private _baseDomains;
    mapping(bytes32 domainHash => uint256) private _baseDomainPlace;

    event ComposeHashUpdated(bytes32 indexed composeHash, bool allowed);
    event DeviceUpdated(bytes32 indexed deviceId, bool allowed);
    event OsMeasurementUpdated(bytes32 indexed osMeasurement, bool allowed);
    event AppAuthPolicyUpdated(bool requireAllowedDevice, bool requireBoundInstance);
    event TcbPolicyUpdated(uint8 statuses, uint32 minEvaluationDataNumber, uint32 graceSeconds, uint32 dropSeconds);
    event TcbAdvisoryUpdated(string advisoryId, bool allowed);
    event BaseDomainAdded(string domain);
    event BaseDomainRemoved(string domain);

    error AppAuthNotClusterOwner(address caller);
    error AppAuthTcbStatusesWithoutUpToDate(uint8 statuses);
    error AppAuthInvalidAdvisoryId(string advisoryId);
    error AppAuthInvalidDomain(string domain);
    error AppAuthUnknownDomain(string domain);

    constructor(IClusterInstances cluster_) {
        cluster = cluster_;
    }

    modifier onlyClusterOwner() {
        _requireClusterOwner();
        _;
    }

    function _requireClusterOwner() internal view override {
        if (msg.sender != cluster.owner()) revert AppAuthNotClusterOwner(msg.sender);
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

    /// @notice Sets the cluster's TCB policy, which every agent applies to its peers' quotes: the accepted
    /// `statuses` (a bit per status as `tcbStatuses` has them, UpToDate's included; 0 hands the choice back to
    /// each agent's flags), the lowest TCB evaluation data number, and the stages of a peer that falls below it:
    /// warned for `graceSeconds`, then no longer admitted for `dropSeconds`, then dropped.
    function setTcbPolicy(uint8 statuses, uint32 minEvaluationDataNumber, uint32 graceSeconds, uint32 dropSeconds)
        external
        onlyClusterOwner
    {
        if (statuses != 0 && statuses & 1 == 0) revert AppAuthTcbStatusesWithoutUpToDate(statuses);
        tcbStatuses = statuses;
        minTcbEvaluationDataNumber = minEvaluationDataNumber;
        tcbGraceSeconds = graceSeconds;
        tcbDropSeconds = dropSeconds;
        emit TcbPolicyUpdated(statuses, minEvaluationDataNumber, graceSeconds, dropSeconds);
    }

    /// @notice Accepts (or no longer accepts) platforms affected by Intel advisory `advisoryId` (`INTEL-SA-00837`,
    /// say) whose status the policy accepts below UpToDate.
    function setTcbAdvisory(string calldata advisoryId, bool allowed) external onlyClusterOwner {
        bytes calldata b = bytes(advisoryId);
        if (b.length == 0 || b.length > 32) revert AppAuthInvalidAdvisoryId(advisoryId);
        for (uint256 i = 0; i < b.length; ++i) {
            bytes1 c = b[i];
            if (!((c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == "-")) {
                revert AppAuthInvalidAdvisoryId(advisoryId);
            }
        }
        bytes32 key = keccak256(b);
        uint256 place = _tcbAdvisoryPlace[key];
        if (allowed && place == 0) {
            _tcbAdvisories.push(advisoryId);
            _tcbAdvisoryPlace[key] = _tcbAdvisories.length;
        } else if (!allowed && place != 0) {
            string memory last = _tcbAdvisories[_tcbAdvisories.length - 1];
            _tcbAdvisories[place - 1] = last;
            _tcbAdvisoryPlace[keccak256(bytes(last))] = place;
            _tcbAdvisories.pop();
            delete _tcbAdvisoryPlace[key];
        }
        emit TcbAdvisoryUpdated(advisoryId, allowed);
    }

    /// @notice Allows gateway URLs under `domain` in production mode. Lowercase DNS names only.
    function addBaseDomain(string calldata domain) external onlyClusterOwner {
        if (!RecordFormat.isDomain(domain)) revert AppAuthInvalidDomain(domain);
        bytes32 h = keccak256(bytes(domain));
        if (_baseDomainPlace[h] != 0) return;
        _baseDomains.push(domain);
        _baseDomainPlace[h] = _baseDomains.length;
        emit BaseDomainAdded(domain);
    }

    function removeBaseDomain(string calldata domain) external onlyClusterOwner {
        bytes32 h = keccak256(bytes(domain));
        uint256 place = _baseDomainPlace[h];
        if (place == 0) revert AppAuthUnknownDomain(domain);
        string memory last = _baseDomains[_baseDomains.length - 1];
        _baseDomains[place - 1] = last;
        _baseDomainPlace[keccak256(bytes(last))] = place;
        _baseDomains.pop();
        delete _baseDomainPlace[h];
        emit BaseDomainRemoved(domain);
    }

    function baseDomains() external view returns (string[] memory) {
        return _baseDomains;
    }

    /// @notice Whether a gateway URL's `host` is under one of the base domains: what the cluster requires of a
    /// record in production mode.
    function isGatewayHostAllowed(bytes calldata host) external view returns (bool) {
        uint256 n = _baseDomains.length;
        for (uint256 i = 0; i < n; ++i) {
            if (RecordFormat.isUnderDomain(host, bytes(_baseDomains[i]))) return true;
        }
        return false;
    }

    /// @notice The whole TCB policy in one read, for agents.
    function tcbPolicy()
        external
        view
        returns (
            uint8 statuses,
            uint32 minEvaluationDataNumber,
            uint32 graceSeconds,
            uint32 dropSeconds,
            string[] memory advisoryIds
        )
    {
        return (tcbStatuses, minTcbEvaluationDataNumber, tcbGraceSeconds, tcbDropSeconds, _tcbAdvisories);
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
