// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackChain} from "./DstackChain.sol";
import {RecordFormat} from "./RecordFormat.sol";

/// @dev What a proof's purpose starts with: `PURPOSE_PREFIX ‖ instanceId ‖ ":" ‖ node`. The cluster shows it too.
string constant PURPOSE_PREFIX = "dstack-mesh-node:";

/// @notice The cluster's stateless checks of what a node sends: the dstack signature chain that vouches for its
/// key, and the form of its peer record. A contract of its own, made by the cluster's constructor and called by
/// it alone, so that the cluster's runtime keeps room under EIP-170 for what comes next: the parsing and the
/// curve arithmetic are a third of what it held. Each check reverts with the cluster's own error (the same
/// signature, so the same selector), which the cluster's call passes on unchanged. Holds nothing.
contract DstackClusterProofs {
    using RecordFormat for string;

    error RegistryEmptyRecord(uint256 tokenId);
    error RegistryEndpointWithoutKey(uint256 tokenId);
    error RegistryInvalidEndpoint(string endpoint);
    error RegistryInvalidGatewayUrl(string gatewayUrl);
    error RegistryInvalidKeyLength(uint256 length);
    error RegistryKeyNotOnCurve();
    error RegistryPurposeMismatch(string expected, string purpose);
    error RegistryAppSignatureInvalid(address appKey, address recovered);
    error RegistryMalformedSignature(string field);

    /// @notice Checks a dstack signature chain for `node`'s key on instance `instanceId`, but for the KMS root:
    /// the keys' form, the purpose, the app key's signature of the derived key. Returns the signer the KMS
    /// signature recovers, for the cluster to compare with its root.
    function checkChain(
        bytes calldata derivedPublicKey,
        bytes calldata appPublicKey,
        string calldata purpose,
        bytes calldata appSignature,
        bytes calldata kmsSignature,
        address appId,
        string calldata instanceId,
        address node
    ) external pure returns (address kmsSigner) {
        if (derivedPublicKey.length != DstackChain.PUBLIC_KEY_LENGTH) {
            revert RegistryInvalidKeyLength(derivedPublicKey.length);
        }
        if (appPublicKey.length != DstackChain.PUBLIC_KEY_LENGTH) {
            revert RegistryInvalidKeyLength(appPublicKey.length);
        }
        if (!DstackChain.isOnCurve(derivedPublicKey)) revert RegistryKeyNotOnCurve();
        string memory expected =
            string.concat(PURPOSE_PREFIX, instanceId, ":", string(DstackChain.toHex(abi.encodePacked(node))));
        if (keccak256(bytes(purpose)) != keccak256(bytes(expected))) {
            revert RegistryPurposeMismatch(expected, purpose);
        }
        address appKey = DstackChain.toAddress(appPublicKey);
        address recovered =
            _recover(DstackChain.appMessageHash(purpose, derivedPublicKey), appSignature, "appSignature");
        if (recovered != appKey) revert RegistryAppSignatureInvalid(appKey, recovered);
        kmsSigner = _recover(DstackChain.kmsMessageHash(appId, appPublicKey), kmsSignature, "kmsSignature");
    }

    /// @notice Checks a peer record's form: a key or a gateway URL, an endpoint only with a key, both well
    /// formed. Returns whether the URL is https, and where its host lies in it (`gatewayUrl[hostStart:hostEnd]`),
    /// for the cluster's own rules on production clusters.
    function checkRecord(uint256 tokenId, bytes32 wgPublicKey, string calldata endpoint, string calldata gatewayUrl)
        external
        pure
        returns (bool https, uint256 hostStart, uint256 hostEnd)
    {
        bool hasKey = wgPublicKey != bytes32(0);
        bool hasUrl = bytes(gatewayUrl).length != 0;
        if (!hasKey && !hasUrl) revert RegistryEmptyRecord(tokenId);
        if (bytes(endpoint).length != 0) {
            if (!hasKey) revert RegistryEndpointWithoutKey(tokenId);
            if (!endpoint.isEndpoint()) revert RegistryInvalidEndpoint(endpoint);
        }
        if (hasUrl) {
            bool ok;
            bytes calldata host;
            (ok, https, host) = RecordFormat.parseUrl(gatewayUrl);
            if (!ok) revert RegistryInvalidGatewayUrl(gatewayUrl);
            bytes calldata url = bytes(gatewayUrl);
            uint256 hostOffset;
            uint256 urlOffset;
            assembly ("memory-safe") {
                hostOffset := host.offset
                urlOffset := url.offset
            }
            hostStart = hostOffset - urlOffset;
            hostEnd = hostStart + host.length;
        }
    }

    function _recover(bytes32 digest, bytes calldata signature, string memory field)
        private
        pure
        returns (address signer)
    {
        signer = DstackChain.recover(digest, signature, DstackChain.V_DSTACK);
        if (signer == address(0)) revert RegistryMalformedSignature(field);
    }
}
