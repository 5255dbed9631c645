// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice registerPeer: a genuine dstack proof is accepted, every forgery is refused with its own reason.
contract RegistrationTest is ClusterFixture {
    uint256 internal seatA;
    uint256 internal seatB;

    function setUp() public {
        cluster = _deploy();
        seatA = _mint(HOLDER_A, INSTANCE_A);
        seatB = _mint(HOLDER_B, INSTANCE_B);
    }

    function test_FixtureARegistrationVerifies() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        // The proof really is fixture A's: its app key and KMS root are the reference's.
        assertEq(address(uint160(uint256(keccak256(p.appPublicKey)))), APP_KEY_ADDRESS, "app key address");

        vm.prank(address(0xCAFE)); // anyone may relay
        cluster.registerPeer(r, p, sig);

        DstackClusterNFT.Peer memory peer = cluster.getPeer(seatA);
        assertEq(peer.instanceId, INSTANCE_A, "instance");
        assertEq(peer.wgPublicKey, WG_KEY_A, "wireguard key");
        assertEq(peer.endpoint, ENDPOINT, "endpoint");
        assertEq(peer.gatewayUrl, GATEWAY_URL, "gateway url");
        assertEq(peer.nonce, 1, "nonce");
        assertEq(peer.registeredBlock, block.number, "registered block");
        assertEq(peer.overlayAddress, NETWORK + 1, "overlay address 10.0.1.1");
        assertEq(peer.node, vm.addr(DERIVED_KEY_A), "the seat's node");
        assertEq(cluster.getPeers().length, 1, "one peer listed");
    }

    function test_RegistrationEmitsTheWholeRecordAndProof() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        vm.expectEmit();
        emit DstackClusterNFT.PeerRegistered(seatA, INSTANCE_A, WG_KEY_A, ENDPOINT, GATEWAY_URL, 1, p, sig);
        cluster.registerPeer(r, p, sig);
    }

    function test_ReRegistrationRotatesKeyAndMovesEndpoint() public {
        _register(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        DstackClusterNFT.PeerRecordInput memory r = _record(seatA, WG_KEY_B, 2);
        r.endpoint = "198.51.100.7:4000";
        cluster.registerPeer(r, _proof(DERIVED_KEY_A, INSTANCE_A), _signRecord(DERIVED_KEY_A, r, INSTANCE_A));
        DstackClusterNFT.Peer memory peer = cluster.getPeer(seatA);
        assertEq(peer.wgPublicKey, WG_KEY_B, "rotated key");
        assertEq(peer.endpoint, "198.51.100.7:4000", "moved endpoint");
        // The old key is free again for anyone.
        vm.prank(HOLDER_B);
        _register(seatB, DERIVED_KEY_B, INSTANCE_B, WG_KEY_A, 1);
        assertEq(cluster.getPeer(seatB).wgPublicKey, WG_KEY_A, "old key reusable");
    }

    function test_TlsOnlyRecordHasNoKeyAndNoEndpoint() public {
        DstackClusterNFT.PeerRecordInput memory r =
            DstackClusterNFT.PeerRecordInput(seatA, bytes32(0), "", GATEWAY_URL, 1);
        cluster.registerPeer(r, _proof(DERIVED_KEY_A, INSTANCE_A), _signRecord(DERIVED_KEY_A, r, INSTANCE_A));
        assertEq(cluster.getPeer(seatA).gatewayUrl, GATEWAY_URL, "url");
        string[] memory endpoints = cluster.getPeerEndpoints();
        assertEq(endpoints.length, 1, "listed for the prototype SDK");
        assertEq(endpoints[0], GATEWAY_URL, "gateway url preferred");
    }

    // ------------------------------------------------------------- forgeries

    function test_RevertIf_AppSignatureByAnotherKey() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        bytes32 h = keccak256(abi.encodePacked(p.purpose, ":", _compressedHex(p.derivedPublicKey)));
        p.appSignature = _dstackSign(OTHER_KEY, h);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryAppSignatureInvalid.selector, APP_KEY_ADDRESS, vm.addr(OTHER_KEY)
            )
        );
        cluster.registerPeer(r, p, sig);
    }

    /// The earlier prototype's hole: a real app key and KMS signature, with a derived key the app never signed.
    function test_RevertIf_AppSignatureDoesNotCoverTheDerivedKey() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        p.derivedPublicKey = _publicKey(OTHER_KEY);
        // The app signature, checked against the swapped key, recovers some unrelated address.
        bytes32 h = keccak256(abi.encodePacked(p.purpose, ":", _compressedHex(p.derivedPublicKey)));
        address unrelated = _recover(h, uint8(p.appSignature[64]) + 27, p.appSignature);
        assertTrue(unrelated != APP_KEY_ADDRESS, "not the app key");
        vm.expectRevert(
            abi.encodeWithSelector(DstackClusterNFT.RegistryAppSignatureInvalid.selector, APP_KEY_ADDRESS, unrelated)
        );
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_WrongKmsRoot() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        bytes memory compressedApp = _compressed(p.appPublicKey);
        p.kmsSignature =
            _dstackSign(OTHER_KEY, keccak256(abi.encodePacked("dstack-kms-issued:", APP_ID, compressedApp)));
        vm.expectRevert(
            abi.encodeWithSelector(DstackClusterNFT.RegistryKmsSignatureInvalid.selector, KMS_ROOT, vm.addr(OTHER_KEY))
        );
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_AppIdNotAllowed() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        p.appId = address(0x1234);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryAppIdNotAllowed.selector, address(0x1234)));
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_AppIdRemovedByOwner() public {
        vm.prank(OWNER);
        cluster.setAppId(APP_ID, false);
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryAppIdNotAllowed.selector, APP_ID));
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_PurposeNamesAnotherInstance() public {
        // B's genuine proof, replayed onto A's seat.
        DstackClusterNFT.PeerRecordInput memory r = _record(seatA, WG_KEY_A, 1);
        DstackClusterNFT.DstackProof memory p = _proof(DERIVED_KEY_B, INSTANCE_B);
        bytes memory sig = _signRecord(DERIVED_KEY_B, r, INSTANCE_A);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryPurposeMismatch.selector,
                _purpose(INSTANCE_A, vm.addr(DERIVED_KEY_A)),
                _purpose(INSTANCE_B, vm.addr(DERIVED_KEY_B))
            )
        );
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_RecordSignedByAnotherKey() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p,) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        bytes memory sig = _signRecord(OTHER_KEY, r, INSTANCE_A);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryRecordSignatureInvalid.selector, vm.addr(DERIVED_KEY_A), vm.addr(OTHER_KEY)
            )
        );
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_RecordFieldChangedAfterSigning() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        r.endpoint = "203.0.113.66:51820"; // a relay redirecting traffic
        vm.expectRevert();
        cluster.registerPeer(r, p, sig);
        assertEq(cluster.getPeer(seatA).registeredBlock, 0, "nothing stored");
    }

    function test_RevertIf_OlderNonceReplayed() public {
        (DstackClusterNFT.PeerRecordInput memory r1, DstackClusterNFT.DstackProof memory p1, bytes memory s1) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        cluster.registerPeer(r1, p1, s1);
        _register(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_B, 2);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryStaleNonce.selector, seatA, 2, 1));
        cluster.registerPeer(r1, p1, s1);
        assertEq(cluster.getPeer(seatA).wgPublicKey, WG_KEY_B, "newer record kept");
    }

    function test_RevertIf_SameNonceReplayed() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        cluster.registerPeer(r, p, sig);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryStaleNonce.selector, seatA, 1, 1));
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_RecordReplayedOnAnotherSeat() public {
        // A's genuine registration, pointed at seat B (rebound to A's instance would be refused anyway).
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        r.tokenId = seatB;
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryPurposeMismatch.selector,
                _purpose(INSTANCE_B, vm.addr(DERIVED_KEY_B)),
                _purpose(INSTANCE_A, vm.addr(DERIVED_KEY_A))
            )
        );
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_RecordReplayedOnAnotherSeatOfTheSameInstance() public {
        // The seat is rebound to another instance and back: an unbound signature for the old token id fails.
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        vm.prank(HOLDER_A);
        cluster.deactivate(seatA);
        vm.prank(OWNER);
        cluster.revoke(seatA); // frees INSTANCE_A
        uint256 seatC = _mint(HOLDER_A, INSTANCE_A);
        r.tokenId = seatC;
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryRecordSignatureInvalid.selector, vm.addr(DERIVED_KEY_A), _anyRecovered(r, sig)
            )
        );
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_RecordReplayedOnAnotherContract() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        DstackClusterNFT first = cluster;
        cluster = _deploy();
        _mint(HOLDER_A, INSTANCE_A);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryRecordSignatureInvalid.selector, vm.addr(DERIVED_KEY_A), _anyRecovered(r, sig)
            )
        );
        cluster.registerPeer(r, p, sig);
        first.registerPeer(r, p, sig); // still good where it was signed
    }

    function test_RevertIf_RecordReplayedOnAnotherChain() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        vm.chainId(block.chainid + 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackClusterNFT.RegistryRecordSignatureInvalid.selector, vm.addr(DERIVED_KEY_A), _anyRecovered(r, sig)
            )
        );
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_WireGuardKeyUsedByAnotherSeat() public {
        _register(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatB, DERIVED_KEY_B, INSTANCE_B, WG_KEY_A, 1);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryWireGuardKeyInUse.selector, WG_KEY_A, seatA));
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_SeatHasNoBoundInstance() public {
        uint256 seatC = _mint(HOLDER_A, "");
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatC, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterSeatNotBound.selector, seatC));
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_SeatDeactivated() public {
        vm.prank(HOLDER_A);
        cluster.deactivate(seatA);
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.ClusterSeatInactive.selector, seatA));
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_PublicKeyIsCompressed() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        p.derivedPublicKey = _compressed(p.derivedPublicKey);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryInvalidKeyLength.selector, 33));
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_EndpointMalformed() public {
        string[6] memory bad = ["10.0.0.1", "10.0.0.1:0", "10.0.0.1:65536", "host name:1", ":51820", "[::1:51820"];
        for (uint256 i = 0; i < bad.length; ++i) {
            DstackClusterNFT.PeerRecordInput memory r = _record(seatA, WG_KEY_A, 1);
            r.endpoint = bad[i];
            DstackClusterNFT.DstackProof memory p = _proof(DERIVED_KEY_A, INSTANCE_A);
            bytes memory sig = _signRecord(DERIVED_KEY_A, r, INSTANCE_A);
            vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryInvalidEndpoint.selector, bad[i]));
            cluster.registerPeer(r, p, sig);
        }
    }

    function test_RevertIf_RecordOffersNothing() public {
        DstackClusterNFT.PeerRecordInput memory r = DstackClusterNFT.PeerRecordInput(seatA, bytes32(0), "", "", 1);
        DstackClusterNFT.DstackProof memory p = _proof(DERIVED_KEY_A, INSTANCE_A);
        bytes memory sig = _signRecord(DERIVED_KEY_A, r, INSTANCE_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryEmptyRecord.selector, seatA));
        cluster.registerPeer(r, p, sig);
    }

    /// One encoding per public key too: the app signature covers only the compressed derived key (X and Y's
    /// parity), so the rest of Y must be the curve's. Agents refuse a proof whose derived key is not a point on
    /// secp256k1 (dstack-guest's `public_key_from_xy`); if the contract accepted it, a relayer could front-run a
    /// node's registration with such a copy and the seat would hold a record every peer drops.
    /// @dev Since records are signed by the seat's node, nothing else reads the derived key but its compressed
    /// form: the contract checks the point itself (RegistryKeyNotOnCurve).
    function test_RevertIf_DerivedKeyIsNotOnTheCurve() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        DstackClusterNFT.DstackProof memory q = _copy(p);
        q.derivedPublicKey[40] = q.derivedPublicKey[40] ^ 0x01; // a byte of Y, not its parity
        assertTrue(_onCurve(p.derivedPublicKey), "the genuine key is on the curve");
        assertFalse(_onCurve(q.derivedPublicKey), "the rewritten one is not");
        assertEq(
            keccak256(_compressed(q.derivedPublicKey)),
            keccak256(_compressed(p.derivedPublicKey)),
            "same compressed key"
        );
        vm.expectRevert();
        cluster.registerPeer(r, q, sig);
        cluster.registerPeer(r, p, sig); // the node's own copy still lands
        assertEq(cluster.getPeer(seatA).nonce, 1, "the genuine record is stored");
    }

    // ----------------------------------------------- one encoding per signature

    /// The attack that was seen on anvil: a third party copies a node's pending registration, rewrites the
    /// record signature's v from 27/28 to dstack's 0/1, and sends it first. Agents refuse that encoding, so
    /// the contract must too, or the seat holds a record every peer drops.
    function test_RevertIf_RecordSignatureReEncodedWithDstackV() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        bytes memory reEncoded = bytes.concat(sig);
        reEncoded[64] = bytes1(uint8(sig[64]) - 27);
        _expectMalformed("recordSignature");
        cluster.registerPeer(r, p, reEncoded);
        cluster.registerPeer(r, p, sig); // the node's own copy still lands
        assertEq(cluster.getPeer(seatA).nonce, 1, "the genuine record is stored");
    }

    function test_RevertIf_AppSignatureReEncodedWithEthereumV() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        p.appSignature[64] = bytes1(uint8(p.appSignature[64]) + 27);
        _expectMalformed("appSignature");
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_KmsSignatureReEncodedWithEthereumV() public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        p.kmsSignature[64] = bytes1(uint8(p.kmsSignature[64]) + 27);
        _expectMalformed("kmsSignature");
        cluster.registerPeer(r, p, sig);
    }

    function test_RevertIf_AnySignatureIsItsHighSTwin() public {
        for (uint256 which = 0; which < 3; ++which) {
            (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
                _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
            if (which == 0) _twin(p.appSignature);
            else if (which == 1) _twin(p.kmsSignature);
            else _twin(sig);
            _expectMalformed(which == 0 ? "appSignature" : which == 1 ? "kmsSignature" : "recordSignature");
            cluster.registerPeer(r, p, sig);
        }
    }

    /// For any registration the contract accepts, no other byte string for the same record is accepted: no
    /// other v, no high-s twin, no other length, and no other byte anywhere in the proof or signature.
    function testFuzz_OnlyTheExactBytesOfARegistrationAreAccepted(
        uint256 derivedKey,
        bytes32 wgKey,
        uint64 nonce,
        uint8 variant,
        uint256 noise
    ) public {
        // 2..n-2, so that the proof's stand-in derived key (derivedKey ^ 1) is a valid scalar too.
        derivedKey = bound(derivedKey, 2, N - 2);
        vm.assume(wgKey != 0 && nonce != 0);
        _bindWithConsent(HOLDER_A, seatA, derivedKey, INSTANCE_A); // the fuzzed key is the seat's node
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, derivedKey, INSTANCE_A, wgKey, nonce);
        DstackClusterNFT.DstackProof memory q = _copy(p);
        bytes memory t = bytes.concat(sig);
        variant = variant % 9;
        if (variant == 0) q.appSignature[64] = bytes1(uint8(q.appSignature[64]) ^ 27);
        else if (variant == 1) q.kmsSignature[64] = bytes1(uint8(q.kmsSignature[64]) ^ 27);
        else if (variant == 2) t[64] = bytes1(uint8(t[64]) - 27);
        else if (variant == 3) _twin(noise % 3 == 0 ? q.appSignature : noise % 3 == 1 ? q.kmsSignature : t);
        else if (variant == 4) t = bytes.concat(t, bytes1(uint8(noise)));
        else if (variant == 5) q.appSignature = bytes.concat(q.appSignature, bytes1(uint8(noise)));
        else if (variant == 6) q.kmsSignature = bytes.concat(q.kmsSignature, bytes1(uint8(noise)));
        else if (variant == 7) _flip(noise % 2 == 0 ? q.derivedPublicKey : q.appPublicKey, noise >> 1);
        else _flip(noise % 3 == 0 ? q.appSignature : noise % 3 == 1 ? q.kmsSignature : t, noise >> 2);
        vm.expectRevert();
        cluster.registerPeer(r, q, t);
        cluster.registerPeer(r, p, sig);
        assertEq(cluster.getPeer(seatA).wgPublicKey, wgKey, "the exact registration is accepted");
    }

    // ------------------------------------------------------------------ fuzz

    /// Tampering with any one part of a genuine registration never gets it accepted.
    function testFuzz_TamperedRegistrationIsRejected(uint8 part, uint256 noise) public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p, bytes memory sig) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        part = part % 11;
        bytes32 n = keccak256(abi.encode(noise));
        if (part == 0) r.wgPublicKey = r.wgPublicKey ^ (n == 0 ? bytes32(uint256(1)) : n);
        else if (part == 1) r.endpoint = string.concat("10.", _digit(noise), ".0.1:51820");
        else if (part == 2) r.gatewayUrl = string.concat("https://x", _digit(noise), ".example.org");
        else if (part == 3) r.nonce = uint64(bound(noise, 2, type(uint64).max));
        else if (part == 4) _flip(sig, noise);
        else if (part == 5) _flip(p.appSignature, noise);
        else if (part == 6) _flip(p.kmsSignature, noise);
        else if (part == 7) _flip(p.derivedPublicKey, noise);
        else if (part == 8) _flip(p.appPublicKey, noise);
        else if (part == 9) p.appId = address(uint160(uint256(n)));
        else r.tokenId = seatB;
        vm.expectRevert();
        cluster.registerPeer(r, p, sig);
    }

    /// Arbitrary signatures over an otherwise genuine record are never accepted.
    function testFuzz_RandomRecordSignatureIsRejected(bytes32 rr, bytes32 s, uint8 v) public {
        (DstackClusterNFT.PeerRecordInput memory r, DstackClusterNFT.DstackProof memory p,) =
            _registration(seatA, DERIVED_KEY_A, INSTANCE_A, WG_KEY_A, 1);
        vm.expectRevert();
        cluster.registerPeer(r, p, abi.encodePacked(rr, s, v));
    }

    /// Arbitrary fields signed by a key with no dstack chain are never accepted.
    function testFuzz_SelfSignedRecordIsRejected(uint256 key, bytes32 wgKey, uint64 nonce) public {
        key = bound(key, 1, 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364140);
        vm.assume(key != DERIVED_KEY_A && key != APP_KEY);
        vm.assume(nonce > 0 && wgKey != 0);
        DstackClusterNFT.PeerRecordInput memory r = _record(seatA, wgKey, nonce);
        DstackClusterNFT.DstackProof memory p = _proof(DERIVED_KEY_A, INSTANCE_A);
        p.derivedPublicKey = _publicKey(key);
        vm.expectRevert();
        cluster.registerPeer(r, p, _signRecord(key, r, INSTANCE_A));
    }

    // --------------------------------------------------------------- helpers

    uint256 internal constant N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141;

    function _expectMalformed(string memory field) internal {
        vm.expectRevert(abi.encodeWithSelector(DstackClusterNFT.RegistryMalformedSignature.selector, field));
    }

    /// Rewrites a signature into its malleated twin: s -> n - s with the other parity, which ecrecover accepts.
    function _twin(bytes memory sig) internal pure {
        bytes32 s;
        assembly {
            s := mload(add(sig, 64))
        }
        bytes32 twinS = bytes32(N - uint256(s));
        assembly {
            mstore(add(sig, 64), twinS)
        }
        sig[64] = bytes1(uint8(sig[64]) ^ 1);
    }

    function _copy(DstackClusterNFT.DstackProof memory p)
        internal
        pure
        returns (DstackClusterNFT.DstackProof memory q)
    {
        q.derivedPublicKey = bytes.concat(p.derivedPublicKey);
        q.appPublicKey = bytes.concat(p.appPublicKey);
        q.appSignature = bytes.concat(p.appSignature);
        q.kmsSignature = bytes.concat(p.kmsSignature);
        q.appId = p.appId;
        q.purpose = p.purpose;
    }

    function _compressed(bytes memory publicKey64) internal pure returns (bytes memory c) {
        c = new bytes(33);
        c[0] = bytes1(0x02 | (uint8(publicKey64[63]) & 1));
        for (uint256 i = 0; i < 32; ++i) {
            c[i + 1] = publicKey64[i];
        }
    }

    /// Whether a 64-byte X ‖ Y is a point on secp256k1: y² = x³ + 7 (mod p).
    function _onCurve(bytes memory xy) internal pure returns (bool) {
        uint256 fp = 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f;
        uint256 x;
        uint256 y;
        assembly {
            x := mload(add(xy, 32))
            y := mload(add(xy, 64))
        }
        if (x >= fp || y >= fp) return false;
        return mulmod(y, y, fp) == addmod(mulmod(mulmod(x, x, fp), x, fp), 7, fp);
    }

    function _flip(bytes memory b, uint256 noise) internal pure {
        uint256 i = noise % b.length;
        b[i] = b[i] ^ bytes1(uint8(1 + (noise >> 8) % 255));
    }

    function _digit(uint256 noise) internal pure returns (string memory) {
        return _u(1 + noise % 250);
    }

    function _u(uint256 v) internal pure returns (string memory) {
        bytes memory b;
        do {
            b = abi.encodePacked(bytes1(uint8(48 + v % 10)), b);
            v /= 10;
        } while (v != 0);
        return string(b);
    }

    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        return lo + x % (hi - lo + 1);
    }

    /// The address a signature recovers to over this contract's digest, for exact revert matching.
    function _anyRecovered(DstackClusterNFT.PeerRecordInput memory r, bytes memory sig)
        internal
        view
        returns (address)
    {
        bytes32 rr;
        bytes32 s;
        assembly {
            rr := mload(add(sig, 32))
            s := mload(add(sig, 64))
        }
        return ecrecover(_digest(address(cluster), block.chainid, r, INSTANCE_A), uint8(sig[64]), rr, s);
    }

    function _recover(bytes32 digest, uint8 v, bytes memory sig) internal pure returns (address) {
        bytes32 rr;
        bytes32 s;
        assembly {
            rr := mload(add(sig, 32))
            s := mload(add(sig, 64))
        }
        return ecrecover(digest, v, rr, s);
    }
}
