// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../../src/DstackClusterNFT.sol";
import {DstackClusterElection} from "../../src/DstackClusterElection.sol";
import {DstackClusterAppAuth} from "../../src/DstackClusterAppAuth.sol";
import {Assertions} from "./Assertions.sol";
import {Vm, vm} from "./Vm.sol";

/// @notice A cluster built on dstack's simulator fixture A (reference §2.7), and helpers that forge, sign and
/// tamper with registrations.
abstract contract ClusterFixture is Assertions {
    // dstack simulator fixture A: its app key, and the KMS root's real signature over that app key.
    uint256 internal constant APP_KEY = 0xe0e5d254fb944dcc370a2e5288b336a1e809871545a73ee645368957fefa31f9;
    address internal constant APP_KEY_ADDRESS = 0x5e5132F15a9aa4AA91A6bCaE35Adf34e27A13516;
    address internal constant APP_ID = 0xEA549F02e1a25FaBD1CB788380e033eC5461b2ff;
    address internal constant KMS_ROOT = 0x8f2cF602C9695b23130367ed78d8F557554de7C5;
    bytes internal constant KMS_SIGNATURE =
        hex"2f431c7956869a4fe3e028c5f9518a935e2d01e81a3628f8b1d178fc2fac7b6d2405ace433624e5568e23c4ed291dbaf60dac79b756837c0fe745154ebfdc0a601";
    string internal constant INSTANCE_A = "59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a";
    /// Instance A's node key (its agent makes one from randomness; any scalar does here).
    uint256 internal constant DERIVED_KEY_A = 0x5eaeff0e4a21011c62e2393a550ca32b7979ca0521983773994f9a106d71b968;

    string internal constant INSTANCE_B = "1691ed1b47506cad7d08834668691d88246f5b1f";
    uint256 internal constant DERIVED_KEY_B = 0xB0B;

    uint256 internal constant OTHER_KEY = 0xBAD;
    address internal constant OWNER = address(0x0A11CE);
    address internal constant HOLDER_A = address(0xA);
    address internal constant HOLDER_B = address(0xB);

    uint32 internal constant NETWORK = 0x0a000100; // 10.0.1.0
    uint8 internal constant PREFIX = 24;
    uint256 internal constant MAX_NODES = 10;

    bytes32 internal constant WG_KEY_A = keccak256("wireguard key A");
    bytes32 internal constant WG_KEY_B = keccak256("wireguard key B");
    string internal constant ENDPOINT = "192.0.2.1:51820";
    string internal constant GATEWAY_URL = "https://59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a-8080.dstack.phala.network";

    DstackClusterNFT internal cluster;
    /// @dev The election of the cluster deployed last, kept here because a getter call between a `vm.prank`
    /// and the call it is meant for would take the prank for itself.
    DstackClusterElection internal election;
    /// @dev The app auth of the cluster deployed last, kept for the same reason.
    DstackClusterAppAuth internal appAuth;

    function _deploy() internal returns (DstackClusterNFT) {
        address[] memory appIds = new address[](1);
        appIds[0] = APP_ID;
        return _keepElection(new DstackClusterNFT(OWNER, KMS_ROOT, appIds, NETWORK, PREFIX, MAX_NODES));
    }

    function _keepElection(DstackClusterNFT deployed) internal returns (DstackClusterNFT) {
        election = deployed.election();
        appAuth = deployed.appAuth();
        return deployed;
    }

    /// @notice The node key the fixture's instances bind with: A's and B's constants, a key of its own for others.
    function _nodeKey(string memory instanceId) internal pure returns (uint256) {
        bytes32 h = keccak256(bytes(instanceId));
        if (h == keccak256(bytes(INSTANCE_A))) return DERIVED_KEY_A;
        if (h == keccak256(bytes(INSTANCE_B))) return DERIVED_KEY_B;
        return uint256(h) % 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141 + 1;
    }

    /// @notice Stand-in evidence: the contract keeps its hash and never parses it (agents verify the quote).
    function _evidence(string memory instanceId, address node) internal pure returns (bytes memory) {
        return abi.encode("quote", instanceId, node);
    }

    /// @notice The owner mints the next seat to `to`, bound to `instanceId` (unless empty) with that instance's
    /// node key.
    function _mint(address to, string memory instanceId) internal returns (uint256 tokenId) {
        DstackClusterNFT.NodeBinding memory b;
        if (bytes(instanceId).length != 0) {
            b = _binding(_nodeKey(instanceId), instanceId, to);
        }
        vm.prank(OWNER);
        tokenId = cluster.mintNodeAccess(to, b);
    }

    /// @notice A binding to `instanceId` and node key `nodeKey`, consented to for `holder`.
    function _binding(uint256 nodeKey, string memory instanceId, address holder)
        internal
        returns (DstackClusterNFT.NodeBinding memory b)
    {
        b.instanceId = instanceId;
        b.node = vm.addr(nodeKey);
        b.proof = _proof(nodeKey, instanceId);
        b.evidence = _evidence(instanceId, b.node);
        b.consent = _consentSignature(nodeKey, instanceId, holder);
    }

    /// @dev dstack encodes v as the bare recovery id, 0 or 1.
    function _dstackSign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v - 27);
    }

    function _publicKey(uint256 key) internal returns (bytes memory) {
        Vm.Wallet memory w = vm.createWallet(key);
        return abi.encodePacked(w.publicKeyX, w.publicKeyY);
    }

    /// @dev The hex of the compressed key, as dstack writes it into the app-signed message.
    function _compressedHex(bytes memory publicKey64) internal pure returns (bytes memory out) {
        bytes memory compressed = new bytes(33);
        compressed[0] = bytes1(0x02 | (uint8(publicKey64[63]) & 1));
        for (uint256 i = 0; i < 32; ++i) {
            compressed[i + 1] = publicKey64[i];
        }
        bytes16 digits = "0123456789abcdef";
        out = new bytes(66);
        for (uint256 i = 0; i < 33; ++i) {
            out[2 * i] = digits[uint8(compressed[i]) >> 4];
            out[2 * i + 1] = digits[uint8(compressed[i]) & 15];
        }
    }

    /// @notice The purpose under which the app vouches for `node` serving `instanceId`, written independently
    /// of the contract.
    function _purpose(string memory instanceId, address node) internal pure returns (string memory) {
        bytes memory a = abi.encodePacked(node);
        bytes16 digits = "0123456789abcdef";
        bytes memory h = new bytes(40);
        for (uint256 i = 0; i < 20; ++i) {
            h[2 * i] = digits[uint8(a[i]) >> 4];
            h[2 * i + 1] = digits[uint8(a[i]) & 15];
        }
        return string.concat("dstack-mesh-node:", instanceId, ":", string(h));
    }

    /// @notice A dstack proof as GetKey gives it for the purpose naming `instanceId` and the node key `nodeKey`:
    /// the app key signs a derived key (any one: the node is in the purpose), the fixture's KMS signature.
    function _proof(uint256 nodeKey, string memory instanceId)
        internal
        returns (DstackClusterNFT.DstackProof memory p)
    {
        p.derivedPublicKey = _publicKey(nodeKey ^ 1);
        p.appPublicKey = _publicKey(APP_KEY);
        p.purpose = _purpose(instanceId, vm.addr(nodeKey));
        p.appSignature =
            _dstackSign(APP_KEY, keccak256(abi.encodePacked(p.purpose, ":", _compressedHex(p.derivedPublicKey))));
        p.kmsSignature = KMS_SIGNATURE;
        p.appId = APP_ID;
    }

    function _record(uint256 tokenId, bytes32 wgKey, uint64 nonce)
        internal
        pure
        returns (DstackClusterNFT.PeerRecordInput memory)
    {
        return DstackClusterNFT.PeerRecordInput(tokenId, wgKey, ENDPOINT, GATEWAY_URL, nonce);
    }

    /// @notice The EIP-712 digest, computed here independently of the contract.
    function _digest(
        address verifyingContract,
        uint256 chainId,
        DstackClusterNFT.PeerRecordInput memory r,
        string memory instanceId
    ) internal pure returns (bytes32) {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("DstackClusterNFT"),
                keccak256("1"),
                chainId,
                verifyingContract
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256(
                    "PeerRecord(uint256 tokenId,string instanceId,bytes32 wgPublicKey,string endpoint,string gatewayUrl,uint64 nonce)"
                ),
                r.tokenId,
                keccak256(bytes(instanceId)),
                r.wgPublicKey,
                keccak256(bytes(r.endpoint)),
                keccak256(bytes(r.gatewayUrl)),
                r.nonce
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    function _signRecord(uint256 derivedKey, DstackClusterNFT.PeerRecordInput memory r, string memory instanceId)
        internal
        view
        returns (bytes memory)
    {
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(derivedKey, _digest(address(cluster), block.chainid, r, instanceId));
        return abi.encodePacked(rr, s, v);
    }

    /// @notice A registration that the contract must accept, for seat `tokenId` bound to `instanceId`.
    function _registration(uint256 tokenId, uint256 derivedKey, string memory instanceId, bytes32 wgKey, uint64 nonce)
        internal
        returns (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig)
    {
        r = _record(tokenId, wgKey, nonce);
        p = _proof(derivedKey, instanceId);
        sig = _signRecord(derivedKey, r, instanceId);
    }

    function _register(uint256 tokenId, uint256 derivedKey, string memory instanceId, bytes32 wgKey, uint64 nonce)
        internal
    {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(tokenId, derivedKey, instanceId, wgKey, nonce);
        cluster.registerPeer(r, p, sig);
    }

    /// @notice The EIP-712 digest of BindConsent(instanceId, node, holder) under this cluster's domain,
    /// computed here independently of the contract.
    function _consentDigest(string memory instanceId, address node, address holder) internal view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("BindConsent(string instanceId,address node,address holder)"),
                keccak256(bytes(instanceId)),
                node,
                holder
            )
        );
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("DstackClusterNFT"),
                keccak256("1"),
                block.chainid,
                address(cluster)
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    /// @notice `key`'s Ethereum-style (v 27/28) signature over `digest`.
    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @notice Who signed `digest`, as ecrecover reads a 65-byte signature.
    function _recovered(bytes32 digest, bytes memory sig) internal pure returns (address) {
        bytes32 r;
        bytes32 s;
        assembly {
            r := mload(add(sig, 32))
            s := mload(add(sig, 64))
        }
        return ecrecover(digest, uint8(sig[64]), r, s);
    }

    /// @notice The node key's consent, as its agent signs it.
    function _consentSignature(uint256 nodeKey, string memory instanceId, address holder)
        internal
        view
        returns (bytes memory)
    {
        return _sign(nodeKey, _consentDigest(instanceId, vm.addr(nodeKey), holder));
    }

    /// @notice The holder binds its seat to an instance's node key, with the node's consent.
    function _bindWithConsent(address holder, uint256 tokenId, uint256 nodeKey, string memory instanceId) internal {
        DstackClusterNFT.NodeBinding memory b = _binding(nodeKey, instanceId, holder);
        vm.prank(holder);
        cluster.bindInstance(tokenId, b);
    }

    /// @notice No binding: a seat minted unbound.
    function _noBinding() internal pure returns (DstackClusterNFT.NodeBinding memory b) {}
}

