// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DstackClusterAppAuth} from "../src/DstackClusterAppAuth.sol";
import {ClusterFixture} from "./utils/ClusterFixture.sol";
import {vm} from "./utils/Vm.sol";

/// @notice The cluster's TCB policy lives in its app auth, which the owner alone sets and every agent reads in one
/// call: the statuses accepted, the lowest TCB evaluation data number, the grace and drop periods of a peer that
/// falls below it, and the advisories accepted below UpToDate.
contract TcbPolicyTest is ClusterFixture {
    uint8 internal constant UP_TO_DATE = 1;
    uint8 internal constant SW_HARDENING_NEEDED = 2;

    function setUp() public {
        cluster = _deploy();
    }

    function _policy()
        internal
        view
        returns (uint8 statuses, uint32 minEval, uint32 grace, uint32 drop, string[] memory advisories)
    {
        return appAuth.tcbPolicy();
    }

    function test_NoPolicyUntilTheOwnerSetsOne() public view {
        (uint8 statuses, uint32 minEval, uint32 grace, uint32 drop, string[] memory advisories) = _policy();
        assertEq(statuses, 0, "agents go by their flags");
        assertEq(minEval + grace + drop, 0, "minEval + grace + drop");
        assertEq(advisories.length, 0, "advisories.length");
    }

    function test_TheOwnerSetsThePolicyAndAgentsReadItInOneCall() public {
        vm.expectEmit();
        emit DstackClusterAppAuth.TcbPolicyUpdated(UP_TO_DATE | SW_HARDENING_NEEDED, 18, 3600, 86400);
        vm.prank(OWNER);
        appAuth.setTcbPolicy(UP_TO_DATE | SW_HARDENING_NEEDED, 18, 3600, 86400);
        vm.startPrank(OWNER);
        appAuth.setTcbAdvisory("INTEL-SA-00837", true);
        appAuth.setTcbAdvisory("INTEL-SA-00615", true);
        appAuth.setTcbAdvisory("INTEL-SA-00837", true);
        vm.stopPrank();

        (uint8 statuses, uint32 minEval, uint32 grace, uint32 drop, string[] memory advisories) = _policy();
        assertEq(statuses, UP_TO_DATE | SW_HARDENING_NEEDED, "statuses");
        assertEq(minEval, 18, "minEval");
        assertEq(grace, 3600, "grace");
        assertEq(drop, 86400, "drop");
        assertEq(advisories.length, 2, "an advisory is listed once");
        assertEq(advisories[0], "INTEL-SA-00837", "advisories[0]");
        assertEq(advisories[1], "INTEL-SA-00615", "advisories[1]");
    }

    function test_AnAdvisoryNoLongerAcceptedLeavesTheList() public {
        vm.startPrank(OWNER);
        appAuth.setTcbAdvisory("INTEL-SA-00001", true);
        appAuth.setTcbAdvisory("INTEL-SA-00002", true);
        appAuth.setTcbAdvisory("INTEL-SA-00003", true);
        appAuth.setTcbAdvisory("INTEL-SA-00001", false);
        appAuth.setTcbAdvisory("INTEL-SA-00009", false);
        vm.stopPrank();
        (,,,, string[] memory advisories) = _policy();
        assertEq(advisories.length, 2, "advisories.length");
        assertEq(advisories[0], "INTEL-SA-00003", "advisories[0]");
        assertEq(advisories[1], "INTEL-SA-00002", "advisories[1]");
        vm.prank(OWNER);
        appAuth.setTcbAdvisory("INTEL-SA-00003", false);
        (,,,, advisories) = _policy();
        assertEq(advisories.length, 1, "advisories.length");
        assertEq(advisories[0], "INTEL-SA-00002", "advisories[0]");
    }

    function test_RevertIf_ThePolicyLeavesOutUpToDate() public {
        vm.prank(OWNER);
        vm.expectRevert(
            abi.encodeWithSelector(DstackClusterAppAuth.AppAuthTcbStatusesWithoutUpToDate.selector, SW_HARDENING_NEEDED)
        );
        appAuth.setTcbPolicy(SW_HARDENING_NEEDED, 0, 0, 0);
    }

    function test_RevertIf_AnAdvisoryIdIsMalformed() public {
        vm.startPrank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthInvalidAdvisoryId.selector, ""));
        appAuth.setTcbAdvisory("", true);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthInvalidAdvisoryId.selector, "intel-sa-1"));
        appAuth.setTcbAdvisory("intel-sa-1", true);
        vm.stopPrank();
    }

    function test_RevertIf_AnyoneButTheOwnerSetsThePolicy() public {
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthNotClusterOwner.selector, HOLDER_A));
        appAuth.setTcbPolicy(UP_TO_DATE, 0, 0, 0);
        vm.prank(HOLDER_A);
        vm.expectRevert(abi.encodeWithSelector(DstackClusterAppAuth.AppAuthNotClusterOwner.selector, HOLDER_A));
        appAuth.setTcbAdvisory("INTEL-SA-00837", true);
    }
}
