// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterElection, IClusterSeats} from "../src/DstackClusterElection.sol";
import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice A cluster reduced to what the election reads, whose seats the test sets directly: the election's
/// own record of the active seats can then be driven to any id a /8 holds without minting its way there.
contract StandInCluster is IClusterSeats {
    DstackClusterElection public immutable election;
    mapping(uint256 => bool) public isActiveSeat;
    uint256 public activeSeats;

    constructor() {
        election = new DstackClusterElection(this);
    }

    function join(uint256 id) external {
        if (isActiveSeat[id]) return;
        isActiveSeat[id] = true;
        ++activeSeats;
        election.seatJoined(id);
    }

    function leave(uint256 id) external {
        if (!isActiveSeat[id]) return;
        isActiveSeat[id] = false;
        --activeSeats;
        election.seatLeft(id);
    }

    function canActFor(uint256, address) external pure returns (bool) {
        return true;
    }

    function boundBlockOf(uint256) external pure returns (uint64) {
        return 0;
    }

    function releaseBinding(uint256, uint64) external pure {}
}

/// @notice The election finds the lowest eligible seat among the active ones at any id, across the words and
/// groups of its bitmap, and what it costs does not grow with the seats ever minted.
contract ElectionSeatsTest is ClusterFixture {
    event log_named_uint(string key, uint256 val);

    uint256 internal constant LAST_ID_OF_A_SLASH_8 = (1 << 24) - 2;

    function _leader(StandInCluster c, uint256 caller) internal returns (uint256 leader) {
        c.election().electLeader(caller);
        leader = c.election().leaderTokenId();
    }

    function test_TheLowestActiveSeatIsElectedAcrossWordAndGroupBoundaries() public {
        uint256[7] memory ids = [uint256(1), 255, 256, 65_535, 65_536, 1 << 20, LAST_ID_OF_A_SLASH_8];
        StandInCluster c = new StandInCluster();
        for (uint256 i = ids.length; i > 0; --i) {
            c.join(ids[i - 1]);
        }
        for (uint256 i = 0; i < ids.length; ++i) {
            assertEq(_leader(c, ids[ids.length - 1]), ids[i], string.concat("lowest active seat: ", Strings.toString(ids[i])));
            c.leave(ids[i]); // the leader leaves: the next lowest is elected next
            assertEq(c.election().leaderTokenId(), 0, "a leader that leaves is cleared");
        }
    }

    /// @notice Any set of seats, joined and left in any order: the leader elected is the lowest id still active.
    function testFuzz_TheLeaderIsTheLowestSeatStillActive(uint24[8] memory raw, uint8 leaving) public {
        StandInCluster c = new StandInCluster();
        uint256 lowest = type(uint256).max;
        for (uint256 i = 0; i < raw.length; ++i) {
            uint256 id = 1 + uint256(raw[i]) % LAST_ID_OF_A_SLASH_8;
            c.join(id);
        }
        for (uint256 i = 0; i < raw.length; ++i) {
            uint256 id = 1 + uint256(raw[i]) % LAST_ID_OF_A_SLASH_8;
            if (leaving & (1 << i) != 0) c.leave(id);
        }
        for (uint256 i = 0; i < raw.length; ++i) {
            uint256 id = 1 + uint256(raw[i]) % LAST_ID_OF_A_SLASH_8;
            if (c.isActiveSeat(id) && id < lowest) lowest = id;
        }
        // With none left active, no seat may call for an election at all.
        if (lowest != type(uint256).max) assertEq(_leader(c, lowest), lowest, "the lowest active seat");
    }

    /// @notice The worst case of a loop over every seat ever minted: all but the last three seats deactivated.
    /// The election's gas at 1,000 seats minted is what it is at 10 (run with -vv for the figures).
    function test_ElectionGasDoesNotGrowWithTheSeatsEverMinted() public {
        (uint256 elect10, uint256 replace10) = _electionGas(10);
        (uint256 elect1000, uint256 replace1000) = _electionGas(1000);
        emit log_named_uint("electLeader gas, 10 seats minted", elect10);
        emit log_named_uint("electLeader gas, 1,000 seats minted", elect1000);
        emit log_named_uint("castVote that replaces the leader, 10 seats minted", replace10);
        emit log_named_uint("castVote that replaces the leader, 1,000 seats minted", replace1000);
        // Both measured cold, as a transaction finds them. At 1,000 the three seats sit in the bitmap's fourth
        // word, not its first: one more level and one more word read, two cold reads of 2,100 gas.
        assertTrue(elect1000 <= elect10 + 5_000, "electLeader grows with the seats ever minted");
        assertTrue(replace1000 <= replace10 + 5_000, "a replacing vote grows with the seats ever minted");
    }

    /// Storage cold, as a transaction of its own finds it, whether or not forge runs each call as one
    /// (`--gas-report` does; plain `forge test` runs the whole test as one transaction).
    function _cool() internal {
        vm.cool(address(cluster));
        vm.cool(address(election));
    }

    function _holder(uint256 i) internal pure returns (address) {
        return address(uint160(0x1000 + i));
    }

    /// `n` seats minted on a /16, all but the last three deactivated; the gas of electing, and of the vote that
    /// replaces the leader.
    function _electionGas(uint256 n) internal returns (uint256 elect, uint256 replace) {
        address[] memory appIds = new address[](1);
        appIds[0] = APP_ID;
        cluster = _keepElection(new DstackClusterNFT(OWNER, KMS_ROOT, appIds, 0x0a010000, 16, 10));
        for (uint256 i = 1; i <= n; ++i) {
            _mint(_holder(i), "");
            if (i + 3 <= n) {
                vm.prank(_holder(i));
                cluster.deactivate(i);
            }
        }
        _cool();
        vm.prank(_holder(n));
        uint256 before = gasleft();
        election.electLeader(n);
        elect = before - gasleft();
        assertEq(election.leaderTokenId(), n - 2, "the lowest active seat leads");
        vm.prank(_holder(n - 1));
        election.castVote(n - 1, n - 2);
        _cool();
        vm.prank(_holder(n));
        before = gasleft();
        election.castVote(n, n - 2);
        replace = before - gasleft();
        assertEq(election.leaderTokenId(), n - 1, "two of three votes replace the leader by the next seat");
    }
}
