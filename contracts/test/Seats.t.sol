// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {DstackClusterAppAuth} from "../src/DstackClusterAppAuth.sol";
import {DstackClusterSettings} from "../src/DstackClusterSettings.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC721Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Seats: minting, binding, the active-seat limit, prefix capacity, and what clears a record.
contract SeatsTest is ClusterFixture {
    function setUp() public {
        cluster = _deploy();
    }

    function test_SeatNOwnsNetworkPlusN() public {
        uint256 a = _mint(HOLDER_A, INSTANCE_A);
        uint256 b = _mint(HOLDER_B, "");
        assertEq(a, 1, "ids start at 1");
        assertEq(b, 2, "then 2");
        assertEq(cluster.overlayAddress(a), 0x0a000101, "10.0.1.1");
        assertEq(cluster.overlayAddress(b), 0x0a000102, "10.0.1.2");
        (uint32 net, uint8 len) = cluster.meshPrefix();
        assertEq(net, NETWORK, "network");
        assertEq(len, PREFIX, "prefix length");
        assertEq(cluster.tokenOfInstance(INSTANCE_A), a, "bound at mint");
        assertEq(cluster.tokenOfInstance(INSTANCE_B), 0, "unbound instance");
    }

    function test_RevertIf_NonOwnerMintsWithoutPublicMinting() public {
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterMintNotAllowed.selector, HOLDER_A));
        cluster.mintNodeAccess(HOLDER_A, _noBinding());
    }

    function test_PublicMintingCostsMintPriceAndOwnerWithdraws() public {
        vm.startPrank(OWNER);
        cluster.setPublicMinting(true);
        cluster.setMintPrice(1 ether);
        vm.stopPrank();
        vm.deal(HOLDER_A, 3 ether);
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterWrongPayment.selector, 1 ether, 0.5 ether));
        cluster.mintNodeAccess{value: 0.5 ether}(HOLDER_A, _noBinding());
        vm.prank(HOLDER_A);
        uint256 id = cluster.mintNodeAccess{value: 1 ether}(HOLDER_A, _noBinding());
        assertEq(cluster.ownerOf(id), HOLDER_A, "bought seat");
        assertEq(address(cluster).balance, 1 ether, "paid");

        address payable treasury = payable(address(0x7EA));
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, HOLDER_A));
        cluster.withdraw(treasury);
        vm.prank(OWNER);
        cluster.withdraw(treasury);
        assertEq(treasury.balance, 1 ether, "withdrawn");
        assertEq(address(cluster).balance, 0, "emptied");
    }

    function test_MaxNodesCountsActiveSeatsOnly() public {
        vm.prank(OWNER);
        cluster.setMaxNodes(2);
        _mint(HOLDER_A, "");
        uint256 b = _mint(HOLDER_B, "");
        vm.prank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterMaxNodesReached.selector, 2));
        cluster.mintNodeAccess(HOLDER_A, _noBinding());

        vm.prank(HOLDER_B);
        cluster.deactivate(b);
        assertEq(cluster.activeSeats(), 1, "one active");
        uint256 c = _mint(HOLDER_A, ""); // room again
        assertEq(c, 3, "fresh id");
        vm.prank(HOLDER_B);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterMaxNodesReached.selector, 2));
        cluster.activate(b);

        vm.prank(OWNER);
        cluster.revoke(c);
        vm.prank(HOLDER_B);
        cluster.activate(b);
        assertEq(cluster.activeSeats(), 2, "reactivated within the limit");
    }

    function test_PrefixCapacityEndsBeforeBroadcast() public {
        address[] memory appIds = new address[](1);
        appIds[0] = APP_ID;
        // 10.0.1.0/30: hosts .1 and .2; .3 is the broadcast address.
        cluster = new DstackClusterNFT(OWNER, KMS_ROOT, appIds, NETWORK, 30, 100);
        assertEq(cluster.seatCapacity(), 2, "two seats in a /30");
        _mint(HOLDER_A, "");
        uint256 second = _mint(HOLDER_A, "");
        assertEq(cluster.overlayAddress(second), 0x0a000102, "10.0.1.2");
        vm.prank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterPrefixExhausted.selector, 3, 2));
        cluster.mintNodeAccess(HOLDER_A, _noBinding());
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterPrefixExhausted.selector, 3, 2));
        cluster.overlayAddress(3);
    }

    function test_DefaultPrefixHolds254Seats() public view {
        assertEq(cluster.seatCapacity(), 254, "a /24 has 254 seats");
    }

    function test_RevertIf_PrefixInvalid() public {
        address[] memory appIds = new address[](0);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterInvalidPrefix.selector, 0x0a000101, 24));
        new DstackClusterNFT(OWNER, KMS_ROOT, appIds, 0x0a000101, 24, 1); // host bits set
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterInvalidPrefix.selector, NETWORK, 31));
        new DstackClusterNFT(OWNER, KMS_ROOT, appIds, NETWORK, 31, 1);
        vm.expectRevert(DstackClusterSettings.ClusterInvalidKmsRoot.selector);
        new DstackClusterNFT(OWNER, address(0), appIds, NETWORK, 24, 1);
    }

    function test_IdsAreNeverReissued() public {
        uint256 a = _mint(HOLDER_A, INSTANCE_A);
        vm.prank(OWNER);
        cluster.revoke(a);
        uint256 b = _mint(HOLDER_A, INSTANCE_A); // the instance is free again, the id is not
        assertEq(b, 2, "next id, not the revoked one");
        assertEq(cluster.lastTokenId(), 2, "counter");
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721NonexistentToken.selector, a));
        cluster.ownerOf(a);
    }

    function test_InstanceIdIsUniqueAcrossSeats() public {
        uint256 a = _mint(HOLDER_A, INSTANCE_A);
        uint256 b = _mint(HOLDER_B, "");
        // Even with a node of its own, consenting for seat b: the instance is another seat's.
        DstackClusterNFT.NodeBinding memory binding = _binding(DERIVED_KEY_B, INSTANCE_A, HOLDER_B);
        vm.prank(HOLDER_B);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterInstanceAlreadyBound.selector, INSTANCE_A, a));
        cluster.bindInstance(b, binding);
        assertEq(cluster.tokenOfInstance(INSTANCE_A), a, "still seat a's");
        assertEq(cluster.getPeer(b).node, address(0), "seat b unbound");
    }

    function test_RevertIf_InstanceIdNotCanonical() public {
        uint256 a = _mint(HOLDER_A, "");
        string[3] memory bad =
            ["59DF8036B824B0AAC54F8998B9E1FB2A0CFC5D3A", "0x59df8036b824b0aac54f8998b9e1fb2a0cfc5d", "59df"];
        for (uint256 i = 0; i < bad.length; ++i) {
            // Otherwise genuine: the chain names the id as given, the node consented to it.
            DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, bad[i], HOLDER_A);
            vm.prank(HOLDER_A);
            vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterInvalidInstanceId.selector, bad[i]));
            cluster.bindInstance(a, b);
        }
    }

    function test_RevertIf_RebindBySomeoneWhoDoesNotHoldTheSeat() public {
        uint256 a = _mint(HOLDER_A, INSTANCE_A);
        // A binding the node consented to for HOLDER_A, sent by others.
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_B, INSTANCE_B, HOLDER_A);
        vm.prank(HOLDER_B);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterNotSeatHolder.selector, a, HOLDER_B));
        cluster.bindInstance(a, b);
        vm.prank(OWNER); // not even the cluster owner
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterNotSeatHolder.selector, a, OWNER));
        cluster.bindInstance(a, b);
        assertEq(cluster.tokenOfInstance(INSTANCE_A), a, "still bound to A");
    }

    function test_RevertIf_BindingAnInactiveSeat() public {
        uint256 a = _mint(HOLDER_A, "");
        vm.prank(HOLDER_A);
        cluster.deactivate(a);
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_A, INSTANCE_A, HOLDER_A);
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterSeatInactive.selector, a));
        cluster.bindInstance(a, b);
    }

    function test_RebindClearsRecord() public {
        uint256 a = _mint(HOLDER_A, INSTANCE_A);
        _register(a, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        DstackClusterNFT.NodeBinding memory b = _binding(DERIVED_KEY_B, INSTANCE_B, HOLDER_A);
        vm.prank(HOLDER_A);
        vm.expectEmit();
        emit DstackClusterNFT.PeerCleared(a, DstackClusterNFT.ClearReason.Rebound);
        vm.expectEmit();
        emit DstackClusterNFT.InstanceUnbound(a, INSTANCE_A);
        cluster.bindInstance(a, b);
        _assertCleared(a);
        assertEq(cluster.tokenOfInstance(INSTANCE_A), 0, "old instance freed");
        assertEq(cluster.tokenOfInstance(INSTANCE_B), a, "new instance bound");
        // The new instance registers with a nonce above the seat's last one.
        _register(a, DERIVED_KEY_B, INSTANCE_B, WG_KEY_A, 2);
        assertEq(cluster.getPeer(a).instanceId, INSTANCE_B, "new instance registered");
    }

    function test_TransferClearsRecord() public {
        uint256 a = _mint(HOLDER_A, INSTANCE_A);
        _register(a, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        vm.prank(HOLDER_A);
        vm.expectEmit();
        emit DstackClusterNFT.PeerCleared(a, DstackClusterNFT.ClearReason.Transferred);
        cluster.transferFrom(HOLDER_A, HOLDER_B, a);
        _assertCleared(a);
        // The old record cannot be replayed onto the new holder's seat.
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(a, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryStaleNonce.selector, a, 1, 1));
        cluster.registerPeer(r, p, sig);
    }

    function test_DeactivateClearsRecord() public {
        uint256 a = _mint(HOLDER_A, INSTANCE_A);
        _register(a, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        vm.prank(HOLDER_A);
        vm.expectEmit();
        emit DstackClusterNFT.PeerCleared(a, DstackClusterNFT.ClearReason.Deactivated);
        cluster.deactivate(a);
        _assertCleared(a);
        (, bool active,,,,) = cluster.seatInfo(a);
        assertFalse(active, "inactive");
    }

    function test_RevokeBurnsAndClearsRecord() public {
        uint256 a = _mint(HOLDER_A, INSTANCE_A);
        _register(a, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, HOLDER_A));
        cluster.revoke(a);
        vm.prank(OWNER);
        vm.expectEmit();
        emit DstackClusterNFT.PeerCleared(a, DstackClusterNFT.ClearReason.Revoked);
        cluster.revoke(a);
        assertEq(cluster.getPeers().length, 0, "no peers");
        assertEq(cluster.activeSeats(), 0, "no active seats");
        assertEq(cluster.tokenOfInstance(INSTANCE_A), 0, "instance freed");
        // Its WireGuard key is free for another seat.
        uint256 b = _mint(HOLDER_B, INSTANCE_B);
        _register(b, DERIVED_KEY_B, INSTANCE_B, WG_KEY_A, 1);
    }

    function test_OwnerConfigurationEmitsEvents() public {
        vm.startPrank(OWNER);
        vm.expectEmit();
        emit DstackClusterSettings.MaxNodesUpdated(5);
        cluster.setMaxNodes(5);
        vm.expectEmit();
        emit DstackClusterSettings.PublicMintingUpdated(true);
        cluster.setPublicMinting(true);
        vm.expectEmit();
        emit DstackClusterSettings.MintPriceUpdated(7);
        cluster.setMintPrice(7);
        vm.expectEmit();
        emit DstackClusterSettings.KmsRootUpdated(KMS_ROOT, address(0x999));
        cluster.setKmsRoot(address(0x999));
        vm.expectEmit();
        emit DstackClusterSettings.AppIdUpdated(address(0x777), true);
        cluster.setAppId(address(0x777), true);
        vm.expectEmit();
        emit DstackClusterSettings.ProductionModeUpdated(true);
        cluster.setProductionMode(true);
        vm.expectEmit();
        emit DstackClusterAppAuth.BaseDomainAdded("phala.network");
        cluster.appAuth().addBaseDomain("phala.network");
        vm.expectEmit();
        emit DstackClusterAppAuth.BaseDomainRemoved("phala.network");
        cluster.appAuth().removeBaseDomain("phala.network");
        vm.stopPrank();
        assertEq(cluster.maxNodes(), 5, "max nodes");
        assertEq(cluster.kmsRoot(), address(0x999), "kms root");
        assertEq(cluster.allowedAppIds().length, 2, "two app ids");
        assertEq(cluster.appAuth().baseDomains().length, 0, "domain removed");
    }

    function test_RevertIf_ConfigByNonOwner() public {
        vm.startPrank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, HOLDER_A));
        cluster.setMaxNodes(1);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, HOLDER_A));
        cluster.setKmsRoot(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, HOLDER_A));
        cluster.setProductionMode(false);
        vm.stopPrank();
    }

    function testFuzz_OverlayAddressIsNetworkPlusId(uint8 prefixLength, uint256 tokenId) public {
        prefixLength = uint8(8 + prefixLength % 23); // 8..30
        uint32 net = uint32(0x0a000000) & ~uint32((uint256(1) << (32 - prefixLength)) - 1);
        address[] memory appIds = new address[](0);
        DstackClusterNFT c = new DstackClusterNFT(OWNER, KMS_ROOT, appIds, net, prefixLength, 1);
        uint256 capacity = (uint256(1) << (32 - prefixLength)) - 2;
        assertEq(c.seatCapacity(), capacity, "capacity");
        tokenId = tokenId % (capacity + 5);
        if (tokenId == 0 || tokenId > capacity) {
            vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterPrefixExhausted.selector, tokenId, capacity));
            c.overlayAddress(tokenId);
        } else {
            uint32 ip = c.overlayAddress(tokenId);
            assertEq(ip, uint256(net) + tokenId, "network + id");
            assertTrue(ip & ~uint32((uint256(1) << (32 - prefixLength)) - 1) == net, "inside the prefix");
        }
    }

    function _assertCleared(uint256 tokenId) internal view {
        DstackClusterNFT.Peer memory p = cluster.getPeer(tokenId);
        assertEq(p.registeredBlock, 0, "record cleared");
        assertEq(p.wgPublicKey, bytes32(0), "key cleared");
        assertEq(bytes(p.endpoint).length, 0, "endpoint cleared");
        assertEq(cluster.getPeers().length, 0, "not listed");
    }
}
