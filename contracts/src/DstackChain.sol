// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title dstack's GetKey signature chain, checked on-chain.
/// @notice dstack's guest agent returns, with every derived key D, a chain of two signatures:
///  - `appSignature`: the app key A signs raw `keccak256(purpose ‖ ":" ‖ lowercase-hex(compressed D))`;
///  - `kmsSignature`: the KMS root K signs raw `keccak256("dstack-kms-issued:" ‖ appId(20 bytes) ‖ compressed A)`.
/// Both are 65 bytes `r ‖ s ‖ v` with v ∈ {0, 1} (no EIP-191 prefix).
/// @dev Public keys are taken uncompressed (64 bytes, X ‖ Y) because deriving the compressed form and the
/// address from them is cheap, while decompressing on-chain is not.
library DstackChain {
    bytes16 private constant HEX = "0123456789abcdef";

    /// @dev Length of an uncompressed secp256k1 public key without its 0x04 prefix.
    uint256 internal constant PUBLIC_KEY_LENGTH = 64;
    uint256 internal constant SIGNATURE_LENGTH = 65;

    /// @notice The Ethereum address of an uncompressed (64-byte) public key.
    function toAddress(bytes calldata publicKey) internal pure returns (address) {
        return address(uint160(uint256(keccak256(publicKey))));
    }

    /// @notice The 33-byte SEC1 compressed form of an uncompressed (64-byte) public key.
    function compress(bytes calldata publicKey) internal pure returns (bytes memory) {
        uint8 parity = uint8(publicKey[63]) & 1;
        return abi.encodePacked(bytes1(0x02 | parity), publicKey[0:32]);
    }

    /// @notice Lowercase hex without `0x`, as dstack writes the derived key into the app-signed message.
    function toHex(bytes memory data) internal pure returns (bytes memory out) {
        out = new bytes(data.length * 2);
        for (uint256 i = 0; i < data.length; ++i) {
            out[2 * i] = HEX[uint8(data[i]) >> 4];
            out[2 * i + 1] = HEX[uint8(data[i]) & 0x0f];
        }
    }

    /// @notice The hash the app key signs for a derived key under `purpose`.
    function appMessageHash(string calldata purpose, bytes calldata derivedPublicKey) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(purpose, ":", toHex(compress(derivedPublicKey))));
    }

    /// @notice The hash the KMS root signs for an app key.
    function kmsMessageHash(address appId, bytes calldata appPublicKey) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked("dstack-kms-issued:", bytes20(appId), compress(appPublicKey)));
    }

    /// @notice Recovers the signer of a 65-byte signature, accepting dstack's v ∈ {0,1} and Ethereum's {27,28}.
    /// @return signer the recovered address, or address(0) when the signature is malformed or malleable.
    function recover(bytes32 digest, bytes calldata signature) internal pure returns (address signer) {
        if (signature.length != SIGNATURE_LENGTH) return address(0);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (v < 27) v += 27;
        (signer,,) = ECDSA.tryRecover(digest, v, r, s);
    }
}
