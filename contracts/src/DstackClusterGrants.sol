// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice Who may reach whom in a dstack-mesh cluster: the owner's tags on seats and on app ids, and grants
/// between tags, which every agent enforces on what it receives. A part of DstackClusterAppAuth (which
/// inherits it), with the rest of what the cluster accepts of a node, in a file of its own.
///
/// - A tag is a bit, 0 to 31, with a name (`setTagNames`). A seat has its own tags and those of the app its
///   record serves (`seatAppOf`).
/// - A grant lets a seat with any tag of `from` reach a seat with any tag of `to`, over `protocol` (0 for
///   TCP and UDP, 6 TCP, 17 UDP), on destination ports `firstPort` to `lastPort`.
/// - While the policy is not `enforced`, every seat reaches every port of every other, as without one. While
///   it is, a receiving agent lets through only what a grant allows, the replies of a flow it allowed, ICMP,
///   and the agents' own probes and heartbeats.
///
/// Every change bumps `policyVersion` and emits `PolicyUpdated`: agents read the whole policy again
/// (`policy()`) and apply it from that block on.
abstract contract DstackClusterGrants {
    /// @notice One grant; it fits one storage slot.
    struct Grant {
        uint32 from;
        uint32 to;
        uint8 protocol;
        uint16 firstPort;
        uint16 lastPort;
    }

    uint256 public constant MAX_TAGS = 32;
    uint256 public constant MAX_GRANTS = 256;
    uint8 internal constant ANY_PROTOCOL = 0;
    uint8 internal constant TCP = 6;
    uint8 internal constant UDP = 17;

    /// @notice The policy is in force: only what a grant allows gets through.
    bool public policyEnforced;
    /// @notice One more at every change of the policy.
    uint64 public policyVersion;

    string[] private _tagNames;
    Grant[] private _grants;
    /// @dev The seats and the apps with tags, and each one's place in its list, plus one.
    uint256[] private _taggedSeats;
    mapping(uint256 tokenId => uint32) private _seatTags;
    mapping(uint256 tokenId => uint256) private _seatPlace;
    address[] private _taggedApps;
    mapping(address appId => uint32) private _appTags;
    mapping(address appId => uint256) private _appPlace;

    event PolicyUpdated(uint64 version);

    error PolicyTooManyTags(uint256 count);
    error PolicyInvalidTagName(string name);
    error PolicyTooManyGrants(uint256 count);
    /// @notice Grant `index` names no tag on a side, a protocol other than 0, 6 or 17, or ports that run backwards.
    error PolicyInvalidGrant(uint256 index);

    /// @dev Reverts unless the caller owns the cluster.
    function _requireClusterOwner() internal view virtual;

    /// @notice Names the tags, bit 0 first: lowercase letters, digits and dashes, 1 to 32 characters each.
    function setTagNames(string[] calldata names) external {
        _requireClusterOwner();
        if (names.length > MAX_TAGS) revert PolicyTooManyTags(names.length);
        delete _tagNames;
        for (uint256 i = 0; i < names.length; ++i) {
            if (!_isTagName(bytes(names[i]))) revert PolicyInvalidTagName(names[i]);
            _tagNames.push(names[i]);
        }
        _changed();
    }

    /// @notice Sets seat `tokenId`'s own tags (a bit each); 0 takes them all away.
    function setSeatTags(uint256 tokenId, uint32 tags) external {
        _requireClusterOwner();
        _seatTags[tokenId] = tags;
        uint256 place = _seatPlace[tokenId];
        if (tags != 0 && place == 0) {
            _taggedSeats.push(tokenId);
            _seatPlace[tokenId] = _taggedSeats.length;
        } else if (tags == 0 && place != 0) {
            uint256 last = _taggedSeats[_taggedSeats.length - 1];
            _taggedSeats[place - 1] = last;
            _seatPlace[last] = place;
            _taggedSeats.pop();
            delete _seatPlace[tokenId];
        }
        _changed();
    }

    /// @notice Sets the tags of every seat that serves app `appId`; 0 takes them all away.
    function setAppTags(address appId, uint32 tags) external {
        _requireClusterOwner();
        _appTags[appId] = tags;
        uint256 place = _appPlace[appId];
        if (tags != 0 && place == 0) {
            _taggedApps.push(appId);
            _appPlace[appId] = _taggedApps.length;
        } else if (tags == 0 && place != 0) {
            address last = _taggedApps[_taggedApps.length - 1];
            _taggedApps[place - 1] = last;
            _appPlace[last] = place;
            _taggedApps.pop();
            delete _appPlace[appId];
        }
        _changed();
    }

    /// @notice Replaces every grant with `grants`, and puts the policy in force or out of it.
    function setGrants(Grant[] calldata grants, bool enforced) external {
        _requireClusterOwner();
        if (grants.length > MAX_GRANTS) revert PolicyTooManyGrants(grants.length);
        delete _grants;
        for (uint256 i = 0; i < grants.length; ++i) {
            _checkGrant(grants[i], i);
            _grants.push(grants[i]);
        }
        policyEnforced = enforced;
        _changed();
    }

    /// @notice Adds one grant, at the end: the cheap change, for a policy already set.
    function addGrant(Grant calldata grant) external {
        _requireClusterOwner();
        uint256 index = _grants.length;
        if (index == MAX_GRANTS) revert PolicyTooManyGrants(index + 1);
        _checkGrant(grant, index);
        _grants.push(grant);
        _changed();
    }

    /// @notice Removes grant `index`; the last grant takes its place.
    function removeGrant(uint256 index) external {
        _requireClusterOwner();
        uint256 n = _grants.length;
        if (index >= n) revert PolicyInvalidGrant(index);
        _grants[index] = _grants[n - 1];
        _grants.pop();
        _changed();
    }

    /// @notice The whole policy in one read, for agents and `meshctl policy show`.
    function policy()
        external
        view
        returns (
            bool enforced,
            uint64 version,
            string[] memory tagNames,
            uint256[] memory seats,
            uint32[] memory seatTags,
            address[] memory apps,
            uint32[] memory appTags,
            Grant[] memory grants
        )
    {
        seats = _taggedSeats;
        seatTags = new uint32[](seats.length);
        for (uint256 i = 0; i < seats.length; ++i) {
            seatTags[i] = _seatTags[seats[i]];
        }
        apps = _taggedApps;
        appTags = new uint32[](apps.length);
        for (uint256 i = 0; i < apps.length; ++i) {
            appTags[i] = _appTags[apps[i]];
        }
        return (policyEnforced, policyVersion, _tagNames, seats, seatTags, apps, appTags, _grants);
    }

    function _checkGrant(Grant calldata g, uint256 index) private pure {
        bool protocol = g.protocol == ANY_PROTOCOL || g.protocol == TCP || g.protocol == UDP;
        if (g.from == 0 || g.to == 0 || !protocol || g.firstPort > g.lastPort) revert PolicyInvalidGrant(index);
    }

    function _changed() private {
        uint64 version = policyVersion + 1;
        policyVersion = version;
        emit PolicyUpdated(version);
    }

    function _isTagName(bytes calldata b) private pure returns (bool) {
        if (b.length == 0 || b.length > 32) return false;
        for (uint256 i = 0; i < b.length; ++i) {
            bytes1 c = b[i];
            if (!((c >= "a" && c <= "z") || (c >= "0" && c <= "9") || c == "-")) return false;
        }
        return true;
    }
}
