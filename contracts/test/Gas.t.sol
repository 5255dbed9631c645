// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice A contract whose one function does nothing: calling it shows whether forge runs each call as a
/// transaction of its own.
contract Noop {
    function poke() external {}
}

/// @notice Measures registerPeer's execution gas the way it is spent in real life: each registration in a
/// transaction of its own, after earlier ones were made in `setUp` (a transaction of their own). Under
/// `forge test --gas-report` forge runs each call as a transaction, whose gas then includes the 21,000 base
/// and the calldata; those are taken off, so the figures are execution gas in both modes. Run with -vv.
abstract contract GasMeasure is ClusterFixture {
    event log_named_uint(string key, uint256 val);

    uint256 internal seat;
    Noop internal noop;

    function _setUpSeat() internal {
        cluster = _deploy();
        seat = _mint(HOLDER_A, INSTANCE_A);
        noop = new Noop();
    }

    function _measure(DstackClusterNFT.PeerRecordInput memory r) internal returns (uint256 used) {
        DstackClusterNFT.DstackProof memory p = _proof(DERIVED_KEY_A, INSTANCE_A);
        bytes memory sig = _signRecord(DERIVED_KEY_A, r, INSTANCE_A);
        uint256 before = gasleft();
        noop.poke();
        bool isolated = before - gasleft() > 21_000;
        before = gasleft();
        cluster.registerPeer(r, p, sig);
        used = before - gasleft();
        if (isolated) used -= _intrinsic(abi.encodeCall(cluster.registerPeer, (r, p, sig)));
    }

    /// A transaction's intrinsic gas for `data` (Cancun): the base and 4 per zero, 16 per other calldata byte.
    function _intrinsic(bytes memory data) internal pure returns (uint256 gas) {
        gas = 21_000;
        for (uint256 i = 0; i < data.length; ++i) {
            gas += data[i] == 0 ? 4 : 16;
        }
    }

    /// A WireGuard node's record: key and endpoint, no gateway URL.
    function _wireGuardRecord(bytes32 key, uint64 nonce) internal view returns (DstackClusterNFT.PeerRecordInput memory) {
        return DstackClusterNFT.PeerRecordInput(seat, key, ENDPOINT, "", nonce);
    }
}

/// @notice A seat's first record.
contract GasOfFirstRecordTest is GasMeasure {
    function setUp() public {
        _setUpSeat();
    }

    function test_GasOfFirstWireGuardRecord() public {
        uint256 used = _measure(_wireGuardRecord(WG_KEY_A, 1));
        emit log_named_uint("registerPeer, first record, WireGuard only", used);
        // The budget from the contract issue, for the record every WireGuard node sends.
        assertTrue(used <= 200_000, "first WireGuard record within 200k gas");
    }

    function test_GasOfFirstRecordWithGatewayUrl() public {
        emit log_named_uint("registerPeer, first record with a 77-byte gateway URL", _measure(_record(seat, WG_KEY_A, 1)));
    }
}

/// @notice A seat's later records, after its first WireGuard record.
contract GasOfLaterRecordsTest is GasMeasure {
    function setUp() public {
        _setUpSeat();
        _register(seat, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
    }

    function test_GasOfKeyRotation() public {
        emit log_named_uint("registerPeer, key rotation", _measure(_wireGuardRecord(WG_KEY_B, 2)));
    }

    function test_GasOfEndpointMove() public {
        DstackClusterNFT.PeerRecordInput memory r = _wireGuardRecord(WG_KEY_A, 2);
        r.endpoint = "198.51.100.7:4000";
        emit log_named_uint("registerPeer, endpoint move", _measure(r));
    }

    function test_GasOfAddingAGatewayUrl() public {
        emit log_named_uint("registerPeer, adding a 77-byte gateway URL", _measure(_record(seat, WG_KEY_A, 2)));
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
