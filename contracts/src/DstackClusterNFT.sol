// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";
import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

import {IAppAuth} from "./IAppAuth.sol";
import {DstackChain} from "./DstackChain.sol";
import {RecordFormat} from "./RecordFormat.sol";

/// @title DstackClusterNFT: the seats, the peer registry and the dstack app-auth hook of one dstack-mesh cluster.
/// @notice A seat is an ERC721 token. Token id N owns overlay address `network + N` for good: ids start at 1
/// and are never reissued. The holder binds the seat to one dstack instance; that instance's agent then
/// registers a peer record (WireGuard key, UDP endpoint, TLS-gateway URL) that anyone may relay, because the
/// record carries its own proof:
///  1. dstack's signature chain for a key derived under the purpose `"dstack-mesh-peer:" ‖ instanceId`,
///     rooted at the pinned KMS root and an allowed app id (see DstackChain);
///  2. an EIP-712 signature by that derived key over the whole record, under this contract's domain
///     (name "DstackClusterNFT", version "1", chain id, this address), with a nonce above the seat's last.
/// The contract address is the cluster's identity.
contract DstackClusterNFT is ERC721, Ownable2Step, EIP712, IAppAuth {
    using RecordFormat for string;

    // ------------------------------------------------------------------ types

    /// @notice dstack's proof that `derivedPublicKey` was issued to an instance of an allowed app.
    struct DstackProof {
        bytes derivedPublicKey; // 64 bytes, uncompressed X ‖ Y
        bytes appPublicKey; // 64 bytes, uncompressed X ‖ Y
        bytes appSignature; // 65 bytes, r ‖ s ‖ v
        bytes kmsSignature; // 65 bytes, r ‖ s ‖ v
        address appId; // dstack app id (20 bytes)
        string purpose; // PURPOSE_PREFIX ‖ instanceId
    }

    /// @notice The fields of a peer record that its agent chooses. The instance id comes from the seat.
    struct PeerRecordInput {
        uint256 tokenId;
        bytes32 wgPublicKey; // zero for a TLS-gateway-only node
        string endpoint; // "host:port", or empty
        string gatewayUrl; // optional
        uint64 nonce; // must exceed the seat's last nonce
    }

    /// @notice A registered peer, as the views return it.
    struct Peer {
        uint256 tokenId;
        string instanceId;
        bytes32 wgPublicKey;
        string endpoint;
        string gatewayUrl;
        uint64 nonce;
        uint64 registeredBlock;
        uint32 overlayAddress; // IPv4, big-endian integer
    }

    /// @notice Why a seat's peer record was cleared.
    enum ClearReason {
        Rebound,
        Transferred,
        Deactivated,
        Revoked
    }

    struct Seat {
        bool active; // minted, not deactivated (burned seats have no Seat)
        uint64 nonce; // last accepted record nonce; never goes back, so old records cannot be replayed
        uint64 registeredBlock; // block of the current record, 0 when there is none
        bytes32 wgPublicKey;
        string instanceId;
        string endpoint;
        string gatewayUrl;
    }

    // -------------------------------------------------------------- constants

    /// @notice The purpose an agent passes to dstack's GetKey; the instance id (40 lowercase hex) follows it.
    string public constant PURPOSE_PREFIX = "dstack-mesh-peer:";

    bytes32 public constant PEER_RECORD_TYPEHASH = keccak256(
        "PeerRecord(uint256 tokenId,string instanceId,bytes32 wgPublicKey,string endpoint,string gatewayUrl,uint64 nonce)"
    );

    // ------------------------------------------------------------------ state

    /// @notice The mesh prefix: overlay addresses are `network + tokenId` inside `network/prefixLength`.
    uint32 public immutable network;
    uint8 public immutable prefixLength;

    address public kmsRoot;
    uint256 public maxNodes;
    bool public publicMinting;
    uint256 public mintPrice;
    /// @notice In production mode gateway URLs must be https under an allowed base domain.
    bool public productionMode;

    uint256 public lastTokenId;
    uint256 public activeSeats;

    mapping(uint256 tokenId => Seat) private _seats;
    mapping(bytes32 instanceHash => uint256 tokenId) private _tokenOfInstance;
    mapping(bytes32 wgPublicKey => uint256 tokenId) private _tokenOfWgKey;

    address[] private _appIds;
    mapping(address appId => bool) public isAllowedAppId;

    string[] private _baseDomains;
    mapping(bytes32 domainHash => bool) private _isBaseDomain;

    mapping(bytes32 composeHash => bool) public isComposeHashAllowed;
    mapping(bytes32 deviceId => bool) public isDeviceAllowed;
    bool public requireAllowedDevice;
    bool public requireBoundInstance;

    uint256 public leaderTokenId;
    mapping(uint256 voterTokenId => uint256 targetTokenId) public voteOf;
    mapping(uint256 targetTokenId => uint256) public votesAgainst;

    // ----------------------------------------------------------------- events

    event SeatMinted(uint256 indexed tokenId, address indexed to, uint32 overlayAddress);
    event InstanceBound(uint256 indexed tokenId, string instanceId);
    event InstanceUnbound(uint256 indexed tokenId, string instanceId);
    event SeatDeactivated(uint256 indexed tokenId);
    event SeatActivated(uint256 indexed tokenId);
    event SeatRevoked(uint256 indexed tokenId);

    /// @notice One per registration, with the whole record and its proof, so that an agent can re-verify every
    /// record against a KMS root it pins instead of trusting its RPC.
    event PeerRegistered(
        uint256 indexed tokenId,
        string instanceId,
        bytes32 wgPublicKey,
        string endpoint,
        string gatewayUrl,
        uint64 nonce,
        DstackProof proof,
        bytes recordSignature
    );
    event PeerCleared(uint256 indexed tokenId, ClearReason reason);

    event MaxNodesUpdated(uint256 maxNodes);
    event PublicMintingUpdated(bool enabled);
    event MintPriceUpdated(uint256 price);
    event KmsRootUpdated(address indexed previousRoot, address indexed newRoot);
    event AppIdUpdated(address indexed appId, bool allowed);
    event ProductionModeUpdated(bool enabled);
    event BaseDomainAdded(string domain);
    event BaseDomainRemoved(string domain);
    event Withdrawn(address indexed to, uint256 amount);

    event ComposeHashUpdated(bytes32 indexed composeHash, bool allowed);
    event DeviceUpdated(bytes32 indexed deviceId, bool allowed);
    event AppAuthPolicyUpdated(bool requireAllowedDevice, bool requireBoundInstance);

    event LeaderElected(uint256 indexed tokenId);
    event VoteCast(uint256 indexed voterTokenId, uint256 indexed targetTokenId);
    event VoteWithdrawn(uint256 indexed voterTokenId, uint256 indexed targetTokenId);
    event LeaderReplaced(uint256 indexed oldTokenId, uint256 indexed newTokenId, uint256 votes);
    event LeaderCleared(uint256 indexed oldTokenId);

    // ----------------------------------------------------------------- errors

    error ClusterInvalidPrefix(uint32 network, uint8 prefixLength);
    error ClusterInvalidKmsRoot();
    error ClusterInvalidAppId();
    error ClusterMaxNodesReached(uint256 maxNodes);
    error ClusterPrefixExhausted(uint256 tokenId, uint256 capacity);
    error ClusterWrongPayment(uint256 expected, uint256 sent);
    error ClusterMintNotAllowed(address caller);
    error ClusterNotSeatHolder(uint256 tokenId, address caller);
    error ClusterSeatInactive(uint256 tokenId);
    error ClusterSeatAlreadyActive(uint256 tokenId);
    error ClusterSeatNotBound(uint256 tokenId);
    error ClusterInvalidInstanceId(string instanceId);
    error ClusterInstanceAlreadyBound(string instanceId, uint256 tokenId);
    error ClusterInvalidDomain(string domain);
    error ClusterUnknownDomain(string domain);
    error ClusterWithdrawFailed(address to, uint256 amount);

    error RegistryStaleNonce(uint256 tokenId, uint64 lastNonce, uint64 nonce);
    error RegistryEmptyRecord(uint256 tokenId);
    error RegistryEndpointWithoutKey(uint256 tokenId);
    error RegistryInvalidEndpoint(string endpoint);
    error RegistryInvalidGatewayUrl(string gatewayUrl);
    error RegistryGatewayUrlNotHttps(string gatewayUrl);
    error RegistryGatewayDomainNotAllowed(string gatewayUrl);
    error RegistryInvalidKeyLength(uint256 length);
    error RegistryAppIdNotAllowed(address appId);
    error RegistryPurposeMismatch(string expected, string purpose);
    error RegistryAppSignatureInvalid(address appKey, address recovered);
    error RegistryKmsSignatureInvalid(address kmsRoot, address recovered);
    error RegistryRecordSignatureInvalid(address derivedKey, address recovered);
    error RegistryWireGuardKeyInUse(bytes32 wgPublicKey, uint256 tokenId);

    error LeaderAlreadyElected(uint256 tokenId);
    error LeaderNoEligibleSeat();
    error LeaderCannotVoteForSelf(uint256 tokenId);
    error LeaderNoVote(uint256 tokenId);

    // ------------------------------------------------------------ constructor

    /// @param initialOwner the cluster owner.
    /// @param kmsRoot_ the address of the trusted dstack KMS root key.
    /// @param appIds the dstack app ids whose instances may register.
    /// @param network_ the mesh network as a big-endian IPv4 integer (10.0.1.0 is 0x0a000100).
    /// @param prefixLength_ the mesh prefix length, 8..30.
    /// @param maxNodes_ the most seats that may be active at once.
    constructor(
        address initialOwner,
        address kmsRoot_,
        address[] memory appIds,
        uint32 network_,
        uint8 prefixLength_,
        uint256 maxNodes_
    ) ERC721("dstack-mesh cluster seat", "DMESH") Ownable(initialOwner) EIP712("DstackClusterNFT", "1") {
        // /31 and /32 have no host address left once the network and broadcast addresses are excluded.
        if (prefixLength_ < 8 || prefixLength_ > 30) revert ClusterInvalidPrefix(network_, prefixLength_);
        if (network_ & uint32(_hostMask(prefixLength_)) != 0) revert ClusterInvalidPrefix(network_, prefixLength_);
        if (kmsRoot_ == address(0)) revert ClusterInvalidKmsRoot();
        network = network_;
        prefixLength = prefixLength_;
        kmsRoot = kmsRoot_;
        maxNodes = maxNodes_;
        for (uint256 i = 0; i < appIds.length; ++i) {
            _setAppId(appIds[i], true);
        }
        emit KmsRootUpdated(address(0), kmsRoot_);
        emit MaxNodesUpdated(maxNodes_);
    }

    // ------------------------------------------------------------------ seats

    /// @notice Mints the next seat to `to`, binding it to `instanceId` unless that is empty.
    /// @dev Requirements: the caller is the owner (free), or public minting is on and `msg.value == mintPrice`;
    /// fewer than `maxNodes` seats are active; the next id still fits the prefix.
    function mintNodeAccess(address to, string calldata instanceId) external payable returns (uint256 tokenId) {
        uint256 price;
        if (msg.sender != owner()) {
            if (!publicMinting) revert ClusterMintNotAllowed(msg.sender);
            price = mintPrice;
        }
        if (msg.value != price) revert ClusterWrongPayment(price, msg.value);
        if (activeSeats >= maxNodes) revert ClusterMaxNodesReached(maxNodes);
        tokenId = lastTokenId + 1;
        uint256 capacity = seatCapacity();
        if (tokenId > capacity) revert ClusterPrefixExhausted(tokenId, capacity);
        lastTokenId = tokenId;
        _mint(to, tokenId);
        if (bytes(instanceId).length != 0) _bind(tokenId, instanceId);
    }

    /// @notice Binds a seat to a dstack instance, or rebinds it to another; a rebind clears the seat's record.
    /// @dev Requirements: the caller holds the seat or is approved for it; the seat is active; `instanceId` is 40
    /// lowercase hex characters and not bound to any seat.
    function bindInstance(uint256 tokenId, string calldata instanceId) external {
        _requireHolder(tokenId);
        if (!_seats[tokenId].active) revert ClusterSeatInactive(tokenId);
        _bind(tokenId, instanceId);
    }

    /// @notice Takes a seat out of the mesh (it stops counting towards `maxNodes`) and clears its record.
    function deactivate(uint256 tokenId) external {
        _requireHolder(tokenId);
        Seat storage seat = _seats[tokenId];
        if (!seat.active) revert ClusterSeatInactive(tokenId);
        seat.active = false;
        --activeSeats;
        _clearRecord(tokenId, ClearReason.Deactivated);
        _leaveElection(tokenId);
        emit SeatDeactivated(tokenId);
    }

    /// @notice Brings a deactivated seat back, within `maxNodes`. Its agent must register a record again.
    function activate(uint256 tokenId) external {
        _requireHolder(tokenId);
        Seat storage seat = _seats[tokenId];
        if (seat.active) revert ClusterSeatAlreadyActive(tokenId);
        if (activeSeats >= maxNodes) revert ClusterMaxNodesReached(maxNodes);
        seat.active = true;
        ++activeSeats;
        emit SeatActivated(tokenId);
    }

    /// @notice The owner revokes a seat: it is burned, its record cleared and its instance freed. Its id, and so
    /// its overlay address, is never issued again.
    function revoke(uint256 tokenId) external onlyOwner {
        _burn(tokenId);
        emit SeatRevoked(tokenId);
    }

    // ---------------------------------------------------------- peer records

    /// @notice Stores a seat's peer record. Anyone may send it; the record proves itself (see the contract doc).
    /// @dev Checks, each with its own error: the seat is active and bound; the nonce is fresh; the fields are
    /// well-formed; the app id is allowed; the purpose names the seat's instance; the app key signed the
    /// derived key; the KMS root signed the app key; the derived key signed the record; and no other seat
    /// uses the WireGuard key.
    function registerPeer(PeerRecordInput calldata record, DstackProof calldata proof, bytes calldata recordSignature)
        external
    {
        uint256 tokenId = record.tokenId;
        _requireOwned(tokenId);
        Seat storage seat = _seats[tokenId];
        if (!seat.active) revert ClusterSeatInactive(tokenId);
        string memory instanceId = seat.instanceId;
        if (bytes(instanceId).length == 0) revert ClusterSeatNotBound(tokenId);
        if (record.nonce <= seat.nonce) revert RegistryStaleNonce(tokenId, seat.nonce, record.nonce);
        _checkRecordFields(record);
        _checkDstackChain(proof, instanceId);

        bytes32 structHash = keccak256(
            abi.encode(
                PEER_RECORD_TYPEHASH,
                tokenId,
                keccak256(bytes(instanceId)),
                record.wgPublicKey,
                keccak256(bytes(record.endpoint)),
                keccak256(bytes(record.gatewayUrl)),
                record.nonce
            )
        );
        address derived = DstackChain.toAddress(proof.derivedPublicKey);
        address signer = DstackChain.recover(_hashTypedDataV4(structHash), recordSignature);
        if (signer != derived) revert RegistryRecordSignatureInvalid(derived, signer);

        bytes32 key = record.wgPublicKey;
        if (key != bytes32(0)) {
            uint256 holder = _tokenOfWgKey[key];
            if (holder != 0 && holder != tokenId) revert RegistryWireGuardKeyInUse(key, holder);
        }
        if (seat.wgPublicKey != key) {
            if (seat.wgPublicKey != bytes32(0)) delete _tokenOfWgKey[seat.wgPublicKey];
            if (key != bytes32(0)) _tokenOfWgKey[key] = tokenId;
            seat.wgPublicKey = key;
        }
        seat.nonce = record.nonce;
        seat.registeredBlock = uint64(block.number);
        seat.endpoint = record.endpoint;
        seat.gatewayUrl = record.gatewayUrl;
        emit PeerRegistered(
            tokenId,
            instanceId,
            key,
            record.endpoint,
            record.gatewayUrl,
            record.nonce,
            proof,
            recordSignature
        );
    }

    /// @notice The EIP-712 digest the derived key signs for a record of `tokenId`'s bound instance.
    function recordDigest(PeerRecordInput calldata record, string calldata instanceId) external view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    PEER_RECORD_TYPEHASH,
                    record.tokenId,
                    keccak256(bytes(instanceId)),
                    record.wgPublicKey,
                    keccak256(bytes(record.endpoint)),
                    keccak256(bytes(record.gatewayUrl)),
                    record.nonce
                )
            )
        );
    }

    // ------------------------------------------------------------------ views

    /// @notice Every active seat that has a peer record, in token-id order.
    function getPeers() external view returns (Peer[] memory peers) {
        uint256 last = lastTokenId;
        uint256 count;
        for (uint256 id = 1; id <= last; ++id) {
            if (_hasRecord(id)) ++count;
        }
        peers = new Peer[](count);
        uint256 j;
        for (uint256 id = 1; id <= last; ++id) {
            if (_hasRecord(id)) peers[j++] = _peer(id);
        }
    }

    /// @notice One seat's record; `registeredBlock` is 0 when it has none.
    function getPeer(uint256 tokenId) external view returns (Peer memory) {
        _requireOwned(tokenId);
        return _peer(tokenId);
    }

    /// @notice A seat's state: whether it is active, its bound instance, and its last record nonce.
    function seatInfo(uint256 tokenId)
        external
        view
        returns (address holder, bool active, string memory instanceId, uint64 nonce, uint64 registeredBlock)
    {
        holder = _requireOwned(tokenId);
        Seat storage seat = _seats[tokenId];
        return (holder, seat.active, seat.instanceId, seat.nonce, seat.registeredBlock);
    }

    /// @notice The seat bound to `instanceId`, or 0.
    function tokenOfInstance(string calldata instanceId) external view returns (uint256) {
        return _tokenOfInstance[keccak256(bytes(instanceId))];
    }

    /// @notice The overlay IPv4 address of seat `tokenId`, as a big-endian integer.
    function overlayAddress(uint256 tokenId) public view returns (uint32) {
        uint256 capacity = seatCapacity();
        if (tokenId == 0 || tokenId > capacity) revert ClusterPrefixExhausted(tokenId, capacity);
        return network + uint32(tokenId);
    }

    /// @notice The mesh prefix.
    function meshPrefix() external view returns (uint32, uint8) {
        return (network, prefixLength);
    }

    /// @notice How many seat ids the prefix holds: every host address but the network and broadcast ones.
    function seatCapacity() public view returns (uint256) {
        return _hostMask(prefixLength) - 1;
    }

    /// @notice For the earlier prototype's SDK: each active peer's gateway URL, or its endpoint where it has none.
    function getPeerEndpoints() external view returns (string[] memory endpoints) {
        uint256 last = lastTokenId;
        uint256 count;
        for (uint256 id = 1; id <= last; ++id) {
            if (_hasRecord(id)) ++count;
        }
        endpoints = new string[](count);
        uint256 j;
        for (uint256 id = 1; id <= last; ++id) {
            if (!_hasRecord(id)) continue;
            Seat storage seat = _seats[id];
            endpoints[j++] = bytes(seat.gatewayUrl).length != 0 ? seat.gatewayUrl : seat.endpoint;
        }
    }

    function allowedAppIds() external view returns (address[] memory) {
        return _appIds;
    }

    function baseDomains() external view returns (string[] memory) {
        return _baseDomains;
    }

    // ------------------------------------------------------------ owner config

    function setMaxNodes(uint256 maxNodes_) external onlyOwner {
        maxNodes = maxNodes_;
        emit MaxNodesUpdated(maxNodes_);
    }

    function setPublicMinting(bool enabled) external onlyOwner {
        publicMinting = enabled;
        emit PublicMintingUpdated(enabled);
    }

    function setMintPrice(uint256 price) external onlyOwner {
        mintPrice = price;
        emit MintPriceUpdated(price);
    }

    /// @notice Re-pins the KMS root. Records proven under the old root stay until they are re-registered;
    /// agents re-verify records against the root they pin.
    function setKmsRoot(address newRoot) external onlyOwner {
        if (newRoot == address(0)) revert ClusterInvalidKmsRoot();
        emit KmsRootUpdated(kmsRoot, newRoot);
        kmsRoot = newRoot;
    }

    function setAppId(address appId, bool allowed) external onlyOwner {
        _setAppId(appId, allowed);
    }

    function setProductionMode(bool enabled) external onlyOwner {
        productionMode = enabled;
        emit ProductionModeUpdated(enabled);
    }

    /// @notice Allows gateway URLs under `domain` in production mode. Lowercase DNS names only.
    function addBaseDomain(string calldata domain) external onlyOwner {
        if (!RecordFormat.isDomain(domain)) revert ClusterInvalidDomain(domain);
        bytes32 h = keccak256(bytes(domain));
        if (_isBaseDomain[h]) return;
        _isBaseDomain[h] = true;
        _baseDomains.push(domain);
        emit BaseDomainAdded(domain);
    }

    function removeBaseDomain(string calldata domain) external onlyOwner {
        bytes32 h = keccak256(bytes(domain));
        if (!_isBaseDomain[h]) revert ClusterUnknownDomain(domain);
        delete _isBaseDomain[h];
        uint256 n = _baseDomains.length;
        for (uint256 i = 0; i < n; ++i) {
            if (keccak256(bytes(_baseDomains[i])) == h) {
                _baseDomains[i] = _baseDomains[n - 1];
                _baseDomains.pop();
                break;
            }
        }
        emit BaseDomainRemoved(domain);
    }

    /// @notice Sends what public minting collected to `to`.
    function withdraw(address payable to) external onlyOwner {
        uint256 amount = address(this).balance;
        emit Withdrawn(to, amount);
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert ClusterWithdrawFailed(to, amount);
    }

    // --------------------------------------------------------------- app auth

    function setComposeHash(bytes32 composeHash, bool allowed) external onlyOwner {
        isComposeHashAllowed[composeHash] = allowed;
        emit ComposeHashUpdated(composeHash, allowed);
    }

    function setDevice(bytes32 deviceId, bool allowed) external onlyOwner {
        isDeviceAllowed[deviceId] = allowed;
        emit DeviceUpdated(deviceId, allowed);
    }

    /// @notice `requireBoundInstance` is off by default because of a chicken-and-egg problem: a real CVM's
    /// instance id is random on first boot and only persisted once the KMS has released its keys. A boot the
    /// KMS refuses therefore gets a new instance id on the next attempt, so it cannot be bound beforehand.
    /// Turn it on only for instances whose ids are already known (for example after a first, allowed boot).
    function setAppAuthPolicy(bool requireAllowedDevice_, bool requireBoundInstance_) external onlyOwner {
        requireAllowedDevice = requireAllowedDevice_;
        requireBoundInstance = requireBoundInstance_;
        emit AppAuthPolicyUpdated(requireAllowedDevice_, requireBoundInstance_);
    }

    /// @inheritdoc IAppAuth
    function isAppAllowed(AppBootInfo calldata bootInfo) external view returns (bool isAllowed, string memory reason) {
        if (bootInfo.appId != address(this) && !isAllowedAppId[bootInfo.appId]) return (false, "App id not allowed");
        if (!isComposeHashAllowed[bootInfo.composeHash]) return (false, "Compose hash not allowed");
        if (requireAllowedDevice && !isDeviceAllowed[bootInfo.deviceId]) return (false, "Device not allowed");
        if (requireBoundInstance) {
            string memory id = _instanceIdString(bootInfo.instanceId);
            uint256 tokenId = _tokenOfInstance[keccak256(bytes(id))];
            if (tokenId == 0 || !_seats[tokenId].active) return (false, "Instance not bound to an active seat");
        }
        return (true, "");
    }

    function supportsInterface(bytes4 interfaceId) public view override(ERC721, IERC165) returns (bool) {
        return interfaceId == type(IAppAuth).interfaceId || super.supportsInterface(interfaceId);
    }

    // ---------------------------------------------------------- leader election

    /// @notice With no leader, makes the lowest-id active seat that is under the no-confidence threshold the
    /// leader. Any active seat may call it.
    function electLeader(uint256 callerTokenId) external {
        _requireActiveHolder(callerTokenId);
        if (leaderTokenId != 0) revert LeaderAlreadyElected(leaderTokenId);
        uint256 next = _lowestEligible();
        if (next == 0) revert LeaderNoEligibleSeat();
        leaderTokenId = next;
        emit LeaderElected(next);
    }

    /// @notice Seat `voterTokenId` votes no-confidence against `targetTokenId`, replacing any earlier vote.
    /// With n active seats and f = ⌊(n−1)/2⌋, f+1 votes against the leader replace it.
    function castVote(uint256 voterTokenId, uint256 targetTokenId) external {
        _requireActiveHolder(voterTokenId);
        if (voterTokenId == targetTokenId) revert LeaderCannotVoteForSelf(voterTokenId);
        if (!_isActive(targetTokenId)) revert ClusterSeatInactive(targetTokenId);
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

    /// @notice Withdraws seat `voterTokenId`'s vote.
    function withdrawVote(uint256 voterTokenId) external {
        _requireHolder(voterTokenId);
        uint256 previous = voteOf[voterTokenId];
        if (previous == 0) revert LeaderNoVote(voterTokenId);
        _withdrawVote(voterTokenId, previous);
    }

    /// @notice f + 1 for the current number of active seats.
    function voteThreshold() public view returns (uint256) {
        uint256 n = activeSeats;
        return n == 0 ? 1 : (n - 1) / 2 + 1;
    }

    // --------------------------------------------------------------- internal

    function _update(address to, uint256 tokenId, address auth) internal override returns (address from) {
        from = super._update(to, tokenId, auth);
        if (from == address(0)) {
            _seats[tokenId].active = true;
            ++activeSeats;
            emit SeatMinted(tokenId, to, network + uint32(tokenId));
        } else if (to == address(0)) {
            Seat storage seat = _seats[tokenId];
            _clearRecord(tokenId, ClearReason.Revoked);
            if (seat.active) {
                --activeSeats;
                _leaveElection(tokenId);
            }
            string memory instanceId = seat.instanceId;
            if (bytes(instanceId).length != 0) {
                delete _tokenOfInstance[keccak256(bytes(instanceId))];
                emit InstanceUnbound(tokenId, instanceId);
            }
            delete _seats[tokenId];
        } else if (from != to) {
            // The instance stays bound (the new holder may rebind it), but the old record goes: the new holder
            // must not inherit an endpoint they did not register.
            _clearRecord(tokenId, ClearReason.Transferred);
        }
    }

    function _bind(uint256 tokenId, string calldata instanceId) private {
        if (!RecordFormat.isInstanceId(instanceId)) revert ClusterInvalidInstanceId(instanceId);
        bytes32 h = keccak256(bytes(instanceId));
        uint256 bound = _tokenOfInstance[h];
        if (bound != 0) revert ClusterInstanceAlreadyBound(instanceId, bound);
        Seat storage seat = _seats[tokenId];
        string memory previous = seat.instanceId;
        if (bytes(previous).length != 0) {
            delete _tokenOfInstance[keccak256(bytes(previous))];
            _clearRecord(tokenId, ClearReason.Rebound);
            emit InstanceUnbound(tokenId, previous);
        }
        seat.instanceId = instanceId;
        _tokenOfInstance[h] = tokenId;
        emit InstanceBound(tokenId, instanceId);
    }

    function _clearRecord(uint256 tokenId, ClearReason reason) private {
        Seat storage seat = _seats[tokenId];
        if (seat.registeredBlock == 0) return;
        if (seat.wgPublicKey != bytes32(0)) delete _tokenOfWgKey[seat.wgPublicKey];
        delete seat.wgPublicKey;
        delete seat.endpoint;
        delete seat.gatewayUrl;
        seat.registeredBlock = 0;
        emit PeerCleared(tokenId, reason);
    }

    function _checkRecordFields(PeerRecordInput calldata record) private view {
        uint256 tokenId = record.tokenId;
        bool hasKey = record.wgPublicKey != bytes32(0);
        bool hasEndpoint = bytes(record.endpoint).length != 0;
        bool hasUrl = bytes(record.gatewayUrl).length != 0;
        if (!hasKey && !hasUrl) revert RegistryEmptyRecord(tokenId);
        if (hasEndpoint) {
            if (!hasKey) revert RegistryEndpointWithoutKey(tokenId);
            if (!record.endpoint.isEndpoint()) revert RegistryInvalidEndpoint(record.endpoint);
        }
        if (hasUrl) {
            (bool ok, bool https, bytes calldata host) = RecordFormat.parseUrl(record.gatewayUrl);
            if (!ok) revert RegistryInvalidGatewayUrl(record.gatewayUrl);
            if (productionMode) {
                if (!https) revert RegistryGatewayUrlNotHttps(record.gatewayUrl);
                if (!_isAllowedHost(host)) revert RegistryGatewayDomainNotAllowed(record.gatewayUrl);
            }
        }
    }

    function _checkDstackChain(DstackProof calldata proof, string memory instanceId) private view {
        if (proof.derivedPublicKey.length != DstackChain.PUBLIC_KEY_LENGTH) {
            revert RegistryInvalidKeyLength(proof.derivedPublicKey.length);
        }
        if (proof.appPublicKey.length != DstackChain.PUBLIC_KEY_LENGTH) {
            revert RegistryInvalidKeyLength(proof.appPublicKey.length);
        }
        if (!isAllowedAppId[proof.appId]) revert RegistryAppIdNotAllowed(proof.appId);
        string memory expected = string.concat(PURPOSE_PREFIX, instanceId);
        if (keccak256(bytes(proof.purpose)) != keccak256(bytes(expected))) {
            revert RegistryPurposeMismatch(expected, proof.purpose);
        }
        address appKey = DstackChain.toAddress(proof.appPublicKey);
        address recovered =
            DstackChain.recover(DstackChain.appMessageHash(proof.purpose, proof.derivedPublicKey), proof.appSignature);
        if (recovered != appKey) revert RegistryAppSignatureInvalid(appKey, recovered);
        recovered = DstackChain.recover(DstackChain.kmsMessageHash(proof.appId, proof.appPublicKey), proof.kmsSignature);
        if (recovered != kmsRoot) revert RegistryKmsSignatureInvalid(kmsRoot, recovered);
    }

    function _isAllowedHost(bytes calldata host) private view returns (bool) {
        uint256 n = _baseDomains.length;
        for (uint256 i = 0; i < n; ++i) {
            if (RecordFormat.isUnderDomain(host, bytes(_baseDomains[i]))) return true;
        }
        return false;
    }

    function _setAppId(address appId, bool allowed) private {
        if (appId == address(0)) revert ClusterInvalidAppId();
        if (isAllowedAppId[appId] == allowed) return;
        isAllowedAppId[appId] = allowed;
        if (allowed) {
            _appIds.push(appId);
        } else {
            uint256 n = _appIds.length;
            for (uint256 i = 0; i < n; ++i) {
                if (_appIds[i] == appId) {
                    _appIds[i] = _appIds[n - 1];
                    _appIds.pop();
                    break;
                }
            }
        }
        emit AppIdUpdated(appId, allowed);
    }

    function _leaveElection(uint256 tokenId) private {
        uint256 previous = voteOf[tokenId];
        if (previous != 0) _withdrawVote(tokenId, previous);
        if (leaderTokenId == tokenId) {
            leaderTokenId = 0;
            emit LeaderCleared(tokenId);
        } else {
            // One fewer active seat lowers the threshold, which may now unseat the leader.
            _checkLeader();
        }
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
        leaderTokenId = next;
        emit LeaderReplaced(leader, next, votes);
    }

    /// @dev Bounded by the prefix capacity (254 seats in a /24).
    function _lowestEligible() private view returns (uint256) {
        uint256 threshold = voteThreshold();
        uint256 last = lastTokenId;
        for (uint256 id = 1; id <= last; ++id) {
            if (_isActive(id) && votesAgainst[id] < threshold) return id;
        }
        return 0;
    }

    function _requireHolder(uint256 tokenId) private view {
        address holder = _requireOwned(tokenId);
        if (!_isAuthorized(holder, msg.sender, tokenId)) revert ClusterNotSeatHolder(tokenId, msg.sender);
    }

    function _requireActiveHolder(uint256 tokenId) private view {
        _requireHolder(tokenId);
        if (!_seats[tokenId].active) revert ClusterSeatInactive(tokenId);
    }

    function _isActive(uint256 tokenId) private view returns (bool) {
        return _seats[tokenId].active;
    }

    function _hasRecord(uint256 tokenId) private view returns (bool) {
        Seat storage seat = _seats[tokenId];
        return seat.active && seat.registeredBlock != 0;
    }

    function _peer(uint256 tokenId) private view returns (Peer memory) {
        Seat storage seat = _seats[tokenId];
        return Peer({
            tokenId: tokenId,
            instanceId: seat.instanceId,
            wgPublicKey: seat.wgPublicKey,
            endpoint: seat.endpoint,
            gatewayUrl: seat.gatewayUrl,
            nonce: seat.nonce,
            registeredBlock: seat.registeredBlock,
            overlayAddress: network + uint32(tokenId)
        });
    }

    function _hostMask(uint8 length) private pure returns (uint256) {
        return (uint256(1) << (32 - length)) - 1;
    }

    /// @dev dstack passes the instance id as an address; seats store it as 40 lowercase hex characters.
    function _instanceIdString(address instanceId) private pure returns (string memory) {
        bytes memory s = bytes(Strings.toHexString(instanceId));
        bytes memory out = new bytes(40);
        for (uint256 i = 0; i < 40; ++i) {
            out[i] = s[i + 2];
        }
        return string(out);
    }
}
