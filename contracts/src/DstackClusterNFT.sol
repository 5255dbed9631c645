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
import {DstackClusterElection, IClusterSeats} from "./DstackClusterElection.sol";

/// @title DstackClusterNFT: the seats, the peer registry and the dstack app-auth hook of one dstack-mesh cluster.
/// @notice A seat is an ERC721 token. Token id N owns overlay address `network + N` for good: ids start at 1
/// and are never reissued. The holder binds the seat to one dstack instance; that instance's agent then
/// registers a peer record (WireGuard key, UDP endpoint, TLS-gateway URL) that anyone may relay, because the
/// record carries its own proof:
///  1. dstack's signature chain for a key derived under the purpose `"dstack-mesh-peer:" ‖ instanceId`,
///     rooted at the pinned KMS root and an allowed app id (see DstackChain);
///  2. an EIP-712 signature by that derived key over the whole record, under this contract's domain
///     (name "DstackClusterNFT", version "1", chain id, this address), with a nonce above the seat's last.
/// The contract address is the cluster's identity. Its leader election is a contract of its own, made here at
/// deployment (see `election`).
contract DstackClusterNFT is ERC721, Ownable2Step, EIP712, IAppAuth, IClusterSeats {
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
        // Packed into the slot above, which every registration writes anyway, so they cost no extra slot:
        uint32 recordIndex; // the seat's position in _recorded while it has a record, else 0
        uint32 appNumber; // the app the seat serves (see AppEntry), set by its first registration; 0 before
        bytes32 wgPublicKey;
        string instanceId;
        string endpoint;
        string gatewayUrl;
        // The derived key of the seat's record: the node itself, which may vote and elect for the seat while
        // the record stands. Written only when it changes (a first record, or one after a rebind).
        address node;
    }

    // -------------------------------------------------------------- constants

    /// @notice The purpose an agent passes to dstack's GetKey; the instance id (40 lowercase hex) follows it.
    string public constant PURPOSE_PREFIX = "dstack-mesh-peer:";

    bytes32 public constant PEER_RECORD_TYPEHASH = keccak256(
        "PeerRecord(uint256 tokenId,string instanceId,bytes32 wgPublicKey,string endpoint,string gatewayUrl,uint64 nonce)"
    );

    /// @notice What an instance's derived key signs to let the holder of `tokenId` bind the seat to it.
    bytes32 public constant BIND_CONSENT_TYPEHASH =
        keccak256("BindConsent(uint256 tokenId,string instanceId,address holder)");

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
    /// @dev Whether an app id is allowed, and its number: every app id ever allowed gets one for good (from 1),
    /// so that a seat names its app in 4 bytes. One slot, so a registration reads both at once.
    struct AppEntry {
        bool allowed;
        uint32 number;
    }

    mapping(address appId => AppEntry) private _apps;
    address[] private _appOfNumber;

    /// @dev The token ids of the seats that have a record, so reading them all costs what the records cost,
    /// not what every seat ever minted does. Position 0 holds a non-zero placeholder, so positions start at 1
    /// and neither the length slot nor the first data slot (eight ids share one) ever goes from zero, which
    /// would cost a registration 20k gas.
    uint32[] private _recorded;
    uint32 private constant RECORDED_PLACEHOLDER = type(uint32).max;

    string[] private _baseDomains;
    mapping(bytes32 domainHash => bool) private _isBaseDomain;

    mapping(bytes32 composeHash => bool) public isComposeHashAllowed;
    mapping(bytes32 deviceId => bool) public isDeviceAllowed;
    bool public requireAllowedDevice;
    bool public requireBoundInstance;

    /// @notice The cluster's leader election, made by this contract's constructor.
    DstackClusterElection public immutable election;

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
    /// @notice The owner let a seat serve another app: its next registration may come from any allowed app.
    event SeatAppReset(uint256 indexed tokenId, address previousAppId);

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
    error ClusterBindNeedsConsent(string instanceId);
    error ClusterBindConsentInvalid(address derivedKey, address recovered);

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
    /// @notice `field` is not a 65-byte signature in its one accepted encoding: v ∈ {0,1} for dstack's
    /// `appSignature` and `kmsSignature`, v ∈ {27,28} for the EIP-712 `recordSignature` and
    /// `consentSignature`, low s, non-zero r and s.
    error RegistryMalformedSignature(string field);
    error RegistrySeatAppMismatch(uint256 tokenId, address seatAppId, address appId);

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
        _recorded.push(RECORDED_PLACEHOLDER);
        election = new DstackClusterElection(this);
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
        if (bytes(instanceId).length != 0) {
            // Instance ids are public: binding one at mint is the owner's call alone (see bindInstance).
            if (msg.sender != owner()) revert ClusterBindNeedsConsent(instanceId);
            _bind(tokenId, instanceId);
        }
    }

    /// @notice Binds a seat to a dstack instance, or rebinds it to another; a rebind clears the seat's record.
    /// Instance ids are public, so a holder other than the owner needs the instance's consent: `proof` is the
    /// instance's dstack chain for its peer key (as in registerPeer), and `consentSignature` that key's
    /// EIP-712 signature over `BindConsent(tokenId, instanceId, holder)` (`p2p-agent identity --bind-token`
    /// prints both). Without it anyone could bind another operator's node to their own seat, ahead of the
    /// owner's mint for it, and so control that node's membership. The owner binds its own seats without one.
    /// @dev Requirements: the caller holds the seat or is approved for it; the seat is active; `instanceId` is 40
    /// lowercase hex characters and not bound to any seat; the consent, unless the caller is the owner.
    function bindInstance(
        uint256 tokenId,
        string calldata instanceId,
        DstackProof calldata proof,
        bytes calldata consentSignature
    ) external {
        address holder = _requireHolder(tokenId);
        if (!_seats[tokenId].active) revert ClusterSeatInactive(tokenId);
        if (!RecordFormat.isInstanceId(instanceId)) revert ClusterInvalidInstanceId(instanceId);
        if (msg.sender != owner()) {
            if (consentSignature.length == 0) revert ClusterBindNeedsConsent(instanceId);
            _checkBindConsent(tokenId, instanceId, holder, proof, consentSignature);
        }
        _bind(tokenId, instanceId);
    }

    /// @notice The EIP-712 digest an instance's derived key signs to consent to `holder` binding `tokenId` to it.
    function bindConsentDigest(uint256 tokenId, string calldata instanceId, address holder)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(BIND_CONSENT_TYPEHASH, tokenId, keccak256(bytes(instanceId)), holder)));
    }

    /// @notice Lets seat `tokenId` serve another app: its next record may come from any allowed app, which it
    /// then serves. Records from then on are checked against the new app.
    function resetSeatApp(uint256 tokenId) external onlyOwner {
        _requireOwned(tokenId);
        Seat storage seat = _seats[tokenId];
        uint32 n = seat.appNumber;
        seat.appNumber = 0;
        emit SeatAppReset(tokenId, n == 0 ? address(0) : _appOfNumber[n - 1]);
    }

    /// @notice Takes a seat out of the mesh (it stops counting towards `maxNodes`) and clears its record.
    function deactivate(uint256 tokenId) external {
        _requireHolder(tokenId);
        Seat storage seat = _seats[tokenId];
        if (!seat.active) revert ClusterSeatInactive(tokenId);
        seat.active = false;
        --activeSeats;
        _clearRecord(tokenId, ClearReason.Deactivated);
        election.seatLeft(tokenId);
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
        uint32 app = _checkDstackChain(proof, instanceId);
        _checkSeatApp(tokenId, seat, proof.appId, app);

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
        address signer = _recover(_hashTypedDataV4(structHash), recordSignature, DstackChain.V_ETHEREUM, "recordSignature");
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
        if (seat.registeredBlock == 0) {
            _recorded.push(uint32(tokenId));
            seat.recordIndex = uint32(_recorded.length - 1);
        }
        if (seat.node != derived) seat.node = derived;
        seat.appNumber = app;
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

    /// @notice The node of seat `tokenId`: the derived key of its record, which may vote and elect for the
    /// seat; zero while the seat has no record.
    function nodeOf(uint256 tokenId) external view returns (address) {
        Seat storage seat = _seats[tokenId];
        return seat.registeredBlock == 0 ? address(0) : seat.node;
    }

    /// @notice Every seat that has a peer record (only active seats have one), in no particular order. Its cost
    /// grows with the number of records, not of seats ever minted; use getPeersPage to bound each call.
    function getPeers() external view returns (Peer[] memory peers) {
        (peers,) = getPeersPage(0, type(uint256).max);
    }

    /// @notice Up to `limit` records from position `offset` of the record list, and how many records there are.
    /// Read every page at one block number to get a consistent set: a clear moves the last record into the
    /// cleared one's position.
    function getPeersPage(uint256 offset, uint256 limit) public view returns (Peer[] memory page, uint256 total) {
        total = _recorded.length - 1;
        if (offset >= total) return (new Peer[](0), total);
        uint256 count = total - offset < limit ? total - offset : limit;
        page = new Peer[](count);
        for (uint256 i = 0; i < count; ++i) {
            page[i] = _peer(_recorded[offset + 1 + i]);
        }
    }

    /// @notice One seat's record; `registeredBlock` is 0 when it has none.
    function getPeer(uint256 tokenId) external view returns (Peer memory) {
        _requireOwned(tokenId);
        return _peer(tokenId);
    }

    /// @notice A seat's state: whether it is active, its bound instance, its last record nonce, and the app it
    /// serves (zero until its first registration, or after the owner reset it).
    function seatInfo(uint256 tokenId)
        external
        view
        returns (
            address holder,
            bool active,
            string memory instanceId,
            uint64 nonce,
            uint64 registeredBlock,
            address appId
        )
    {
        holder = _requireOwned(tokenId);
        Seat storage seat = _seats[tokenId];
        return (holder, seat.active, seat.instanceId, seat.nonce, seat.registeredBlock, _appOf(seat));
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
        uint256 count = _recorded.length - 1;
        endpoints = new string[](count);
        for (uint256 i = 0; i < count; ++i) {
            Seat storage seat = _seats[_recorded[i + 1]];
            endpoints[i] = bytes(seat.gatewayUrl).length != 0 ? seat.gatewayUrl : seat.endpoint;
        }
    }

    function isAllowedAppId(address appId) external view returns (bool) {
        return _apps[appId].allowed;
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
        if (bootInfo.appId != address(this) && !_apps[bootInfo.appId].allowed) return (false, "App id not allowed");
        if (!isComposeHashAllowed[bootInfo.composeHash]) return (false, "Compose hash not allowed");
        if (requireAllowedDevice && !isDeviceAllowed[bootInfo.deviceId]) return (false, "Device not allowed");
        if (requireBoundInstance) {
            string memory id = _instanceIdString(bootInfo.instanceId);
            uint256 tokenId = _tokenOfInstance[keccak256(bytes(id))];
            if (tokenId == 0 || !_seats[tokenId].active) return (false, "Instance not bound to an active seat");
            address seatApp = _appOf(_seats[tokenId]);
            if (seatApp != address(0) && seatApp != bootInfo.appId) return (false, "Instance's seat serves another app");
        }
        return (true, "");
    }

    function supportsInterface(bytes4 interfaceId) public view override(ERC721, IERC165) returns (bool) {
        return interfaceId == type(IAppAuth).interfaceId || super.supportsInterface(interfaceId);
    }

    // ------------------------------------------------------- for the election

    /// @inheritdoc IClusterSeats
    function isActiveSeat(uint256 tokenId) external view returns (bool) {
        return _seats[tokenId].active;
    }

    /// @inheritdoc IClusterSeats
    /// @dev A cleared record (rebind, transfer, deactivation, revocation) takes the node's right away with it.
    function canActFor(uint256 tokenId, address account) external view returns (bool) {
        address holder = _ownerOf(tokenId);
        if (holder == address(0)) return false;
        Seat storage seat = _seats[tokenId];
        if (seat.registeredBlock != 0 && seat.node == account) return true;
        return _isAuthorized(holder, account, tokenId);
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
            bool wasActive = seat.active;
            string memory instanceId = seat.instanceId;
            if (bytes(instanceId).length != 0) {
                delete _tokenOfInstance[keccak256(bytes(instanceId))];
                emit InstanceUnbound(tokenId, instanceId);
            }
            delete _seats[tokenId];
            // Counted out and forgotten first: the election reads both back.
            if (wasActive) {
                --activeSeats;
                election.seatLeft(tokenId);
            }
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
        uint256 position = seat.recordIndex;
        uint256 last = _recorded.length - 1;
        if (position != last) {
            uint32 moved = _recorded[last];
            _recorded[position] = moved;
            _seats[moved].recordIndex = uint32(position);
        }
        _recorded.pop();
        seat.recordIndex = 0;
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

    /// @dev Returns the proof's app number.
    function _checkDstackChain(DstackProof calldata proof, string memory instanceId)
        private
        view
        returns (uint32 app)
    {
        if (proof.derivedPublicKey.length != DstackChain.PUBLIC_KEY_LENGTH) {
            revert RegistryInvalidKeyLength(proof.derivedPublicKey.length);
        }
        if (proof.appPublicKey.length != DstackChain.PUBLIC_KEY_LENGTH) {
            revert RegistryInvalidKeyLength(proof.appPublicKey.length);
        }
        AppEntry memory entry = _apps[proof.appId];
        if (!entry.allowed) revert RegistryAppIdNotAllowed(proof.appId);
        app = entry.number;
        string memory expected = string.concat(PURPOSE_PREFIX, instanceId);
        if (keccak256(bytes(proof.purpose)) != keccak256(bytes(expected))) {
            revert RegistryPurposeMismatch(expected, proof.purpose);
        }
        address appKey = DstackChain.toAddress(proof.appPublicKey);
        address recovered = _recover(
            DstackChain.appMessageHash(proof.purpose, proof.derivedPublicKey),
            proof.appSignature,
            DstackChain.V_DSTACK,
            "appSignature"
        );
        if (recovered != appKey) revert RegistryAppSignatureInvalid(appKey, recovered);
        recovered = _recover(
            DstackChain.kmsMessageHash(proof.appId, proof.appPublicKey),
            proof.kmsSignature,
            DstackChain.V_DSTACK,
            "kmsSignature"
        );
        if (recovered != kmsRoot) revert RegistryKmsSignatureInvalid(kmsRoot, recovered);
    }

    function _recover(bytes32 digest, bytes calldata signature, uint8 vBase, string memory field)
        private
        pure
        returns (address signer)
    {
        signer = DstackChain.recover(digest, signature, vBase);
        if (signer == address(0)) revert RegistryMalformedSignature(field);
    }

    /// @dev The app a seat serves is the one of its first record: `app` (number of `appId`) must be it.
    function _checkSeatApp(uint256 tokenId, Seat storage seat, address appId, uint32 app) private view {
        uint32 pinned = seat.appNumber;
        if (pinned != 0 && pinned != app) revert RegistrySeatAppMismatch(tokenId, _appOfNumber[pinned - 1], appId);
    }

    function _checkBindConsent(
        uint256 tokenId,
        string calldata instanceId,
        address holder,
        DstackProof calldata proof,
        bytes calldata consentSignature
    ) private view {
        uint32 app = _checkDstackChain(proof, instanceId);
        _checkSeatApp(tokenId, _seats[tokenId], proof.appId, app);
        address derived = DstackChain.toAddress(proof.derivedPublicKey);
        address signer = _recover(
            bindConsentDigest(tokenId, instanceId, holder), consentSignature, DstackChain.V_ETHEREUM, "consentSignature"
        );
        if (signer != derived) revert ClusterBindConsentInvalid(derived, signer);
    }

    function _appOf(Seat storage seat) private view returns (address) {
        uint32 n = seat.appNumber;
        return n == 0 ? address(0) : _appOfNumber[n - 1];
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
        AppEntry storage entry = _apps[appId];
        if (entry.allowed == allowed) return;
        entry.allowed = allowed;
        if (allowed) {
            if (entry.number == 0) {
                _appOfNumber.push(appId);
                entry.number = uint32(_appOfNumber.length);
            }
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

    function _requireHolder(uint256 tokenId) private view returns (address holder) {
        holder = _requireOwned(tokenId);
        if (!_isAuthorized(holder, msg.sender, tokenId)) revert ClusterNotSeatHolder(tokenId, msg.sender);
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
