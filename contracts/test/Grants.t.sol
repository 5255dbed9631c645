// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterAppAuth} from "../src/DstackClusterAppAuth.sol";
import {DstackClusterGrants} from "../src/DstackClusterGrants.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {GasMeasure, Noop} from "./Gas.t.sol";
import {vm} from "./utils/Vm.sol";

/// @notice Who may reach whom: the owner's tags and grants, in the cluster's app auth, read by agents in one call.
contract GrantsTest is ClusterFixture {
    uint32 internal constant WEB = 1;
    uint32 internal constant DB = 2;
    address internal constant DB_APP = address(0xD8);

    function setUp() public {
        cluster = _deploy();
    }

    function _grant(uint32 from, uint32 to, uint8 protocol, uint16 first, uint16 last)
        internal
        pure
        returns (DstackClusterGrants.Grant memory)
    {
        return DstackClusterGrants.Grant(from, to, protocol, first, last);
    }

    function _one(DstackClusterGrants.Grant memory g) internal pure returns (DstackClusterGrants.Grant[] memory gs) {
        gs = new DstackClusterGrants.Grant[](1);
        gs[0] = g;
    }

    function _names() internal pure returns (string[] memory names) {
        names = new string[](2);
        names[0] = "web";
        names[1] = "db";
    }

    function test_NoPolicyUntilTheOwnerSetsOne() public view {
        (bool enforced, uint64 version, string[] memory names,,,,, DstackClusterGrants.Grant[] memory grants) =
            appAuth.policy();
        assertTrue(!enforced, "everyone reaches everyone");
        assertEq(version, 0, "version");
        assertEq(names.length + grants.length, 0, "nothing set");
    }

    function test_TheOwnerSetsAPolicyAndAgentsReadItInOneCall() public {
        vm.startPrank(OWNER);
        appAuth.setTagNames(_names());
        appAuth.setSeatTags(1, WEB);
        appAuth.setSeatTags(2, WEB);
        appAuth.setAppTags(DB_APP, DB);
        vm.expectEmit();
        emit DstackClusterGrants.PolicyUpdated(5);
        appAuth.setGrants(_one(_grant(WEB, DB, 6, 5432, 5432)), true);
        vm.stopPrank();
        (
            bool enforced,
            uint64 version,
            string[] memory names,
            uint256[] memory seats,
            uint32[] memory seatTags,
            address[] memory apps,
            uint32[] memory appTags,
            DstackClusterGrants.Grant[] memory grants
        ) = appAuth.policy();
        assertTrue(enforced, "in force");
        assertEq(version, 5, "one version per change");
        assertEq(names[1], "db", "tag 1");
        assertEq(seats.length, 2, "two tagged seats");
        assertEq(seatTags[1], WEB, "seat 2 is web");
        assertEq(apps[0], DB_APP, "the database app");
        assertEq(appTags[0], DB, "tagged db");
        assertEq(grants.length, 1, "one grant");
        assertEq(grants[0].firstPort, 5432, "port");
        assertEq(grants[0].protocol, 6, "TCP");
    }

    function test_UntaggingASeatKeepsTheOthers() public {
        vm.startPrank(OWNER);
        appAuth.setSeatTags(1, WEB);
        appAuth.setSeatTags(2, DB);
        appAuth.setSeatTags(3, WEB | DB);
        appAuth.setSeatTags(1, 0);
        appAuth.setAppTags(DB_APP, DB);
        appAuth.setAppTags(DB_APP, 0);
        vm.stopPrank();
        (,,, uint256[] memory seats, uint32[] memory seatTags, address[] memory apps,,) = appAuth.policy();
        assertEq(seats.length, 2, "two left");
        assertEq(seats[0], 3, "the last moved into the first's place");
        assertEq(seatTags[0], WEB | DB, "with its tags");
        assertEq(seats[1], 2, "seat 2 stays");
        assertEq(apps.length, 0, "no tagged app");
    }

    function test_OneGrantAddedOrRemovedLeavesTheOthers() public {
        vm.startPrank(OWNER);
        DstackClusterGrants.Grant[] memory two = new DstackClusterGrants.Grant[](2);
        two[0] = _grant(WEB, DB, 6, 5432, 5432);
        two[1] = _grant(WEB, DB, 6, 6379, 6379);
        appAuth.setGrants(two, true);
        appAuth.addGrant(_grant(DB, DB, 0, 1, 65535));
        appAuth.removeGrant(0);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterGrants.PolicyInvalidGrant.selector, 2));
        appAuth.removeGrant(2);
        vm.stopPrank();
        (bool enforced, uint64 version,,,,,, DstackClusterGrants.Grant[] memory grants) = appAuth.policy();
        assertTrue(enforced, "still in force");
        assertEq(version, 3, "three changes");
        assertEq(grants.length, 2, "two left");
        assertEq(grants[0].lastPort, 65535, "the last took the removed one's place");
        assertEq(grants[1].firstPort, 6379, "the other stays");
    }

    function test_RevertIf_NotTheOwner() public {
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthNotClusterOwner.selector, address(this)));
        appAuth.setGrants(_one(_grant(WEB, DB, 6, 1, 2)), true);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthNotClusterOwner.selector, address(this)));
        appAuth.setSeatTags(1, WEB);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthNotClusterOwner.selector, address(this)));
        appAuth.setTagNames(_names());
    }

    function test_RevertIf_AGrantOrATagIsMalformed() public {
        vm.startPrank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterGrants.PolicyInvalidGrant.selector, 0));
        appAuth.setGrants(_one(_grant(WEB, DB, 1, 1, 2)), true);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterGrants.PolicyInvalidGrant.selector, 0));
        appAuth.setGrants(_one(_grant(WEB, DB, 6, 9, 2)), true);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterGrants.PolicyInvalidGrant.selector, 0));
        appAuth.setGrants(_one(_grant(0, DB, 6, 1, 2)), true);
        string[] memory bad = new string[](1);
        bad[0] = "Web";
        vm.expectRevert(abi.encodeWithSelector(DstackClusterGrants.PolicyInvalidTagName.selector, "Web"));
        appAuth.setTagNames(bad);
        DstackClusterGrants.Grant[] memory many = new DstackClusterGrants.Grant[](257);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterGrants.PolicyTooManyGrants.selector, 257));
        appAuth.setGrants(many, true);
        vm.stopPrank();
        (, uint64 version,,,,,,) = appAuth.policy();
        assertEq(version, 0, "nothing changed");
    }
}

