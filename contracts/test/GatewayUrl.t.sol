// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterNFT} from "../src/DstackClusterNFT.sol";
import {DstackClusterAppAuth} from "../src/DstackClusterAppAuth.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Gateway URLs: anything well-formed in dev mode; https under an allowed base domain in production.
contract GatewayUrlTest is ClusterFixture {
    uint256 internal seat;
    uint64 internal nonce;

    function setUp() public {
        cluster = _deploy();
        seat = _mint(HOLDER_A, INSTANCE_A);
        vm.startPrank(OWNER);
        cluster.appAuth().addBaseDomain("phala.network");
        cluster.appAuth().addBaseDomain("dstack.org");
        vm.stopPrank();
    }

    function _try(string memory url) internal returns (bool ok, bytes memory err) {
        DstackClusterNFT.PeerRecordInput memory r = _record(seat, WG_KEY_A, ++nonce);
        r.gatewayUrl = url;
        DstackClusterNFT.DstackProof memory p = _proof(DERIVED_KEY_A, INSTANCE_A);
        bytes memory sig = _signRecord(DERIVED_KEY_A, r, INSTANCE_A);
        try cluster.registerPeer(r, p, sig) {
            ok = true;
        } catch (bytes memory e) {
            err = e;
        }
    }

    function _expectRejected(string memory url, bytes4 selector) internal {
        (bool ok, bytes memory err) = _try(url);
        assertFalse(ok, string.concat("accepted: ", url));
        assertEq(bytes4(err), selector, string.concat("wrong error for ", url));
        assertEq(
            keccak256(err), keccak256(abi.encodeWithSelector(selector, url)), string.concat("error args for ", url)
        );
    }

    function _expectAccepted(string memory url) internal {
        (bool ok,) = _try(url);
        assertTrue(ok, string.concat("rejected: ", url));
        assertEq(cluster.getPeer(seat).gatewayUrl, url, "stored");
    }

    function test_DevModeAcceptsAnyWellFormedUrl() public {
        _expectAccepted("http://localhost:8080");
        _expectAccepted("http://10.0.1.1:8080/hello?x=1");
        _expectAccepted("https://node-1.internal.example");
    }

    function test_RevertIf_UrlMalformedEvenInDevMode() public {
        bytes4 sel = DstackClusterNFT.RegistryInvalidGatewayUrl.selector;
        _expectRejected("ftp://host", sel);
        _expectRejected("https://", sel);
        _expectRejected("https://phala.network@evil.com", sel);
        _expectRejected("https://ho st.com", sel);
        _expectRejected("https://Phala.Network", sel);
        _expectRejected("https://host.com:99999", sel);
        _expectRejected("https://host..com", sel);
        _expectRejected(
            string.concat("https://", _repeat("a", 63), ".", _repeat("b", 63), ".phala.network/", _repeat("c", 20)), sel
        );
    }

    function test_ProductionRequiresHttpsUnderAllowedDomain() public {
        vm.prank(OWNER);
        cluster.setProductionMode(true);
        _expectAccepted("https://59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a-8080.dstack-pha-prod7.phala.network");
        _expectAccepted("https://phala.network");
        _expectAccepted("https://node.dstack.org:443/path");
        _expectRejected("http://node.phala.network", DstackClusterNFT.RegistryGatewayUrlNotHttps.selector);
        _expectRejected("https://node.example.com", DstackClusterNFT.RegistryGatewayDomainNotAllowed.selector);
    }

    /// `evil-phala.network` ends with `phala.network` but not on a label boundary.
    function test_RevertIf_SuffixAttack() public {
        vm.prank(OWNER);
        cluster.setProductionMode(true);
        bytes4 sel = DstackClusterNFT.RegistryGatewayDomainNotAllowed.selector;
        _expectRejected("https://evil-phala.network", sel);
        _expectRejected("https://x.evilphala.network", sel);
        _expectRejected("https://phala.network.evil.com", sel);
        _expectRejected("https://network", sel);
    }

    function test_RemovedDomainNoLongerAllowed() public {
        vm.startPrank(OWNER);
        cluster.setProductionMode(true);
        cluster.appAuth().removeBaseDomain("phala.network");
        vm.stopPrank();
        _expectRejected("https://a.phala.network", DstackClusterNFT.RegistryGatewayDomainNotAllowed.selector);
        _expectAccepted("https://a.dstack.org");
    }

    function test_RevertIf_BaseDomainMalformed() public {
        DstackClusterAppAuth auth = cluster.appAuth();
        vm.startPrank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthInvalidDomain.selector, ".phala.network"));
        auth.addBaseDomain(".phala.network");
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthInvalidDomain.selector, "Phala.network"));
        auth.addBaseDomain("Phala.network");
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthUnknownDomain.selector, "nope.org"));
        auth.removeBaseDomain("nope.org");
        vm.stopPrank();
    }

    function test_RevertIf_BaseDomainSetByNonOwner() public {
        DstackClusterAppAuth auth = cluster.appAuth();
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthNotClusterOwner.selector, address(this)));
        auth.addBaseDomain("evil.org");
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthNotClusterOwner.selector, address(this)));
        auth.removeBaseDomain("phala.network");
        assertEq(auth.baseDomains().length, 2, "the domains are unchanged");
    }

    /// Removing a domain from the middle of the list keeps the others, each findable and removable.
    function test_RemovingOneDomainKeepsTheOthers() public {
        vm.startPrank(OWNER);
        cluster.appAuth().addBaseDomain("example.com");
        cluster.appAuth().removeBaseDomain("phala.network");
        cluster.appAuth().removeBaseDomain("example.com");
        cluster.appAuth().addBaseDomain("phala.network");
        cluster.appAuth().addBaseDomain("phala.network");
        vm.stopPrank();
        string[] memory left = cluster.appAuth().baseDomains();
        assertEq(left.length, 2, "two domains");
        assertEq(left[0], "dstack.org", "the last moved into the removed one's place");
        assertEq(left[1], "phala.network", "added again once");
    }

    /// In production, a host is accepted exactly when it equals an allowed domain or ends with "." + domain.
    function testFuzz_ProductionHostMatchesOnLabelBoundary(uint8 a, uint8 b, bool dot) public {
        vm.prank(OWNER);
        cluster.setProductionMode(true);
        string memory label = string.concat(_repeat("x", 1 + a % 5), _repeat("-y", b % 3));
        string memory host = string.concat(label, dot ? "." : "", "phala.network");
        (bool ok, bytes memory err) = _try(string.concat("https://", host));
        if (dot) {
            assertTrue(ok, host);
        } else {
            assertFalse(ok, host);
            assertEq(bytes4(err), DstackClusterNFT.RegistryGatewayDomainNotAllowed.selector, host);
        }
    }

    function _repeat(string memory s, uint256 n) internal pure returns (string memory out) {
        for (uint256 i = 0; i < n; ++i) {
            out = string.concat(out, s);
        }
    }
}
