// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice The record list: reading it costs what the records cost, pages cover every record exactly once,
/// and clears keep it exact.
contract PagingTest is ClusterFixture {
    function setUp() public {
        cluster = _deploy(); // room for 10 active seats
    }

    function _instance(uint256 i) internal pure returns (string memory) {
        bytes memory out = bytes("0000000000000000000000000000000000000000");
        out[39] = bytes1(uint8(48 + i % 10));
        out[38] = bytes1(uint8(48 + i / 10));
        return string(out);
    }

    function _seats(uint256 n) internal returns (uint256[] memory ids) {
        ids = new uint256[](n);
        for (uint256 i = 0; i < n; ++i) {
            ids[i] = _mint(HOLDER_A, _instance(i + 1));
            _register(ids[i], _nodeKey(_instance(i + 1)), _instance(i + 1), keccak256(abi.encode(i)), 1);
        }
    }

    /// Reads every page of `size`, checking that each seat in `expected` appears exactly once.
    function _readAll(uint256 size, uint256[] memory expected) internal view {
        uint256 seen;
        uint256 offset;
        while (true) {
            (DstackClusterNFT.Peer[] memory page, uint256 total) = cluster.getPeersPage(offset, size);
            assertEq(total, expected.length, "total");
            if (page.length == 0) break;
            assertTrue(page.length <= size, "page within its limit");
            for (uint256 i = 0; i < page.length; ++i) {
                uint256 bit = 1 << page[i].tokenId;
                // Seat t was minted bound to _instance(t), whose node signed its record.
                address node = vm.addr(_nodeKey(_instance(page[i].tokenId)));
                assertEq(page[i].node, node, "the seat's node");
                assertEq(page[i].evidenceHash, keccak256(_evidence(_instance(page[i].tokenId), node)), "evidence hash");
                assertEq(seen & bit, 0, "listed once");
                seen |= bit;
            }
            offset += page.length;
        }
        uint256 want;
        for (uint256 i = 0; i < expected.length; ++i) {
            want |= 1 << expected[i];
        }
        assertEq(seen, want, "every record listed");
    }

    event log_named_uint(string key, uint256 val);

    /// @notice The agents read 250 records per call (mesh-chain's PAGE_SIZE), chosen from this figure: a page,
    /// each record with an endpoint, a gateway URL and its binding's hashes, read cold as an eth_call reads it,
    /// must stay under a quarter of what RPCs allow an eth_call (geth's default cap is 50M gas). 100 records
    /// are measured and the cost per record scaled to 250. Run with -vv for the figures.
    function test_APageOfOneHundredRecordsFitsAnRpcsCallGasCap() public {
        vm.prank(OWNER);
        cluster.setMaxNodes(100);
        for (uint256 i = 1; i <= 100; ++i) {
            bytes memory id = bytes("0000000000000000000000000000000000000000");
            id[39] = bytes1(uint8(48 + i % 10));
            id[38] = bytes1(uint8(48 + (i / 10) % 10));
            id[37] = bytes1(uint8(48 + i / 100));
            uint256 seat = _mint(HOLDER_A, string(id));
            _register(seat, _nodeKey(string(id)), string(id), keccak256(abi.encode(i)), 1);
        }
        vm.cool(address(cluster));
        uint256 before = gasleft();
        (DstackClusterNFT.Peer[] memory page, uint256 total) = cluster.getPeersPage(0, 100);
        uint256 used = before - gasleft();
        assertEq(page.length, 100, "a full page");
        assertEq(total, 100, "every record counted");
        emit log_named_uint("getPeersPage(0, 100) gas, 100 records", used);
        emit log_named_uint("gas per record", used / 100);
        assertTrue(used * 5 / 2 < 12_500_000, "a page of 250 records would cost over a quarter of geth's eth_call cap");
    }

    function test_PagesListEveryRecordOnce() public {
        uint256[] memory ids = _seats(7);
        for (uint256 size = 1; size <= 8; ++size) {
            _readAll(size, ids);
        }
        assertEq(cluster.getPeers().length, 7, "getPeers lists all");
    }

    function test_ClearsKeepTheListExact() public {
        uint256[] memory ids = _seats(6);
        vm.startPrank(HOLDER_A);
        cluster.deactivate(ids[1]); // from the middle: the last record moves into its place
        cluster.deactivate(ids[5]); // the last one
        vm.stopPrank();
        vm.prank(OWNER);
        cluster.revoke(ids[0]); // the first one
        uint256[] memory left = new uint256[](3);
        left[0] = ids[2];
        left[1] = ids[3];
        left[2] = ids[4];
        _readAll(2, left);
        // A seat that registers again joins the list once.
        vm.prank(HOLDER_A);
        cluster.activate(ids[1]);
        _register(ids[1], _nodeKey(_instance(2)), _instance(2), keccak256("again"), 2);
        _register(ids[1], _nodeKey(_instance(2)), _instance(2), keccak256("and again"), 3);
        uint256[] memory back = new uint256[](4);
        back[0] = ids[2];
        back[1] = ids[3];
        back[2] = ids[4];
        back[3] = ids[1];
        _readAll(3, back);
    }

    function test_PagesPastTheEndAreEmpty() public {
        _seats(2);
        (DstackClusterNFT.Peer[] memory page, uint256 total) = cluster.getPeersPage(2, 10);
        assertEq(page.length, 0, "past the end");
        assertEq(total, 2, "total");
        (page,) = cluster.getPeersPage(0, 0);
        assertEq(page.length, 0, "limit 0");
        (page,) = cluster.getPeersPage(1, type(uint256).max);
        assertEq(page.length, 1, "a huge limit does not overflow");
        (page,) = cluster.getPeersPage(type(uint256).max, type(uint256).max);
        assertEq(page.length, 0, "a huge offset does not overflow");
    }

    function test_SeatsWithoutRecordsAreNotListed() public {
        _mint(HOLDER_A, _instance(1));
        _mint(HOLDER_A, "");
        (, uint256 total) = cluster.getPeersPage(0, 10);
        assertEq(total, 0, "minted seats without records");
        assertEq(cluster.getPeerEndpoints().length, 0, "no endpoints");
    }
}
