// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";

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
