// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {DstackClusterElection} from "../src/DstackClusterElection.sol";
import {DstackClusterAppAuth} from "../src/DstackClusterAppAuth.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {Vm, vm} from "./utils/Vm.sol";

/// @notice A seat is bound to one instance's node key, made inside that CVM. dstack's GetKey gives every instance
/// of an app the same keys and signs any purpose for any of them, so a sibling instance holds a genuine chain for
/// whatever instance and node it names; what it cannot do is sign with the node key of the instance the seat is
/// bound to. These tests pin that rule, the binding's evidence, and what a rebind does to records and ballots.
contract NodeBindingTest is ClusterFixture {
    /// Instance A's node key after it lost its volume and made a new one.
    uint256 internal constant NEW_KEY_A = 0xA2;
    /// A third instance of the app, and its node key.
    string internal constant INSTANCE_C = "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0";
    uint256 internal constant KEY_C = 0xC0C;
    uint256 internal constant N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141;

    uint256 internal seatA;
    uint256 internal seatB;
    address internal nodeA;
    address internal nodeB;
    address internal nodeC;

    function setUp() public {
        cluster = _deploy();
        seatA = _mint(HOLDER_A, INSTANCE_A);
        seatB = _mint(HOLDER_B, INSTANCE_B);
        nodeA = vm.addr(DERIVED_KEY_A);
        nodeB = vm.addr(DERIVED_KEY_B);
        nodeC = vm.addr(KEY_C);
    }

    // ------------------------------------------------------------ siblings

    /// Instance B asks GetKey for the purpose naming seat A's instance and its own node: a genuine chain.
    function test_RevertIf_ASiblingRegistersForTheSeatWithItsOwnNode() public {
        _register(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        DstackClusterNFT.Peer memory before = cluster.getPeer(seatA);
        DstackClusterNFT.PeerRecordInput memory r = _record(seatA, WG_KEY_B, 2);
        r.endpoint = "203.0.113.66:51820";
        DstackClusterNFT.DstackProof memory p = _proof(DERIVED_KEY_B, INSTANCE_A);
        bytes memory sig = _signRecord(DERIVED_KEY_B, r, INSTANCE_A);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryPurposeMismatch.selector,
                _purpose(INSTANCE_A, nodeA),
                _purpose(INSTANCE_A, nodeB)
            )
        );
        cluster.registerPeer(r, p, sig);
        _assertUnchanged(seatA, before);

        // The chain and the signature are genuine: they land once the holder binds the seat to B's node.
        _bindWithConsent(HOLDER_A, seatA, DERIVED_KEY_B, INSTANCE_A);
        cluster.registerPeer(r, p, sig);
        assertEq(cluster.getPeer(seatA).endpoint, "203.0.113.66:51820", "accepted for the node the seat is bound to");
    }

    /// Instance B asks GetKey for the purpose naming seat A's node (any instance can): the chain checks, but the
    /// record must be signed by A's node key, which never left A.
    function test_RevertIf_ASiblingSignsUnderTheChainOfTheSeatsNode() public {
        _register(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        DstackClusterNFT.Peer memory before = cluster.getPeer(seatA);
        DstackClusterNFT.PeerRecordInput memory r = _record(seatA, WG_KEY_B, 2);
        DstackClusterNFT.DstackProof memory p = _proof(DERIVED_KEY_A, INSTANCE_A);
        bytes memory sig = _signRecord(DERIVED_KEY_B, r, INSTANCE_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryRecordSignatureInvalid.selector, nodeA, nodeB));
        cluster.registerPeer(r, p, sig);
        _assertUnchanged(seatA, before);

        // Nor does the key the app vouched for (the chain's derived key) sign for the seat: only its node does.
        uint256 derivedKey = DERIVED_KEY_A ^ 1; // what the fixture's chain derives
        assertEq(keccak256(p.derivedPublicKey), keccak256(_publicKey(derivedKey)), "the chain's derived key");
        sig = _signRecord(derivedKey, r, INSTANCE_A);
        vm.expectRevert(
            abi.encodeWithSelector(DstackClusterNFT.RegistryRecordSignatureInvalid.selector, nodeA, vm.addr(derivedKey))
        );
        cluster.registerPeer(r, p, sig);
        _assertUnchanged(seatA, before);
    }

    /// Whatever key a sibling holds, a chain naming its own node or one naming the seat's node gets it nowhere.
    function testFuzz_NoOtherKeyRegistersForTheSeat(uint256 key, uint64 nonce) public {
        key = 2 + key % (N - 3); // 2..n-2, so that the stand-in derived key (key ^ 1) is a valid scalar too
        vm.assume(key != DERIVED_KEY_A && nonce != 0);
        address other = vm.addr(key);
        DstackClusterNFT.PeerRecordInput memory r = _record(seatA, WG_KEY_B, nonce);
        DstackClusterNFT.DstackProof memory ownChain = _proof(key, INSTANCE_A);
        DstackClusterNFT.DstackProof memory seatsChain = _proof(DERIVED_KEY_A, INSTANCE_A);
        bytes memory sig = _signRecord(key, r, INSTANCE_A);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryPurposeMismatch.selector,
                _purpose(INSTANCE_A, nodeA),
                _purpose(INSTANCE_A, other)
            )
        );
        cluster.registerPeer(r, ownChain, sig);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryRecordSignatureInvalid.selector, nodeA, other));
        cluster.registerPeer(r, seatsChain, sig);
        assertEq(cluster.getPeer(seatA).registeredBlock, 0, "no record");
        assertEq(cluster.getPeer(seatA).nonce, 0, "nonce untouched");
    }

    // ------------------------------------------------------ what a binding keeps

    function test_TheBindingKeepsItsNodeEvidenceHashAndBlock() public {
        uint256 seat = _mint(HOLDER_A, "");
        // Literal block numbers: via-IR may re-read NUMBER after a roll instead of keeping a copy.
        uint256 bindBlock = 1000;
        vm.roll(bindBlock);
        DstackClusterNFT.NodeBinding memory b = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        b.evidence = bytes("a TDX quote, with its certification data and RTMR3 event log");
        bytes32 evidenceHash = keccak256(b.evidence);

        vm.recordLogs();
        vm.prank(HOLDER_A);
        cluster.bindInstance(seat, b);
        Vm.Log[] memory logs = vm.getRecordedLogs();

        // The event carries the evidence itself, so that agents verify it without trusting their RPC.
        uint256 found;
        for (uint256 i = 0; i < logs.length; ++i) {
            if (logs[i].emitter != address(cluster) || logs[i].topics[0] != DstackClusterNFT.InstanceBound.selector) {
                continue;
            }
            ++found;
            assertEq(logs[i].topics[1], bytes32(seat), "event: seat");
            (string memory instanceId, address node, bytes32 h, bytes memory evidence) =
                abi.decode(logs[i].data, (string, address, bytes32, bytes));
            assertEq(instanceId, INSTANCE_C, "event: instance");
            assertEq(node, nodeC, "event: node");
            assertEq(h, evidenceHash, "event: evidence hash");
            assertEq(keccak256(evidence), evidenceHash, "event: the evidence bytes");
            assertEq(evidence.length, b.evidence.length, "event: the whole evidence");
        }
        assertEq(found, 1, "one InstanceBound");

        DstackClusterNFT.Peer memory peer = cluster.getPeer(seat);
        assertEq(peer.instanceId, INSTANCE_C, "instance");
        assertEq(peer.node, nodeC, "node");
        assertEq(peer.evidenceHash, evidenceHash, "evidence hash");
        assertEq(peer.boundBlock, bindBlock, "bound block");
        assertEq(peer.registeredBlock, 0, "no record yet");

        // A record later leaves the binding as it was, and the pages show it too.
        vm.roll(bindBlock + 5);
        _register(seat, KEY_C, INSTANCE_C, WG_KEY_A, 1);
        (DstackClusterNFT.Peer[] memory page,) = cluster.getPeersPage(0, 1);
        assertEq(page.length, 1, "listed");
        assertEq(page[0].node, nodeC, "page: node");
        assertEq(page[0].evidenceHash, evidenceHash, "page: evidence hash");
        assertEq(page[0].boundBlock, bindBlock, "page: bound block, not the record's");
        assertEq(page[0].registeredBlock, bindBlock + 5, "page: record block");
    }

    function test_MintingBoundEmitsTheEvidence() public {
        uint256 next = cluster.lastTokenId() + 1;
        DstackClusterNFT.NodeBinding memory b = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        bytes32 evidenceHash = keccak256(b.evidence);
        vm.prank(OWNER);
        vm.expectEmit();
        emit DstackClusterNFT.InstanceBound(next, INSTANCE_C, nodeC, evidenceHash, b.evidence);
        cluster.mintNodeAccess(HOLDER_A, b);
        assertEq(cluster.getPeer(next).evidenceHash, evidenceHash, "kept");
        assertEq(cluster.getPeer(next).boundBlock, block.number, "bound at mint");
    }

    // ----------------------------------------------------- refused bindings

    function test_RevertIf_TheBindingHasNoEvidence() public {
        uint256 seat = _mint(HOLDER_A, "");
        DstackClusterNFT.NodeBinding memory b = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        b.evidence = "";
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterBindNeedsEvidence.selector, INSTANCE_C));
        cluster.bindInstance(seat, b);

        uint256 next = cluster.lastTokenId() + 1;
        b = _binding(KEY_C, INSTANCE_C, HOLDER_B);
        b.evidence = "";
        vm.prank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterBindNeedsEvidence.selector, INSTANCE_C));
        cluster.mintNodeAccess(HOLDER_B, b);
        assertEq(cluster.lastTokenId(), next - 1, "nothing minted");
        assertEq(cluster.tokenOfInstance(INSTANCE_C), 0, "nothing bound");
    }

    function test_RevertIf_TheConsentIsForAnotherHolderNodeOrInstance() public {
        uint256 seat = _mint(HOLDER_A, "");
        bytes32 right = cluster.bindConsentDigest(INSTANCE_C, nodeC, HOLDER_A);
        bytes[4] memory wrong = [
            _consent(KEY_C, INSTANCE_C, nodeC, HOLDER_B), // another holder
            _consent(KEY_C, INSTANCE_C, nodeB, HOLDER_A), // another node
            _consent(KEY_C, INSTANCE_A, nodeC, HOLDER_A), // another instance
            _consent(DERIVED_KEY_B, INSTANCE_C, nodeC, HOLDER_A) // signed by another key
        ];
        for (uint256 i = 0; i < wrong.length; ++i) {
            DstackClusterNFT.NodeBinding memory b = _binding(KEY_C, INSTANCE_C, HOLDER_A);
            b.consent = wrong[i];
            address recovered = _recovered(right, wrong[i]);
            assertTrue(recovered != nodeC, "a wrong consent recovers someone else");
            vm.prank(HOLDER_A);
            vm.expectRevert(
                abi.encodeWithSelector(DstackClusterNFT.ClusterBindConsentInvalid.selector, nodeC, recovered)
            );
            cluster.bindInstance(seat, b);
        }
        assertEq(cluster.tokenOfInstance(INSTANCE_C), 0, "nothing bound");
        // The right consent binds.
        DstackClusterNFT.NodeBinding memory good = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        good.consent = _consent(KEY_C, INSTANCE_C, nodeC, HOLDER_A);
        vm.prank(HOLDER_A);
        cluster.bindInstance(seat, good);
        assertEq(cluster.tokenOfInstance(INSTANCE_C), seat, "bound");
    }

    function test_RevertIf_TheBindingsChainNamesAnotherNode() public {
        uint256 seat = _mint(HOLDER_A, "");
        // C's node consents, but the app vouched for B's node.
        DstackClusterNFT.NodeBinding memory b = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        b.proof = _proof(DERIVED_KEY_B, INSTANCE_C);
        vm.prank(HOLDER_A);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryPurposeMismatch.selector,
                _purpose(INSTANCE_C, nodeC),
                _purpose(INSTANCE_C, nodeB)
            )
        );
        cluster.bindInstance(seat, b);
        // And the converse: B's node consents to a binding whose chain vouches for C's node.
        b = _binding(DERIVED_KEY_B, INSTANCE_C, HOLDER_A);
        b.proof = _proof(KEY_C, INSTANCE_C);
        vm.prank(HOLDER_A);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryPurposeMismatch.selector,
                _purpose(INSTANCE_C, nodeB),
                _purpose(INSTANCE_C, nodeC)
            )
        );
        cluster.bindInstance(seat, b);
        assertEq(cluster.getPeer(seat).node, address(0), "unbound");
    }

    /// The owner mints bound only as anyone binds: with the chain, the evidence and the node's consent.
    function test_RevertIf_TheOwnerMintsBoundWithoutAValidBinding() public {
        uint256 next = cluster.lastTokenId() + 1;

        DstackClusterNFT.NodeBinding memory b = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        b.consent = "";
        _expectOwnerMintReverts(
            b, abi.encodeWithSelector(DstackClusterNFT.RegistryMalformedSignature.selector, "consent")
        );

        b = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        b.evidence = "";
        _expectOwnerMintReverts(
            b, abi.encodeWithSelector(DstackClusterNFT.ClusterBindNeedsEvidence.selector, INSTANCE_C)
        );

        b = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        DstackClusterNFT.DstackProof memory noChain;
        b.proof = noChain;
        _expectOwnerMintReverts(b, abi.encodeWithSelector(DstackClusterNFT.RegistryInvalidKeyLength.selector, 0));

        b = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        b.proof.appId = address(0x1234);
        _expectOwnerMintReverts(
            b, abi.encodeWithSelector(DstackClusterNFT.RegistryAppIdNotAllowed.selector, address(0x1234))
        );

        b = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        b.node = nodeB; // not the node the chain names, nor the consent's signer
        _expectOwnerMintReverts(
            b,
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryPurposeMismatch.selector,
                _purpose(INSTANCE_C, nodeB),
                _purpose(INSTANCE_C, nodeC)
            )
        );

        b = _binding(KEY_C, INSTANCE_C, OWNER); // the node consented to the owner holding it, not HOLDER_A
        address recovered = _recovered(cluster.bindConsentDigest(INSTANCE_C, nodeC, HOLDER_A), b.consent);
        _expectOwnerMintReverts(
            b, abi.encodeWithSelector(DstackClusterNFT.ClusterBindConsentInvalid.selector, nodeC, recovered)
        );

        assertEq(cluster.lastTokenId(), next - 1, "nothing minted");
        assertEq(cluster.tokenOfInstance(INSTANCE_C), 0, "nothing bound");

        b = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        vm.prank(OWNER);
        cluster.mintNodeAccess(HOLDER_A, b);
        assertEq(cluster.tokenOfInstance(INSTANCE_C), next, "the valid binding mints bound");
    }

    // ------------------------------------------------------------- rebinding

    /// Instance A lost its volume and with it its node key: the holder binds the same instance to its new node.
    function test_RebindingTheSameInstanceToANewNodeAfterALostVolume() public {
        _register(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 5);
        address newNode = vm.addr(NEW_KEY_A);
        DstackClusterNFT.NodeBinding memory b = _binding(NEW_KEY_A, INSTANCE_A, HOLDER_A);

        vm.recordLogs();
        vm.prank(HOLDER_A);
        cluster.bindInstance(seatA, b);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 cleared;
        uint256 bound;
        uint256 unbound;
        for (uint256 i = 0; i < logs.length; ++i) {
            bytes32 topic = logs[i].topics[0];
            if (topic == DstackClusterNFT.PeerCleared.selector) {
                ++cleared;
                assertEq(
                    abi.decode(logs[i].data, (uint8)), uint8(DstackClusterNFT.ClearReason.Rebound), "cleared: rebound"
                );
            } else if (topic == DstackClusterNFT.InstanceBound.selector) {
                ++bound;
            } else if (topic == DstackClusterNFT.InstanceUnbound.selector) {
                ++unbound;
            }
        }
        assertEq(cleared, 1, "the record was cleared");
        assertEq(bound, 1, "bound to the new node");
        assertEq(unbound, 0, "the instance was never unbound");

        assertEq(cluster.tokenOfInstance(INSTANCE_A), seatA, "still the seat's instance");
        DstackClusterNFT.Peer memory peer = cluster.getPeer(seatA);
        assertEq(peer.node, newNode, "the new node");
        assertEq(peer.registeredBlock, 0, "no record");
        assertEq(peer.wgPublicKey, bytes32(0), "no key");
        assertEq(peer.nonce, 5, "the nonce is not reset");
        assertEq(cluster.getPeers().length, 0, "not listed");
        assertEq(cluster.nodeOf(seatA), address(0), "no node until it registers");

        // The old node's records are refused, whichever chain they carry.
        DstackClusterNFT.PeerRecordInput memory r = _record(seatA, WG_KEY_A, 6);
        DstackClusterNFT.DstackProof memory oldChain = _proof(DERIVED_KEY_A, INSTANCE_A);
        DstackClusterNFT.DstackProof memory newChain = _proof(NEW_KEY_A, INSTANCE_A);
        bytes memory oldSig = _signRecord(DERIVED_KEY_A, r, INSTANCE_A);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryPurposeMismatch.selector,
                _purpose(INSTANCE_A, newNode),
                _purpose(INSTANCE_A, nodeA)
            )
        );
        cluster.registerPeer(r, oldChain, oldSig);
        vm.expectRevert(
            abi.encodeWithSelector(DstackClusterNFT.RegistryRecordSignatureInvalid.selector, newNode, nodeA)
        );
        cluster.registerPeer(r, newChain, oldSig);

        // The new node's record needs a nonce above the old node's last one.
        DstackClusterNFT.PeerRecordInput memory stale = _record(seatA, WG_KEY_A, 5);
        bytes memory staleSig = _signRecord(NEW_KEY_A, stale, INSTANCE_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryStaleNonce.selector, seatA, 5, 5));
        cluster.registerPeer(stale, newChain, staleSig);
        cluster.registerPeer(r, newChain, _signRecord(NEW_KEY_A, r, INSTANCE_A));
        peer = cluster.getPeer(seatA);
        assertEq(peer.nonce, 6, "accepted above the old nonce");
        assertEq(peer.registeredBlock, block.number, "registered");
        assertEq(cluster.nodeOf(seatA), newNode, "the new node is the seat's node");
    }

    /// A consent names its holder: after a transfer the binding stays, but the new holder rebinds only with the
    /// node's consent to it, not with one given to the seat's former holder.
    function test_ATransferKeepsTheBindingAndTheNewHolderNeedsItsOwnConsent() public {
        address newHolder = address(0xA2A);
        DstackClusterNFT.Peer memory before = cluster.getPeer(seatA);
        DstackClusterNFT.NodeBinding memory forOld = _binding(NEW_KEY_A, INSTANCE_A, HOLDER_A);
        vm.prank(HOLDER_A);
        cluster.transferFrom(HOLDER_A, newHolder, seatA);
        DstackClusterNFT.Peer memory peer = cluster.getPeer(seatA);
        assertEq(peer.node, before.node, "node kept");
        assertEq(peer.evidenceHash, before.evidenceHash, "evidence kept");
        assertEq(peer.boundBlock, before.boundBlock, "binding block kept");
        assertEq(cluster.tokenOfInstance(INSTANCE_A), seatA, "instance kept");

        address newNode = vm.addr(NEW_KEY_A);
        address recovered = _recovered(cluster.bindConsentDigest(INSTANCE_A, newNode, newHolder), forOld.consent);
        vm.prank(newHolder);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterBindConsentInvalid.selector, newNode, recovered));
        cluster.bindInstance(seatA, forOld);
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterNotSeatHolder.selector, seatA, HOLDER_A));
        cluster.bindInstance(seatA, forOld);

        _bindWithConsent(newHolder, seatA, NEW_KEY_A, INSTANCE_A);
        assertEq(cluster.getPeer(seatA).node, newNode, "rebound by the new holder");
    }

    /// An operator the holder approved binds the seat; the node consents to the seat's holder, not the operator.
    function test_AnApprovedOperatorBindsWithTheNodesConsentToTheHolder() public {
        address operator = address(0x0F);
        uint256 seat = _mint(HOLDER_A, "");
        vm.prank(HOLDER_A);
        cluster.approve(operator, seat);
        DstackClusterNFT.NodeBinding memory toOperator = _binding(KEY_C, INSTANCE_C, operator);
        address recovered = _recovered(cluster.bindConsentDigest(INSTANCE_C, nodeC, HOLDER_A), toOperator.consent);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterBindConsentInvalid.selector, nodeC, recovered));
        cluster.bindInstance(seat, toOperator);
        DstackClusterNFT.NodeBinding memory toHolder = _binding(KEY_C, INSTANCE_C, HOLDER_A);
        vm.prank(operator);
        cluster.bindInstance(seat, toHolder);
        assertEq(cluster.getPeer(seat).node, nodeC, "bound by the operator");
    }

    // --------------------------------------------------------------- ballots

    /// The election asks the cluster who may act for a seat: after a rebind, the old node no longer may, even
    /// once the seat has a record again.
    function test_AfterARebindTheOldNodeNoLongerVotesOrElects() public {
        _register(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        _register(seatB, DERIVED_KEY_B, INSTANCE_B, WG_KEY_B, 1);
        vm.prank(nodeA);
        election.castVote(seatA, seatB);
        assertEq(election.voteOf(seatA), seatB, "the old node voted for the seat");

        _bindWithConsent(HOLDER_A, seatA, NEW_KEY_A, INSTANCE_A);
        address newNode = vm.addr(NEW_KEY_A);
        assertFalse(cluster.canActFor(seatA, nodeA), "the old node may not act");
        assertFalse(cluster.canActFor(seatA, newNode), "the new node may not before its record");
        bytes memory oldRefused =
            abi.encodeWithSelector(DstackClusterElection.LeaderNotSeatAgent.selector, seatA, nodeA);
        vm.prank(nodeA);
        vm.expectRevert(oldRefused);
        election.withdrawVote(seatA);
        vm.prank(nodeA);
        vm.expectRevert(oldRefused);
        election.castVote(seatA, seatB);
        vm.prank(nodeA);
        vm.expectRevert(oldRefused);
        election.electLeader(seatA);
        vm.prank(newNode);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterElection.LeaderNotSeatAgent.selector, seatA, newNode));
        election.electLeader(seatA);

        _register(seatA, NEW_KEY_A, INSTANCE_A, WG_KEY_A, 2);
        assertFalse(cluster.canActFor(seatA, nodeA), "the old node stays out");
        assertTrue(cluster.canActFor(seatA, newNode), "the new node acts for the seat");
        vm.prank(nodeA);
        vm.expectRevert(oldRefused);
        election.electLeader(seatA);
        vm.prank(newNode);
        election.electLeader(seatA);
        assertEq(election.leaderTokenId(), seatA, "elected by the new node");
        vm.prank(newNode);
        election.withdrawVote(seatA);
        assertEq(election.voteOf(seatA), 0, "the seat's vote, withdrawn by its new node");
    }

    // ------------------------------------------------------------ OS images

    function test_OnlyTheClusterOwnerSetsTheOsAllowlist() public {
        bytes32 os =
            keccak256(abi.encodePacked(keccak256("MRTD"), keccak256("RTMR0"), keccak256("RTMR1"), keccak256("RTMR2")));
        bytes32 otherOs = keccak256("another OS image");
        assertFalse(appAuth.isOsAllowed(os), "nothing allowed at first");

        address[3] memory strangers = [HOLDER_A, address(cluster), address(election)];
        for (uint256 i = 0; i < strangers.length; ++i) {
            vm.prank(strangers[i]);
            vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthNotClusterOwner.selector, strangers[i]));
            appAuth.setOsMeasurement(os, true);
        }
        assertFalse(appAuth.isOsAllowed(os), "still not allowed");

        vm.prank(OWNER);
        vm.expectEmit();
        emit DstackClusterAppAuth.OsMeasurementUpdated(os, true);
        appAuth.setOsMeasurement(os, true);
        assertTrue(appAuth.isOsAllowed(os), "allowed");
        assertFalse(appAuth.isOsAllowed(otherOs), "only that image");

        vm.prank(OWNER);
        vm.expectEmit();
        emit DstackClusterAppAuth.OsMeasurementUpdated(os, false);
        appAuth.setOsMeasurement(os, false);
        assertFalse(appAuth.isOsAllowed(os), "no longer allowed");
    }

    // --------------------------------------------------------------- helpers

    function _assertUnchanged(uint256 tokenId, DstackClusterNFT.Peer memory before) internal view {
        DstackClusterNFT.Peer memory peer = cluster.getPeer(tokenId);
        assertEq(peer.wgPublicKey, before.wgPublicKey, "record's key unchanged");
        assertEq(peer.endpoint, before.endpoint, "record's endpoint unchanged");
        assertEq(peer.gatewayUrl, before.gatewayUrl, "record's gateway url unchanged");
        assertEq(peer.nonce, before.nonce, "record's nonce unchanged");
        assertEq(peer.registeredBlock, before.registeredBlock, "record's block unchanged");
        assertEq(peer.node, before.node, "seat's node unchanged");
        assertEq(peer.evidenceHash, before.evidenceHash, "seat's evidence unchanged");
    }

    function _expectOwnerMintReverts(DstackClusterNFT.NodeBinding memory b, bytes memory err) internal {
        vm.prank(OWNER);
        vm.expectRevert(err);
        cluster.mintNodeAccess(HOLDER_A, b);
    }

    /// `key`'s EIP-712 signature over BindConsent(tokenId, instanceId, node, holder), computed independently.
    function _consent(uint256 key, string memory instanceId, address node, address holder)
        internal
        view
        returns (bytes memory)
    {
        return _sign(key, _consentDigest(instanceId, node, holder));
    }
}
