// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ClusterFixture} from "./ClusterFixture.sol";
import {vm} from "./Vm.sol";

/// @notice A fresh cluster whose seat i is held by `_holder(i)`, for the election's tests.
abstract contract LeaderFixture is ClusterFixture {
    function setUp() public {
        cluster = _deploy();
    }

    function _holder(uint256 i) internal pure returns (address) {
        return address(uint160(0x1000 + i));
    }

    function _seats(uint256 n) internal {
        for (uint256 i = 1; i <= n; ++i) {
            _mint(_holder(i), "");
        }
    }

    function _vote(uint256 voter, uint256 target) internal {
        vm.prank(_holder(voter));
        election.castVote(voter, target);
    }

    function _elect() internal {
        vm.prank(_holder(1));
        election.electLeader(1);
    }
}
