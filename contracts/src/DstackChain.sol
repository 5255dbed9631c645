// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title dstack's GetKey signature chain, checked on-chain.
/// @notice dstack's guest agent returns, with every derived key D, a chain of two signatures:
///  - `appSignature`: the app key A signs raw `keccak256(purpose ‖ ":" ‖ lowercase-hex(compressed D))`;
///  - `kmsSignature`: the KMS root K signs raw `keccak256("dstack-kms-issued:" ‖ appId(20 bytes) ‖ compressed A)`.
/// Both are 65 bytes `r ‖ s ‖ v` with v ∈ {0, 1} (no EIP-191 prefix), and only that encoding is accepted.
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

    /// @dev secp256k1's field prime.
    uint256 private constant P = 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f;

    /// @notice Whether a 64-byte uncompressed key is a point of secp256k1. The app signature covers only the
    /// compressed form (X and Y's parity), so without this a relay could change Y and still pass: agents, which
    /// refuse such a key, would then drop a record the contract stored.
    function isOnCurve(bytes calldata publicKey) internal pure returns (bool) {
        uint256 x = uint256(bytes32(publicKey[0:32]));
        uint256 y = uint256(bytes32(publicKey[32:64]));
        if (x >= P || y >= P) return false;
        return mulmod(y, y, P) == addmod(mulmod(mulmod(x, x, P), x, P), 7, P);
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

    /// @notice How a signature writes its recovery id: dstack's chain uses the bare recovery id, Ethereum's
    /// EIP-712 signatures add 27. Each signature is accepted in its one encoding only, so that nobody can
    /// re-encode a genuine signature into a second byte string that the contract accepts and agents refuse.
    uint8 internal constant V_DSTACK = 0;
    uint8 internal constant V_ETHEREUM = 27;

    /// @dev secp256k1's n / 2: a larger s is the malleated twin of a valid signature.
    uint256 private constant HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    /// @notice Recovers the signer of a 65-byte `r ‖ s ‖ v` signature whose v is `vBase` or `vBase + 1`.
    /// @return signer the recovered address, or address(0) when the signature is not in that one encoding:
    /// another length or v, a high or zero s, a zero r, or no recoverable key.
    function recover(bytes32 digest, bytes calldata signature, uint8 vBase) internal pure returns (address signer) {
        if (signature.length != SIGNATURE_LENGTH) return address(0);
        uint8 v = uint8(signature[64]);
        if (v != vBase && v != vBase + 1) return address(0);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        if (r == 0 || s == 0 || uint256(s) > HALF_ORDER) return address(0);
        signer = ecrecover(digest, v - vBase + 27, r, s);
    }
}
