// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Prints registerPeer's execution gas for the shapes of record agents send (run with -vv).
/// Figures exclude the 21,000 base and the calldata cost of a transaction, as `forge test --gas-report` does.
contract GasTest is ClusterFixture {
    event log_named_uint(string key, uint256 val);

    uint256 internal seat;

    function setUp() public {
        cluster = _deploy();
        seat = _mint(HOLDER_A, INSTANCE_A);
    }

    function _measure(DstackClusterNFT.PeerRecordInput memory r) internal returns (uint256 used) {
        DstackClusterNFT.DstackProof memory p = _proof(DERIVED_KEY_A, INSTANCE_A);
        bytes memory sig = _signRecord(DERIVED_KEY_A, r, INSTANCE_A);
        uint256 before = gasleft();
        cluster.registerPeer(r, p, sig);
        used = before - gasleft();
    }

    function test_GasOfRegisterPeer() public {
        DstackClusterNFT.PeerRecordInput memory r = _record(seat, WG_KEY_A, 1);
        r.gatewayUrl = "";
        uint256 first = _measure(r);
        emit log_named_uint("registerPeer, first record, WireGuard only", first);

        r.wgPublicKey = WG_KEY_B;
        r.nonce = 2;
        uint256 rotate = _measure(r);
        emit log_named_uint("registerPeer, key rotation", rotate);

        r.endpoint = "198.51.100.7:4000";
        r.nonce = 3;
        uint256 move = _measure(r);
        emit log_named_uint("registerPeer, endpoint move", move);

        r.gatewayUrl = GATEWAY_URL;
        r.nonce = 4;
        uint256 addUrl = _measure(r);
        emit log_named_uint("registerPeer, adding a 77-byte gateway URL", addUrl);

        // The budget from the contract issue, for the record every WireGuard node sends.
        assertTrue(first <= 200_000, "first WireGuard record within 200k gas");
    }

    function test_GasOfFirstRecordWithGatewayUrl() public {
        uint256 used = _measure(_record(seat, WG_KEY_A, 1));
        emit log_named_uint("registerPeer, first record with a 77-byte gateway URL", used);
        assertTrue(used > 0, "measured");
    }
}

/// @notice The gas of reading every record when many seats were minted over the cluster's life but few are
/// active (mint-then-deactivate is cheap when public minting is on). Run with -vv.
contract FullReadGasTest is ClusterFixture {
    event log_named_uint(string key, uint256 val);

    uint256 internal constant EVER_MINTED = 1000;
    uint256 internal constant ACTIVE = 50;

    function setUp() public {
        address[] memory appIds = new address[](1);
        appIds[0] = APP_ID;
        // A /16 holds 65,534 seats, enough to mint a thousand.
        cluster = new DstackClusterNFT(OWNER, KMS_ROOT, appIds, 0x0a000000, 16, EVER_MINTED);
        for (uint256 i = 1; i <= EVER_MINTED; ++i) {
            string memory instance = _instanceId(i);
            uint256 id = _mint(HOLDER_A, instance);
            if (i % (EVER_MINTED / ACTIVE) == 0) {
                _register(id, 0x1000 + i, instance, keccak256(abi.encode("wg", i)), 1);
            } else {
                vm.prank(HOLDER_A);
                cluster.deactivate(id);
            }
        }
    }

    function _instanceId(uint256 i) internal pure returns (string memory) {
        bytes memory h = abi.encodePacked(bytes20(keccak256(abi.encode("instance", i))));
        bytes16 digits = "0123456789abcdef";
        bytes memory out = new bytes(40);
        for (uint256 k = 0; k < 20; ++k) {
            out[2 * k] = digits[uint8(h[k]) >> 4];
            out[2 * k + 1] = digits[uint8(h[k]) & 15];
        }
        return string(out);
    }

    function test_GasOfAFullRead() public {
        assertEq(cluster.activeSeats(), ACTIVE, "active seats");
        uint256 before = gasleft();
        DstackClusterNFT.Peer[] memory peers = cluster.getPeers();
        uint256 used = before - gasleft();
        assertEq(peers.length, ACTIVE, "every active record");
        emit log_named_uint("getPeers(), 1,000 seats ever minted, 50 with records", used);
    }

    /// The agent's full read: pages at one block, each call bounded however many records there are.
    function test_GasOfAPagedFullRead() public {
        uint256 before = gasleft();
        (DstackClusterNFT.Peer[] memory first, uint256 total) = cluster.getPeersPage(0, 25);
        (DstackClusterNFT.Peer[] memory second,) = cluster.getPeersPage(25, 25);
        uint256 used = before - gasleft();
        assertEq(first.length + second.length, total, "two pages hold every record");
        emit log_named_uint("getPeersPage(0, 25) + getPeersPage(25, 25), same cluster", used);
    }
}
