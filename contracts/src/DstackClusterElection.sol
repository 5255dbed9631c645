// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";

/// @notice What the election reads of its cluster: which seats are active and who may act for them.
interface IClusterSeats {
    function activeSeats() external view returns (uint256);
    /// @notice Whether seat `tokenId` is minted and not deactivated.
    function isActiveSeat(uint256 tokenId) external view returns (bool);
    /// @notice Whether `account` may act for seat `tokenId`: its holder (or whoever the holder authorised),
    /// or its bound node while the seat has a record.
    function canActFor(uint256 tokenId, address account) external view returns (bool);
    /// @notice The block of seat `tokenId`'s binding, which names that binding; 0 while the seat is unbound.
    function boundBlockOf(uint256 tokenId) external view returns (uint64);
    /// @notice Releases seat `tokenId`'s binding made at `boundBlock`, which enough members disputed: its
    /// instance is free for another seat, and this seat may not claim it again. Only the election calls it.
    function releaseBinding(uint256 tokenId, uint64 boundBlock) external;
}

/// @title DstackClusterElection: the leader election of one dstack-mesh cluster.
/// @notice Made by its cluster (DstackClusterNFT) when that is deployed, at the address the cluster's
/// `election()` returns. It lives apart so that the cluster contract keeps room under EIP-170 for what binds a
/// seat to its instance. With n active seats and f = ⌊(n−1)/2⌋, f+1 no-confidence votes replace the leader by
/// the lowest-id active seat that is itself under the threshold. `leaderTerm` grows by one at every change.
/// @dev No call loops over the seats ever minted: the cluster reports each seat that becomes active or stops
/// being active, and the election keeps them in a bitmap whose lowest seats it finds in a few reads.
contract DstackClusterElection {
    IClusterSeats public immutable cluster;

    uint256 public leaderTokenId;
    /// @notice The fencing term: it grows by one at every leader change (elected, replaced, cleared), so a
    /// leader's term tells its writes apart from an older leader's.
    uint256 public leaderTerm;
    mapping(uint256 voterTokenId => uint256 targetTokenId) public voteOf;
    mapping(uint256 targetTokenId => uint256) public votesAgainst;
    /// @notice Disputes of a seat's binding (named by its block): who disputed it, and how many did.
    mapping(uint256 targetTokenId => mapping(uint64 boundBlock => mapping(uint256 voterTokenId => bool))) public
        disputedBy;
    mapping(uint256 targetTokenId => mapping(uint64 boundBlock => uint256)) public disputesAgainst;
    /// @dev The seats being drained, and each one's place in that list plus one (0: not draining).
    uint256[] private _drainingSeats;
    mapping(uint256 tokenId => uint256) private _drainingPlace;

    /// @dev The active seats in three levels: bit b of `_activeInWord[w]` is seat 256·w + b; bit (w mod 256) of
    /// `_wordsInGroup[w / 256]` says that word w has a seat, and bit g of `_groupsInUse` that group g has one.
    /// That holds 2^24 ids, the capacity of the widest prefix the cluster takes (a /8).
    uint256 private _groupsInUse;
    mapping(uint256 group => uint256) private _wordsInGroup;
    mapping(uint256 word => uint256) private _activeInWord;

    event LeaderElected(uint256 indexed tokenId, uint256 term);
    event VoteCast(uint256 indexed voterTokenId, uint256 indexed targetTokenId);
    event VoteWithdrawn(uint256 indexed voterTokenId, uint256 indexed targetTokenId);
    event LeaderReplaced(uint256 indexed oldTokenId, uint256 indexed newTokenId, uint256 votes, uint256 term);
    event LeaderCleared(uint256 indexed oldTokenId, uint256 term);
    event LeaderHandedOff(uint256 indexed oldTokenId, uint256 indexed newTokenId, uint256 term);
    event SeatDraining(uint256 indexed tokenId, bool draining);
    event BindingDisputed(
        uint256 indexed voterTokenId, uint256 indexed targetTokenId, uint64 boundBlock, uint256 disputes
    );
    event BindingReleased(uint256 indexed targetTokenId, uint64 boundBlock, uint256 disputes);

    error LeaderAlreadyElected(uint256 tokenId);
    error LeaderNoEligibleSeat();
    error LeaderCannotVoteForSelf(uint256 tokenId);
    error LeaderNoVote(uint256 tokenId);
    error LeaderNotSeatAgent(uint256 tokenId, address caller);
    error LeaderSeatInactive(uint256 tokenId);
    error LeaderOnlyCluster(address caller);
    error LeaderNotLeader(uint256 tokenId, uint256 leaderTokenId);
    error LeaderHandOffIneligible(uint256 tokenId);
    error DisputeSeatNotBound(uint256 tokenId);
    error DisputeBindingChanged(uint256 tokenId, uint64 disputed, uint64 current);

    constructor(IClusterSeats cluster_) {
        cluster = cluster_;
    }

    /// @notice With no leader, makes the lowest-id active seat that is under the no-confidence threshold the
    /// leader. Any active seat may call it: its holder, or its node.
    function electLeader(uint256 callerTokenId) external {
        _requireActiveVoter(callerTokenId);
        if (leaderTokenId != 0) revert LeaderAlreadyElected(leaderTokenId);
        uint256 next = _lowestEligible();
        if (next == 0) revert LeaderNoEligibleSeat();
        emit LeaderElected(next, _setLeader(next));
    }

    /// @notice Seat `voterTokenId` votes no-confidence against `targetTokenId`, replacing any earlier vote.
    /// The seat's holder or its node may vote, so a node can vote out a leader it cannot reach without a
    /// person; either way it is the seat's one vote.
    function castVote(uint256 voterTokenId, uint256 targetTokenId) external {
        _requireActiveVoter(voterTokenId);
        if (voterTokenId == targetTokenId) revert LeaderCannotVoteForSelf(voterTokenId);
        if (!cluster.isActiveSeat(targetTokenId)) revert LeaderSeatInactive(targetTokenId);
        uint256 previous = voteOf[voterTokenId];
        if (previous == targetTokenId) return;
        if (previous != 0) {
            --votesAgainst[previous];
            emit VoteWithdrawn(voterTokenId, previous);
        }
        voteOf[voterTokenId] = targetTokenId;
        ++votesAgainst[targetTokenId];
        emit VoteCast(voterTokenId, targetTokenId);
        _checkLeader();
    }

    /// @notice The leader, seat `fromTokenId`, hands its term over to seat `toTokenId`: a planned change (an
    /// upgrade, a drain) that needs no silence and no votes. The leader's holder or its node may call it. The
    /// successor must be another active seat, under the no-confidence threshold and not draining. The term
    /// grows by one, as at every change; the leader's agent stops claiming its lease before it sends this, so
    /// that the two terms' leases never overlap.
    function handOff(uint256 fromTokenId, uint256 toTokenId) external {
        _requireActiveVoter(fromTokenId);
        if (leaderTokenId != fromTokenId) revert LeaderNotLeader(fromTokenId, leaderTokenId);
        if (
            toTokenId == fromTokenId || !cluster.isActiveSeat(toTokenId) || draining(toTokenId)
                || votesAgainst[toTokenId] >= voteThreshold()
        ) revert LeaderHandOffIneligible(toTokenId);
        emit LeaderHandedOff(fromTokenId, toTokenId, _setLeader(toTokenId));
    }

    /// @notice Marks seat `tokenId` as draining for maintenance (or not): its agent hands off if it leads,
    /// no leader is handed to, elected or chosen among draining seats while another is eligible, and replicas
    /// are not read from them. Its holder or its node may set it; a seat that leaves stops draining.
    function setDraining(uint256 tokenId, bool on) external {
        _requireVoter(tokenId);
        _setDraining(tokenId, on);
    }

    /// @notice Whether seat `tokenId` is draining.
    function draining(uint256 tokenId) public view returns (bool) {
        return _drainingPlace[tokenId] != 0;
    }

    /// @notice Every seat draining now (few: seats are drained one or two at a time), in no order.
    function drainingSeats() external view returns (uint256[] memory) {
        return _drainingSeats;
    }

    /// @notice Withdraws seat `voterTokenId`'s vote; its holder or its node may.
    function withdrawVote(uint256 voterTokenId) external {
        _requireVoter(voterTokenId);
        uint256 previous = voteOf[voterTokenId];
        if (previous == 0) revert LeaderNoVote(voterTokenId);
        _withdrawVote(voterTokenId, previous);
    }

    /// @notice Seat `voterTokenId` disputes seat `targetTokenId`'s binding: its evidence does not show the
    /// instance it claims (a quote of another instance or node, or no quote at all), which every agent checks and
    /// the contract cannot. A binding disputed by f + 1 active seats, as many as vote a leader out, is released:
    /// its instance is free for the seat that genuinely runs it, with no owner's hand, and the disputed seat may
    /// not claim that instance again. Agents dispute only for what a quote itself shows, never for what time or
    /// policy changes (collateral, TCB status, allowlists). The seat's holder or its node may dispute; either
    /// way it is the seat's one voice per binding. `boundBlock` names the binding the voter checked: a seat
    /// rebound since (by its holder, perhaps genuinely this time) is not disputed for what its old binding showed.
    function disputeBinding(uint256 voterTokenId, uint256 targetTokenId, uint64 boundBlock) external {
        _requireActiveVoter(voterTokenId);
        if (voterTokenId == targetTokenId) revert LeaderCannotVoteForSelf(voterTokenId);
        uint64 current = cluster.boundBlockOf(targetTokenId);
        if (current == 0) revert DisputeSeatNotBound(targetTokenId);
        if (current != boundBlock) revert DisputeBindingChanged(targetTokenId, boundBlock, current);
        mapping(uint256 => bool) storage voters = disputedBy[targetTokenId][boundBlock];
        if (voters[voterTokenId]) return;
        voters[voterTokenId] = true;
        uint256 disputes = ++disputesAgainst[targetTokenId][boundBlock];
        emit BindingDisputed(voterTokenId, targetTokenId, boundBlock, disputes);
        if (disputes >= voteThreshold()) {
            emit BindingReleased(targetTokenId, boundBlock, disputes);
            cluster.releaseBinding(targetTokenId, boundBlock);
        }
    }

    /// @notice f + 1 for the current number of active seats.
    function voteThreshold() public view returns (uint256) {
        uint256 n = cluster.activeSeats();
        return n == 0 ? 1 : (n - 1) / 2 + 1;
    }

    /// @notice The cluster tells the election that seat `tokenId` became active (minted, or activated again).
    function seatJoined(uint256 tokenId) external {
        if (msg.sender != address(cluster)) revert LeaderOnlyCluster(msg.sender);
        _markActive(tokenId, true);
    }

    /// @notice The cluster tells the election that seat `tokenId` stopped being active (deactivated or
    /// revoked), after counting it out: its vote goes, and so does its leadership; one fewer active seat
    /// lowers the threshold, which may unseat the leader.
    function seatLeft(uint256 tokenId) external {
        if (msg.sender != address(cluster)) revert LeaderOnlyCluster(msg.sender);
        _markActive(tokenId, false);
        _setDraining(tokenId, false);
        uint256 previous = voteOf[tokenId];
        if (previous != 0) _withdrawVote(tokenId, previous);
        if (leaderTokenId == tokenId) {
            emit LeaderCleared(tokenId, _setLeader(0));
        } else {
            _checkLeader();
        }
    }

    function _setDraining(uint256 tokenId, bool on) private {
        uint256 place = _drainingPlace[tokenId];
        if ((place != 0) == on) return;
        if (on) {
            _drainingSeats.push(tokenId);
            _drainingPlace[tokenId] = _drainingSeats.length;
        } else {
            uint256 last = _drainingSeats[_drainingSeats.length - 1];
            _drainingSeats[place - 1] = last;
            _drainingPlace[last] = place;
            _drainingSeats.pop();
            delete _drainingPlace[tokenId];
        }
        emit SeatDraining(tokenId, on);
    }

    function _setLeader(uint256 next) private returns (uint256 term) {
        leaderTokenId = next;
        term = ++leaderTerm;
    }

    function _withdrawVote(uint256 voterTokenId, uint256 target) private {
        --votesAgainst[target];
        delete voteOf[voterTokenId];
        emit VoteWithdrawn(voterTokenId, target);
    }

    function _checkLeader() private {
        uint256 leader = leaderTokenId;
        if (leader == 0) return;
        uint256 votes = votesAgainst[leader];
        if (votes < voteThreshold()) return;
        uint256 next = _lowestEligible();
        emit LeaderReplaced(leader, next, votes, _setLeader(next));
    }

    /// @dev The lowest active seat under the threshold that is not draining, else the lowest under the
    /// threshold. Each active seat has one vote and the threshold is more than half of them, so no more than
    /// two seats can be at it: beyond those, only draining seats are passed over.
    function _lowestEligible() private view returns (uint256) {
        uint256 threshold = voteThreshold();
        uint256 drained;
        for (uint256 id = _nextActive(1); id != 0; id = _nextActive(id + 1)) {
            if (votesAgainst[id] >= threshold) continue;
            if (_drainingPlace[id] == 0) return id;
            if (drained == 0) drained = id;
        }
        return drained;
    }

    function _markActive(uint256 tokenId, bool active) private {
        uint256 word = tokenId >> 8;
        uint256 group = word >> 8;
        uint256 before = _activeInWord[word];
        uint256 bit = 1 << (tokenId & 255);
        uint256 updated = active ? before | bit : before & ~bit;
        _activeInWord[word] = updated;
        if ((before == 0) == (updated == 0)) return;
        uint256 words = _wordsInGroup[group];
        uint256 wordBit = 1 << (word & 255);
        uint256 wordsUpdated = updated != 0 ? words | wordBit : words & ~wordBit;
        _wordsInGroup[group] = wordsUpdated;
        if ((words == 0) == (wordsUpdated == 0)) return;
        _groupsInUse = wordsUpdated != 0 ? _groupsInUse | (1 << group) : _groupsInUse & ~(1 << group);
    }

    /// @dev The lowest active seat id at or above `from`, or 0. A shift by 256 gives 0, which ends each level.
    function _nextActive(uint256 from) private view returns (uint256) {
        if (from >> 24 != 0) return 0;
        uint256 word = from >> 8;
        uint256 seats = _activeInWord[word] & (type(uint256).max << (from & 255));
        if (seats != 0) return (word << 8) | _lowestBit(seats);
        uint256 group = word >> 8;
        uint256 words = _wordsInGroup[group] & (type(uint256).max << ((word & 255) + 1));
        if (words == 0) {
            uint256 groups = _groupsInUse & (type(uint256).max << (group + 1));
            if (groups == 0) return 0;
            group = _lowestBit(groups);
            words = _wordsInGroup[group];
        }
        word = (group << 8) | _lowestBit(words);
        return (word << 8) | _lowestBit(_activeInWord[word]);
    }

    function _lowestBit(uint256 x) private pure returns (uint256) {
        return Math.log2(x & (~x + 1));
    }

    function _requireVoter(uint256 tokenId) private view {
        if (!cluster.canActFor(tokenId, msg.sender)) revert LeaderNotSeatAgent(tokenId, msg.sender);
    }

    function _requireActiveVoter(uint256 tokenId) private view {
        _requireVoter(tokenId);
        if (!cluster.isActiveSeat(tokenId)) revert LeaderSeatInactive(tokenId);
    }
}
