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

/// @notice Measures registerPeer's and bindInstance's execution gas the way it is spent in real life: each call in
/// a transaction of its own, after earlier ones were made in `setUp` (a transaction of their own). Under
/// `forge test --gas-report` forge runs each call as a transaction, whose gas then includes the 21,000 base
/// and the calldata; those are taken off, so the figures are execution gas in both modes. Run with -vv.
/// A transaction's gas is also net of its refunds: a record that rewrites slots (restoring a string slot's
/// value, say) reads lower under --gas-report, which is what it costs on chain, than under plain -vv; a
/// record or binding that only fills slots reads the same in both.
abstract contract GasMeasure is ClusterFixture {
    event log_named_uint(string key, uint256 val);

    uint256 internal seat;
    Noop internal noop;

    function _setUpSeat() internal {
        cluster = _deploy();
        seat = _mint(HOLDER_A, INSTANCE_A);
        noop = new Noop();
    }

    /// A seat minted unbound, then bound to instance A with a 5 KB quote.
    function _setUpBoundSeat() internal {
        cluster = _deploy();
        seat = _mint(HOLDER_A, "");
        noop = new Noop();
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        b.evidence = _quote();
        vm.prank(HOLDER_A);
        cluster.bindInstance(seat, b);
    }

    function _measure(DstackClusterNFT.PeerRecordInput memory r) internal returns (uint256) {
        return _measure(r, DERIVED_KEY_A, INSTANCE_A);
    }

    function _measure(DstackClusterNFT.PeerRecordInput memory r, uint256 nodeKey, string memory instanceId)
        internal
        returns (uint256 used)
    {
        DstackClusterNFT.DstackProof memory p = _proof(nodeKey, instanceId);
        bytes memory sig = _signRecord(nodeKey, r, instanceId);
        bool isolated = _isolated();
        uint256 before = gasleft();
        cluster.registerPeer(r, p, sig);
        used = before - gasleft();
        if (isolated) used -= _intrinsic(abi.encodeCall(cluster.registerPeer, (r, p, sig)));
    }

    /// The holder binds `seat` with `b`, measured as `_measure` measures a registration.
    function _measureBind(DstackClusterNFT.NodeBinding memory b) internal returns (uint256 used) {
        bool isolated = _isolated();
        vm.prank(HOLDER_A);
        uint256 before = gasleft();
        cluster.bindInstance(seat, b);
        used = before - gasleft();
        if (isolated) used -= _intrinsic(abi.encodeCall(cluster.bindInstance, (seat, b)));
    }

    /// Whether forge runs each call as a transaction of its own (as under --gas-report).
    function _isolated() internal returns (bool) {
        uint256 before = gasleft();
        noop.poke();
        return before - gasleft() > 21_000;
    }

    /// A TDX quote's size of evidence (a v4 quote with its certification data and event log runs to ~5 KB),
    /// with no zero byte, so that its calldata costs what a real quote's does.
    function _quote() internal pure returns (bytes memory q) {
        q = new bytes(EVIDENCE_BYTES);
        for (uint256 i = 0; i < q.length; ++i) {
            q[i] = bytes1(uint8(1 + i % 255));
        }
    }

    uint256 internal constant EVIDENCE_BYTES = 5000;

    /// A transaction's intrinsic gas for `data` (Cancun): the base and 4 per zero, 16 per other calldata byte.
    function _intrinsic(bytes memory data) internal pure returns (uint256 gas) {
        gas = 21_000;
        for (uint256 i = 0; i < data.length; ++i) {
            gas += data[i] == 0 ? 4 : 16;
        }
    }

    /// Instance `i`'s id: 40 lowercase hex characters, as dstack's are.
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

    /// A WireGuard node's record: key and endpoint, no gateway URL.
    function _wireGuardRecord(bytes32 key, uint64 nonce)
        internal
        view
        returns (DstackClusterNFT.PeerRecordInput memory)
    {
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
        emit log_named_uint(
            "registerPeer, first record with a 77-byte gateway URL", _measure(_record(seat, WG_KEY_A, 1))
        );
    }

    /// In production mode the gateway URL's host is checked against the base domains, which the app auth keeps.
    function test_GasOfFirstRecordWithGatewayUrlInProduction() public {
        vm.startPrank(OWNER);
        cluster.setProductionMode(true);
        cluster.appAuth().addBaseDomain("example.org");
        cluster.appAuth().addBaseDomain("phala.network");
        vm.stopPrank();
        emit log_named_uint(
            "registerPeer, first record with a gateway URL, production mode, second of two domains",
            _measure(_record(seat, WG_KEY_A, 1))
        );
    }
}

