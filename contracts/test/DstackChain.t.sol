// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackChain} from "../src/DstackChain.sol";
import {Assertions} from "./utils/Assertions.sol";
import {Vm, vm} from "./utils/Vm.sol";

contract DstackChainHarness {
    function appMessageHash(string calldata purpose, bytes calldata pub) external pure returns (bytes32) {
        return DstackChain.appMessageHash(purpose, pub);
    }

    function kmsMessageHash(address appId, bytes calldata pub) external pure returns (bytes32) {
        return DstackChain.kmsMessageHash(appId, pub);
    }

    function recover(bytes32 digest, bytes calldata sig) external pure returns (address) {
        return DstackChain.recover(digest, sig, DstackChain.V_DSTACK);
    }

    function recoverEthereum(bytes32 digest, bytes calldata sig) external pure returns (address) {
        return DstackChain.recover(digest, sig, DstackChain.V_ETHEREUM);
    }

    function compress(bytes calldata pub) external pure returns (bytes memory) {
        return DstackChain.compress(pub);
    }
}

/// @notice The on-chain chain check reproduces dstack's vectors (reference §2.7) for both simulator fixtures.
contract DstackChainTest is Assertions {
    DstackChainHarness internal h = new DstackChainHarness();

    function _pub(uint256 key) internal returns (bytes memory) {
        Vm.Wallet memory w = vm.createWallet(key);
        return abi.encodePacked(w.publicKeyX, w.publicKeyY);
    }

    function test_FixtureAVectors() public {
        bytes memory app = _pub(0xe0e5d254fb944dcc370a2e5288b336a1e809871545a73ee645368957fefa31f9);
        assertEq(
            keccak256(h.compress(app)),
            keccak256(hex"02b85cceca0c02d878f0ebcda72a97469a472416eb6faf3c4807642132f9786810"),
            "compressed app key"
        );
        bytes32 kmsHash = h.kmsMessageHash(0xEA549F02e1a25FaBD1CB788380e033eC5461b2ff, app);
        assertEq(kmsHash, 0x3c55b4e0efaca928c9c29944c17889a61c7ba1c56dea9e8dce9e4f3224dba8ba, "kms message hash");
        assertEq(
            h.recover(
                kmsHash,
                hex"2f431c7956869a4fe3e028c5f9518a935e2d01e81a3628f8b1d178fc2fac7b6d2405ace433624e5568e23c4ed291dbaf60dac79b756837c0fe745154ebfdc0a601"
            ),
            0x8f2cF602C9695b23130367ed78d8F557554de7C5,
            "kms root"
        );
        bytes memory derived = _pub(0x7c019ee7f279e47ef73ebf7dcb6844f398db2e06ea0dc4e45e528483ab924b57);
        bytes32 appHash = h.appMessageHash("ethereum", derived);
        assertEq(appHash, 0xf2b949b8933d65fdde39e295edaf105ed6ab2c2da5cfe3ac170c305872fc2449, "app message hash");
        assertEq(
            h.appMessageHash("mainnet", derived),
            0x8b3cfb7578bf821a003500fe9fe64cfa5d190aaf8c877380ca2352cbc74935b5,
            "mainnet message hash"
        );
        assertEq(
            h.recover(
                appHash,
                hex"056a0a85cb9b7c9e3fbef59c4f9d59cea7b53cb290815a91fb1c076623750c3f5a92c02fe0bce0a62b666a6269f5dc9ad6a4e3ca437cfaecceee75abceb5c76400"
            ),
            0x5e5132F15a9aa4AA91A6bCaE35Adf34e27A13516,
            "sig0 recovers the app key"
        );
    }

    function test_FixtureBVectors() public {
        bytes memory app = _pub(0xd6e88992cdeeee35fe70b5db61ab66cdb191fb9b6ec9313757ef162dd7214d5d);
        bytes32 kmsHash = h.kmsMessageHash(0x5bb4FF9A3837357F19dC176407a5709c62eB6C56, app);
        assertEq(kmsHash, 0x1f1acc59bf7234477601c8abf24b462777d69b8497e91189bb4c4c0568308bf5, "kms message hash");
        assertEq(
            h.recover(
                kmsHash,
                hex"9e618603e72d01fedb82deff6daf2d62a572becf0059eec3f89c1ab40e1f2e594d2a283f843f34e8f39e4cc49a612496ce67223a12ac923f8efe330346dfc6c500"
            ),
            0xA7F6043C29f9cc1d9D6aCF554c53E0c6792AaEAf,
            "kms root"
        );
        bytes memory derived = _pub(0xabc24a0a6485cfceb30932bcfc9c3b918eab2216d8619c423a0d1017390938ef);
        assertEq(
            h.appMessageHash("ethereum", derived),
            0xe721e3a110da09542b23491992b67fbead99470a5b6fc4b5b44ed92481d34250,
            "app message hash"
        );
    }

    function test_MalformedSignatureRecoversNobody() public view {
        assertEq(h.recover(bytes32(uint256(1)), hex"00"), address(0), "short signature");
        bytes memory highS = abi.encodePacked(
            bytes32(uint256(1)), bytes32(0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff00), uint8(0)
        );
        assertEq(h.recover(bytes32(uint256(1)), highS), address(0), "malleable high-s refused");
    }

    /// Each encoding accepts exactly its own two v values: dstack's chain {0, 1}, EIP-712 {27, 28}.
    function test_EachSignatureHasOneEncoding() public {
        uint256 key = 0xA11CE;
        bytes32 digest = keccak256("message");
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        address signer = vm.addr(key);
        assertEq(h.recoverEthereum(digest, abi.encodePacked(r, s, v)), signer, "EIP-712 v");
        assertEq(h.recover(digest, abi.encodePacked(r, s, v - 27)), signer, "dstack v");
        assertEq(h.recover(digest, abi.encodePacked(r, s, v)), address(0), "27/28 is not dstack's encoding");
        assertEq(h.recoverEthereum(digest, abi.encodePacked(r, s, v - 27)), address(0), "0/1 is not EIP-712's");
        for (uint256 other = 2; other < 256; ++other) {
            if (other == 27 || other == 28) continue;
            assertEq(h.recover(digest, abi.encodePacked(r, s, uint8(other))), address(0), "other v, dstack");
            assertEq(h.recoverEthereum(digest, abi.encodePacked(r, s, uint8(other))), address(0), "other v, EIP-712");
        }
        // The malleated twin (n - s, the other parity) recovers the same key in ecrecover; it must not here.
        uint256 n = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141;
        bytes memory twin = abi.encodePacked(r, bytes32(n - uint256(s)), v == 27 ? uint8(28) : uint8(27));
        assertEq(ecrecover(digest, uint8(twin[64]), r, bytes32(n - uint256(s))), signer, "the twin is genuine");
        assertEq(h.recoverEthereum(digest, twin), address(0), "high-s twin refused");
        assertEq(h.recoverEthereum(digest, abi.encodePacked(r, s, v, uint8(0))), address(0), "66 bytes");
        assertEq(h.recoverEthereum(digest, abi.encodePacked(bytes32(0), s, v)), address(0), "zero r");
        assertEq(h.recoverEthereum(digest, abi.encodePacked(r, bytes32(0), v)), address(0), "zero s");
    }
}
