// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";

/// @title dstack's app-auth hook, exactly as dstack's KMS calls it.
/// @dev Copied field for field from dstack's `kms/auth-eth/contracts/IAppAuth.sol`. The KMS forwards a boot's
/// `AppBootInfo` to the contract whose address is the app id. `type(IAppAuth).interfaceId` is `0x1e079198`,
/// which is also the selector of `isAppAllowed`.
interface IAppAuth is IERC165 {
    struct AppBootInfo {
        address appId;
        bytes32 composeHash;
        address instanceId;
        bytes32 deviceId;
        bytes32 mrAggregated;
        bytes32 mrSystem;
        bytes32 osImageHash;
        string tcbStatus;
        string[] advisoryIds;
    }

    /// @return isAllowed whether dstack's KMS may hand this boot its app keys.
    /// @return reason why not, when `isAllowed` is false.
    function isAppAllowed(AppBootInfo calldata bootInfo) external view returns (bool isAllowed, string memory reason);
}