/// @notice A cluster whose KMS root key the tests hold, so that they can issue app keys for two apps.
abstract contract TwoAppFixture is ClusterFixture {
    uint256 internal constant TEST_KMS_KEY = 0x5EC12E7;
    uint256 internal constant APP_1_KEY = 0xA991;
    uint256 internal constant APP_2_KEY = 0xA992;
    address internal constant APP_1 = address(0xA1);
    address internal constant APP_2 = address(0xA2);

    function _deployTwoApps() internal returns (DstackClusterNFT) {
        address[] memory appIds = new address[](2);
        appIds[0] = APP_1;
        appIds[1] = APP_2;
        return _keepElection(new DstackClusterNFT(OWNER, vm.addr(TEST_KMS_KEY), appIds, NETWORK, PREFIX, MAX_NODES));
    }

    /// @notice A proof issued to an instance of `appId` (whose app key is `appKey`) under the test KMS root.
    function _appProof(uint256 appKey, address appId, uint256 derivedKey, string memory instanceId)
        internal
        returns (DstackClusterNFT.DstackProof memory p)
    {
        p.derivedPublicKey = _publicKey(derivedKey ^ 1);
        p.appPublicKey = _publicKey(appKey);
        p.purpose = _purpose(instanceId, vm.addr(derivedKey));
        p.appSignature =
            _dstackSign(appKey, keccak256(abi.encodePacked(p.purpose, ":", _compressedHex(p.derivedPublicKey))));
        bytes memory compressed = new bytes(33);
        compressed[0] = bytes1(0x02 | (uint8(p.appPublicKey[63]) & 1));
        for (uint256 i = 0; i < 32; ++i) {
            compressed[i + 1] = p.appPublicKey[i];
        }
        p.kmsSignature = _dstackSign(TEST_KMS_KEY, keccak256(abi.encodePacked("dstack-kms-issued:", appId, compressed)));
        p.appId = appId;
    }

    /// @notice A binding to `instanceId` and node key `nodeKey`, vouched for by an instance of
    /// `appId` and consented to for `holder`.
    function _appBinding(uint256 appKey, address appId, uint256 nodeKey, string memory instanceId, address holder)
        internal
        returns (DstackClusterNFT.NodeBinding memory b)
    {
        b.instanceId = instanceId;
        b.node = vm.addr(nodeKey);
        b.proof = _appProof(appKey, appId, nodeKey, instanceId);
        b.evidence = _evidence(instanceId, b.node);
        b.consent = _consentSignature(nodeKey, instanceId, holder);
    }

    function _registerForApp(
        uint256 appKey,
        address appId,
        uint256 tokenId,
        uint256 derivedKey,
        string memory instanceId,
        uint64 nonce
    ) internal {
        DstackClusterNFT.PeerRecordInput memory r = _record(tokenId, keccak256(abi.encode(appId, nonce)), nonce);
        cluster.registerPeer(
            r, _appProof(appKey, appId, derivedKey, instanceId), _signRecord(derivedKey, r, instanceId)
        );
    }
}
