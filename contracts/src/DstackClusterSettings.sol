// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";

/// @notice What the owner of a dstack-mesh cluster sets: the pinned KMS root, the app ids whose instances may
/// register, how many seats may be active, public minting and its price, production mode. A part of
/// DstackClusterNFT (which inherits it), in a file of its own because it is the one part that only the owner
/// changes; at runtime it is the same contract.
abstract contract DstackClusterSettings is Ownable2Step {
    /// @dev Whether an app id is allowed, and its number: every app id ever allowed gets one for good (from 1),
    /// so that a seat names its app in 4 bytes. One slot, so a registration reads both at once.
    struct AppEntry {
        bool allowed;
        uint32 number;
    }

    address public kmsRoot;
    uint256 public maxNodes;
    bool public publicMinting;
    uint256 public mintPrice;
    /// @notice In production mode gateway URLs must be https under an allowed base domain (see the app auth's
    /// `baseDomains`).
    bool public productionMode;

    address[] private _appIds;
    mapping(address appId => AppEntry) internal _apps;
    /// @dev Each app id ever allowed, by its number minus one.
    address[] internal _appOfNumber;

    event MaxNodesUpdated(uint256 maxNodes);
    event PublicMintingUpdated(bool enabled);
    event MintPriceUpdated(uint256 price);
    event KmsRootUpdated(address indexed previousRoot, address indexed newRoot);
    event AppIdUpdated(address indexed appId, bool allowed);
    event ProductionModeUpdated(bool enabled);
    event Withdrawn(address indexed to, uint256 amount);

    error ClusterInvalidKmsRoot();
    error ClusterInvalidAppId();
    error ClusterWithdrawFailed(address to, uint256 amount);

    constructor(address initialOwner, address kmsRoot_, address[] memory appIds, uint256 maxNodes_)
        Ownable(initialOwner)
    {
        if (kmsRoot_ == address(0)) revert ClusterInvalidKmsRoot();
        kmsRoot = kmsRoot_;
        maxNodes = maxNodes_;
        for (uint256 i = 0; i < appIds.length; ++i) {
            _setAppId(appIds[i], true);
        }
        emit KmsRootUpdated(address(0), kmsRoot_);
        emit MaxNodesUpdated(maxNodes_);
    }

    function isAllowedAppId(address appId) external view returns (bool) {
        return _apps[appId].allowed;
    }

    function allowedAppIds() external view returns (address[] memory) {
        return _appIds;
    }

    function setMaxNodes(uint256 maxNodes_) external onlyOwner {
        maxNodes = maxNodes_;
        emit MaxNodesUpdated(maxNodes_);
    }

    function setPublicMinting(bool enabled) external onlyOwner {
        publicMinting = enabled;
        emit PublicMintingUpdated(enabled);
    }

    function setMintPrice(uint256 price) external onlyOwner {
        mintPrice = price;
        emit MintPriceUpdated(price);
    }

    /// @notice Re-pins the KMS root. Records proven under the old root stay until they are re-registered;
    /// agents re-verify records against the root they pin.
    function setKmsRoot(address newRoot) external onlyOwner {
        if (newRoot == address(0)) revert ClusterInvalidKmsRoot();
        emit KmsRootUpdated(kmsRoot, newRoot);
        kmsRoot = newRoot;
    }

    function setAppId(address appId, bool allowed) external onlyOwner {
        _setAppId(appId, allowed);
    }

    function setProductionMode(bool enabled) external onlyOwner {
        productionMode = enabled;
        emit ProductionModeUpdated(enabled);
    }

    /// @notice Sends what public minting collected to `to`.
    function withdraw(address payable to) external onlyOwner {
        uint256 amount = address(this).balance;
        emit Withdrawn(to, amount);
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert ClusterWithdrawFailed(to, amount);
    }

    function _setAppId(address appId, bool allowed) private {
        if (appId == address(0)) revert ClusterInvalidAppId();
        AppEntry storage entry = _apps[appId];
        if (entry.allowed == allowed) return;
        entry.allowed = allowed;
        if (allowed) {
            if (entry.number == 0) {
                _appOfNumber.push(appId);
                entry.number = uint32(_appOfNumber.length);
            }
            _appIds.push(appId);
        } else {
            uint256 n = _appIds.length;
            for (uint256 i = 0; i < n; ++i) {
                if (_appIds[i] == appId) {
                    _appIds[i] = _appIds[n - 1];
                    _appIds.pop();
                    break;
                }
            }
        }
        emit AppIdUpdated(appId, allowed);
    }
}