/// @notice What a change of the policy costs: execution gas, without the transaction's base and calldata
/// whether forge runs each call as a transaction of its own (--gas-report, storage cold as on chain) or not.
contract GrantsGasTest is GasMeasure {
    function setUp() public {
        cluster = _deploy();
        noop = new Noop();
    }

    function _grant(uint16 port) internal pure returns (DstackClusterGrants.Grant memory) {
        return DstackClusterGrants.Grant(1, 2, 6, port, port);
    }

    function test_GasOfAPolicyChange() public {
        DstackClusterGrants.Grant[] memory grants = new DstackClusterGrants.Grant[](100);
        for (uint256 i = 0; i < grants.length; ++i) {
            grants[i] = _grant(uint16(1000 + i));
        }
        bool isolated = _isolated();
        vm.startPrank(OWNER);
        uint256 before = gasleft();
        appAuth.setGrants(grants, true);
        uint256 hundred = before - gasleft();
        if (isolated) hundred -= _intrinsic(abi.encodeCall(appAuth.setGrants, (grants, true)));
        emit log_named_uint("setGrants, 100 grants", hundred);
        DstackClusterGrants.Grant memory one = _grant(53);
        before = gasleft();
        appAuth.addGrant(one);
        uint256 added = before - gasleft();
        if (isolated) added -= _intrinsic(abi.encodeCall(appAuth.addGrant, (one)));
        emit log_named_uint("addGrant, to 100", added);
        before = gasleft();
        appAuth.removeGrant(3);
        uint256 removed = before - gasleft();
        if (isolated) removed -= _intrinsic(abi.encodeCall(appAuth.removeGrant, (3)));
        emit log_named_uint("removeGrant, of 101", removed);
        before = gasleft();
        appAuth.setSeatTags(7, 1);
        uint256 tagged = before - gasleft();
        if (isolated) tagged -= _intrinsic(abi.encodeCall(appAuth.setSeatTags, (7, 1)));
        emit log_named_uint("setSeatTags, a new seat", tagged);
        vm.stopPrank();
        assertTrue(added < 60_000, "one grant more within 60k gas");
        assertTrue(hundred < 3_000_000, "a policy of 100 grants within 3M gas");
    }
}
