// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {DstackClusterProofs} from "../src/DstackClusterProofs.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";

/// @notice The cluster keeps room under EIP-170 (24,576 bytes of runtime) for the features that come next: a
/// change that eats it fails here, not at a deployment. The stateless checks live in a contract of their own,
/// which the cluster makes and alone calls; the gateway domains live in its app auth.
contract RoomTest is ClusterFixture {
    uint256 internal constant EIP_170 = 24_576;
    /// Runtime the cluster keeps free at least.
    uint256 internal constant ROOM = 3_072;
    /// EIP-3860's limit on initcode: the cluster's holds its election's, app auth's and proofs' creation code.
    uint256 internal constant EIP_3860 = 49_152;
    /// Initcode the cluster keeps free at least, for the contracts it makes to grow.
    uint256 internal constant INITCODE_ROOM = 2_048;

    function test_TheClusterKeepsRoomUnderEip170() public {
        DstackClusterNFT deployed = _deploy();
        uint256 size = address(deployed).code.length;
        assertTrue(size + ROOM <= EIP_170, "the cluster's runtime leaves less than 3 KiB under EIP-170");
        assertTrue(
            type(DstackClusterNFT).creationCode.length + INITCODE_ROOM <= EIP_3860,
            "the cluster's initcode (with its election's, app auth's and proofs') leaves less than 2 KiB under EIP-3860"
        );
        DstackClusterProofs proofs = deployed.proofs();
        assertTrue(address(proofs).code.length > 0, "the cluster made its proofs contract");
        assertEq(deployed.PURPOSE_PREFIX(), "dstack-mesh-node:", "one purpose prefix for both");
    }
}