/// @notice A seat's later records, after its first WireGuard record.
contract GasOfLaterRecordsTest is GasMeasure {
    function setUp() public {
        _setUpSeat();
        _register(seat, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
    }

    /// The record an agent sends again to refresh it: the same fields, the next nonce.
    function test_GasOfARepeatRecord() public {
        uint256 used = _measure(_wireGuardRecord(WG_KEY_A, 2));
        emit log_named_uint("registerPeer, repeat record (same fields, next nonce)", used);
        // No slot goes from zero: it costs less than any record that changes a field.
        assertTrue(used <= 140_000, "a repeat record within 140k gas");
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

/// @notice A seat's first binding, with a quote-sized (5,000-byte) evidence that the contract hashes and emits.
contract GasOfBindingTest is GasMeasure {
    function setUp() public {
        cluster = _deploy();
        seat = _mint(HOLDER_A, "");
        noop = new Noop();
    }

    function test_GasOfBindingWithA5KbQuote() public {
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        b.evidence = _quote();
        uint256 used = _measureBind(b);
        emit log_named_uint("bindInstance, first binding, 5,000-byte evidence", used);
        assertEq(cluster.getPeer(seat).evidenceHash, keccak256(b.evidence), "the quote's hash is kept");
        assertTrue(used <= 300_000, "a binding with a 5 KB quote within 300k gas");
    }
}

/// @notice A seatless node's request for a seat, with a quote-sized (5,000-byte) evidence the event carries.
contract GasOfBindingRequestTest is GasMeasure {
    function setUp() public {
        cluster = _deploy();
        noop = new Noop();
    }

    function test_GasOfABindingRequestWithA5KbQuote() public {
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        b.evidence = _quote();
        bool isolated = _isolated();
        uint256 before = gasleft();
        cluster.requestBinding(HOLDER_A, b);
        uint256 used = before - gasleft();
        if (isolated) used -= _intrinsic(abi.encodeCall(cluster.requestBinding, (HOLDER_A, b)));
        emit log_named_uint("requestBinding, first request, 5,000-byte evidence", used);
        assertEq(cluster.bindingRequestedOf(b.node), HOLDER_A, "pending");
        assertTrue(used <= 300_000, "a request with a 5 KB quote within 300k gas");
    }
}

/// @notice A seat's first record after a binding with a 5 KB quote.
contract GasOfFirstRecordAfterABindingTest is GasMeasure {
    function setUp() public {
        _setUpBoundSeat();
    }

    function test_GasOfFirstRecordAfterA5KbBinding() public {
        uint256 used = _measure(_wireGuardRecord(WG_KEY_A, 1));
        emit log_named_uint("registerPeer, first record after a 5,000-byte-evidence binding", used);
        // The evidence is hashed at the binding; a registration never reads it.
        assertTrue(used <= 200_000, "first WireGuard record within 200k gas");
    }
}

/// @notice A rebinding of the same instance to a new node (it lost its volume), which clears the seat's record.
contract GasOfRebindingTest is GasMeasure {
    function setUp() public {
        _setUpBoundSeat();
        _register(seat, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
    }

    function test_GasOfRebindingAfterALostVolume() public {
        DstackClusterNFT.NodeBinding memory b = _binding(OTHER_KEY, INSTANCE_A, HOLDER_A);
        b.evidence = _quote();
        b.evidence[0] = 0xff; // another quote
        uint256 used = _measureBind(b);
        emit log_named_uint("bindInstance, same instance, new node, 5,000-byte evidence, record cleared", used);
        assertEq(cluster.getPeer(seat).registeredBlock, 0, "record cleared");
        assertTrue(used <= 300_000, "a rebinding with a 5 KB quote within 300k gas");
    }
}

/// @notice The gas of reading every record when many seats were minted over the cluster's life but few are
/// active (mint-then-deactivate is cheap when public minting is on). Run with -vv.
contract FullReadGasTest is GasMeasure {
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
                _register(id, _nodeKey(instance), instance, keccak256(abi.encode("wg", i)), 1);
            } else {
                vm.prank(HOLDER_A);
                cluster.deactivate(id);
            }
        }
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

/// @notice Every transaction of a seat's life costs the same with 1,000 seats minted, bound and registered before
/// it as with 10: none loops over the seats or records there are. Storage is cooled before each call, as a
/// transaction of its own finds it. Run with -vv for the figures; the election's own worst case is in
/// ElectionSeats.t.sol.
contract GasAtScaleTest is GasMeasure {
    string[8] internal steps = [
        "mintNodeAccess (unbound)",
        "bindInstance",
        "registerPeer, first record",
        "registerPeer, the same fields again",
        "deactivate",
        "activate",
        "transferFrom (record cleared)",
        "revoke"
    ];

    function _holder(uint256 i) internal pure returns (address) {
        return address(uint160(0x1000 + i));
    }

    function _cool() internal {
        vm.cool(address(cluster));
        vm.cool(address(election));
        vm.cool(address(appAuth));
    }

    /// One call from `from`, cold, in execution gas (the intrinsic gas taken off where forge made it a
    /// transaction of its own); a revert fails the test with the step's name.
    function _take(uint256 step, address from, bytes memory data) internal returns (uint256 used) {
        _cool();
        bool isolated = _isolated();
        vm.prank(from);
        uint256 before = gasleft();
        (bool ok,) = address(cluster).call(data);
        used = before - gasleft();
        assertTrue(ok, string.concat(steps[step], " reverted"));
        if (isolated) used -= _intrinsic(data);
    }

    /// A /16 cluster with `n` seats minted, bound and registered; then a new seat's life, call by call.
    function _lifeAfter(uint256 n) internal returns (uint256[8] memory gas) {
        address[] memory appIds = new address[](1);
        appIds[0] = APP_ID;
        cluster = _keepElection(new DstackClusterNFT(OWNER, KMS_ROOT, appIds, 0x0a010000, 16, 2000));
        noop = new Noop();
        for (uint256 i = 1; i <= n; ++i) {
            string memory other = _instanceId(i);
            _mint(_holder(i), other);
            _register(i, _nodeKey(other), other, keccak256(abi.encode("wg", i)), 1);
        }
        seat = n + 1;
        string memory instance = _instanceId(seat);
        uint256 key = _nodeKey(instance);
        DstackClusterNFT.NodeBinding memory none;
        gas[0] = _take(0, OWNER, abi.encodeCall(cluster.mintNodeAccess, (HOLDER_B, none)));
        gas[1] = _take(1, HOLDER_B, abi.encodeCall(cluster.bindInstance, (seat, _binding(key, instance, HOLDER_B))));
        for (uint64 nonce = 1; nonce <= 2; ++nonce) {
            DstackClusterNFT.PeerRecordInput memory r = _wireGuardRecord(WG_KEY_B, nonce);
            bytes memory data =
                abi.encodeCall(cluster.registerPeer, (r, _proof(key, instance), _signRecord(key, r, instance)));
            gas[1 + nonce] = _take(1 + nonce, HOLDER_B, data);
        }
        gas[4] = _take(4, HOLDER_B, abi.encodeCall(cluster.deactivate, (seat)));
        gas[5] = _take(5, HOLDER_B, abi.encodeCall(cluster.activate, (seat)));
        gas[6] = _take(
            6, HOLDER_B, abi.encodeWithSignature("transferFrom(address,address,uint256)", HOLDER_B, HOLDER_A, seat)
        );
        gas[7] = _take(7, OWNER, abi.encodeCall(cluster.revoke, (seat)));
        assertEq(cluster.activeSeats(), n, "the new seat's life ends with the seats it started with");
    }

    function test_EveryTransactionCostsTheSameAt1000SeatsAsAt10() public {
        uint256[8] memory at10 = _lifeAfter(10);
        uint256[8] memory at1000 = _lifeAfter(1000);
        for (uint256 i = 0; i < steps.length; ++i) {
            emit log_named_uint(string.concat(steps[i], ", 10 seats before it"), at10[i]);
            emit log_named_uint(string.concat(steps[i], ", 1,000 seats before it"), at1000[i]);
            // The seat's place in the election's bitmap is a word and a group further on at 1,000: a few cold
            // reads, never a loop.
            assertTrue(at1000[i] <= at10[i] + 5_000, string.concat(steps[i], " grows with the seats before it"));
        }
    }
}
