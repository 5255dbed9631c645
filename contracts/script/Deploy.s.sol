// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {vm} from "../test/utils/Vm.sol";

/// @notice Deploys a cluster with its constructor arguments from the environment and prints its address.
///
///   PRIVATE_KEY=... KMS_ROOT=0x... APP_IDS=0x...,0x... [MESH_CIDR=10.0.1.0/24] [MAX_NODES=100] \
///   [CLUSTER_OWNER=0x...] forge script script/Deploy.s.sol --rpc-url http://127.0.0.1:8545 --broadcast
///
/// `meshctl deploy` does the same from the committed artifact without forge.
contract Deploy {
    event log_named_address(string key, address val);

    function run() external returns (DstackClusterNFT cluster) {
        uint256 deployerKey = vm.envUint("PRIVATE_KEY");
        address owner = vm.envOr("CLUSTER_OWNER", vm.addr(deployerKey));
        address kmsRoot = vm.envAddress("KMS_ROOT");
        address[] memory appIds = vm.envAddress("APP_IDS", ",");
        (uint32 network, uint8 prefixLength) = parseCidr(vm.envOr("MESH_CIDR", string("10.0.1.0/24")));
        uint256 maxNodes = vm.envOr("MAX_NODES", uint256(100));

        vm.startBroadcast(deployerKey);
        cluster = new DstackClusterNFT(owner, kmsRoot, appIds, network, prefixLength, maxNodes);
        vm.stopBroadcast();
        emit log_named_address("DstackClusterNFT deployed at", address(cluster));
    }

    /// @notice "a.b.c.d/len" as a big-endian integer and a length; reverts naming the input when malformed.
    function parseCidr(string memory cidr) public pure returns (uint32 network, uint8 prefixLength) {
        bytes memory b = bytes(cidr);
        uint256 value;
        uint256 octet;
        uint256 digits;
        uint256 dots;
        bool slash;
        for (uint256 i = 0; i < b.length; ++i) {
            bytes1 c = b[i];
            if (c >= "0" && c <= "9") {
                octet = octet * 10 + uint8(c) - 48;
                if (++digits > 3) revert(string.concat("MESH_CIDR: malformed, expected a.b.c.d/len: ", cidr));
            } else if ((c == "." && !slash) || (c == "/" && !slash && dots == 3)) {
                if (digits == 0 || octet > 255) revert(string.concat("MESH_CIDR: malformed octet in ", cidr));
                value = (value << 8) | octet;
                if (c == ".") ++dots;
                else slash = true;
                octet = 0;
                digits = 0;
            } else {
                revert(string.concat("MESH_CIDR: malformed, expected a.b.c.d/len: ", cidr));
            }
        }
        if (!slash || digits == 0 || octet > 32) revert(string.concat("MESH_CIDR: missing or bad /len in ", cidr));
        return (uint32(value), uint8(octet));
    }
}
