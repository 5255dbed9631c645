// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

import {DstackChain} from "./DstackChain.sol";
import {RecordFormat} from "./RecordFormat.sol";
import {DstackClusterElection, IClusterSeats} from "./DstackClusterElection.sol";
import {DstackClusterAppAuth, IClusterInstances} from "./DstackClusterAppAuth.sol";
import {DstackClusterSettings} from "./DstackClusterSettings.sol";
import {DstackClusterProofs, PURPOSE_PREFIX as PROOF_PURPOSE_PREFIX} from "./DstackClusterProofs.sol";

/// @title DstackClusterNFT: the seats, the peer registry and the dstack app-auth hook of one dstack-mesh cluster.
/// @notice A seat is an ERC721 token. Token id N owns overlay address `network + N` for good: ids start at 1
/// and are never reissued. The holder binds the seat to one dstack instance; that instance's agent then
/// registers a peer record (WireGuard key, UDP endpoint, TLS-gateway URL) that anyone may relay, because the
/// record carries its own proof:
///  1. dstack's signature chain under the purpose `"dstack-mesh-node:" ‖ instanceId ‖ ":" ‖ node`, rooted at the
///     pinned KMS root and an allowed app id (see DstackChain): an instance of the app vouched for the node key;
///  2. an EIP-712 signature by the seat's node key over the whole record, under this contract's domain
///     (name "DstackClusterNFT", version "1", chain id, this address), with a nonce above the seat's last.
/// The node key is made from randomness inside the CVM and never leaves its encrypted volume. dstack's GetKey
/// gives every instance of an app the same keys, so the chain alone proves only "an instance of the app": the
/// seat's node is fixed when its holder binds it (see NodeBinding), after checking the instance's TDX quote,
/// whose hash the seat keeps and whose bytes its InstanceBound event carries, for every agent to verify.
/// The contract address is the cluster's identity. Its leader election and its app auth (the allowlists of compose
/// hashes, devices and OS images, and dstack's isAppAllowed hook) are contracts of their own, made here at
/// deployment (see `election` and `appAuth`).
contract DstackClusterNFT is ERC721, DstackClusterSettings, EIP712, IClusterSeats {
    using RecordFormat for string;

    // ------------------------------------------------------------------ types

    /// @notice dstack's proof that `derivedPublicKey` was issued to an instance of an allowed app.
    struct DstackProof {
        bytes derivedPublicKey; // 64 bytes, uncompressed X ‖ Y
        bytes appPublicKey; // 64 bytes, uncompressed X ‖ Y
        bytes appSignature; // 65 bytes, r ‖ s ‖ v
        bytes kmsSignature; // 65 bytes, r ‖ s ‖ v
        address appId; // dstack app id (20 bytes)
        string purpose; // PURPOSE_PREFIX ‖ instanceId ‖ ":" ‖ node (40 lowercase hex)
    }

    /// @notice What binds a seat to one CVM instance: the instance's node key, made from randomness inside the CVM
    /// and kept on its own encrypted volume, so that no sibling instance of the app can derive it.
    /// `p2p-agent identity --bind-token` prints it in the instance; `meshctl bind` verifies it before sending.
    /// - `proof`: dstack's chain under the purpose naming the instance and the node: an instance of an allowed
    ///   app vouched for the node. It proves app membership, not which instance (any instance could sign it).
    /// - `evidence`: the TDX quote, whose report_data commits to the chain, this contract and the node, with its
    ///   RTMR3 event log, which names the instance, the app and the compose hash. The contract keeps its hash;
    ///   the event carries it for agents to verify (signature chain to Intel's root, TCB, OS and compose
    ///   allowlists, replay); `meshctl bind` checks that its event log names the instance and the app.
    /// - `consent`: the node key's EIP-712 signature over BindConsent(instanceId, node, holder).
    struct NodeBinding {
        string instanceId;
        address node;
        DstackProof proof;
        bytes evidence;
        bytes consent;
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
        address node; // the seat's bound node key; zero while unbound
        bytes32 evidenceHash; // keccak256 of the binding's evidence
        uint64 boundBlock; // block of the binding, whose InstanceBound event carries the evidence
        address holder; // who holds the seat (ownerOf), for operators' views
    }

    /// @notice Why a seat's peer record was cleared.
    enum ClearReason {
        Rebound,
        Transferred,
        Deactivated,
        Revoked,
        Disputed
    }

    struct Seat {
        bool active; // minted, not deactivated (burned seats have no Seat)
        uint64 nonce; // last accepted record nonce; never goes back, so old records cannot be replayed
        uint64 registeredBlock; // block of the current record, 0 when there is none
        // Packed into the slot above, which every registration writes anyway, so they cost no extra slot:
        uint32 recordIndex; // the seat's position in _recorded while it has a record, else 0
        uint32 appNumber; // the app the seat serves (see AppEntry), set by its binding; 0 before
        bytes32 wgPublicKey;
        string instanceId;
        string endpoint;
        string gatewayUrl;
        // The node key the seat is bound to: it alone signs the seat's records, and it may vote and elect for
        // the seat while a record stands. Packed with the binding's block.
        address node;
        uint64 boundBlock;
        bytes32 evidenceHash;
    }

    // -------------------------------------------------------------- constants

    /// @notice The purpose an agent passes to dstack's GetKey to have the app vouch for its node key; the instance
    /// id, ":" and the node's address (40 lowercase hex characters each, without 0x) follow it.
    string public constant PURPOSE_PREFIX = PROOF_PURPOSE_PREFIX;

    bytes32 public constant PEER_RECORD_TYPEHASH = keccak256(
        "PeerRecord(uint256 tokenId,string instanceId,bytes32 wgPublicKey,string endpoint,string gatewayUrl,uint64 nonce)"
    );

    /// @notice What a node key signs to let `holder` bind one of its seats to it. It names no seat: the seat is
    /// the one the holder binds, or mints, with it, so nobody guesses the next seat id, and the node finds its
    /// seat by its instance id.
    bytes32 public constant BIND_CONSENT_TYPEHASH =
        keccak256("BindConsent(string instanceId,address node,address holder)");

    // ------------------------------------------------------------------ state

    /// @notice The mesh prefix: overlay addresses are `network + tokenId` inside `network/prefixLength`.
    uint32 public immutable network;
    uint8 public immutable prefixLength;

    uint256 public lastTokenId;
    uint256 public activeSeats;

    mapping(uint256 tokenId => Seat) private _seats;
    mapping(bytes32 instanceHash => uint256 tokenId) private _tokenOfInstance;
    /// @dev Seat and instance pairs whose binding the members disputed away: keccak256(tokenId, instanceHash).
    mapping(bytes32 claim => bool) private _disputedClaim;
    mapping(bytes32 wgPublicKey => uint256 tokenId) private _tokenOfWgKey;

    /// @notice The holder a seatless node asked to bind it (see requestBinding), until a seat is bound to it.
    mapping(address node => address holder) public bindingRequestedOf;
    /// @notice The block of the latest BindingRequested event; each event names the one before, so the requests
    /// can be walked back from here without scanning the chain's logs.
    uint64 public lastBindingRequestBlock;


    /// @dev The token ids of the seats that have a record, so reading them all costs what the records cost,
    /// not what every seat ever minted does. Position 0 holds a non-zero placeholder, so positions start at 1
    /// and neither the length slot nor the first data slot (eight ids share one) ever goes from zero, which
    /// would cost a registration 20k gas.
    uint32[] private _recorded;
    uint32 private constant RECORDED_PLACEHOLDER = type(uint32).max;

    /// @notice The cluster's leader election, made by this contract's constructor.
    DstackClusterElection public immutable election;
    /// @notice Which CVMs the cluster trusts, made by this contract's constructor.
    DstackClusterAppAuth public immutable appAuth;
    /// @notice The stateless checks of proofs and records, made by this contract's constructor.
    DstackClusterProofs public immutable proofs;

    // ----------------------------------------------------------------- events

    event SeatMinted(uint256 indexed tokenId, address indexed to, uint32 overlayAddress);
    /// @notice Carries the binding's evidence, so that every agent can verify it without trusting its RPC.
    event InstanceBound(uint256 indexed tokenId, string instanceId, address node, bytes32 evidenceHash, bytes evidence);
    event InstanceUnbound(uint256 indexed tokenId, string instanceId);
    event DisputedClaimCleared(uint256 indexed tokenId, bytes32 instanceHash);
    /// @notice A seatless node asks `holder` to bind a seat to it, with everything a binding needs. `previousBlock`
    /// is the block of the request before this one (this block's own when it was in the same block).
    event BindingRequested(
        bytes32 indexed instanceHash,
        address indexed node,
        address indexed holder,
        uint64 previousBlock,
        NodeBinding binding
    );
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


    // ----------------------------------------------------------------- errors

    error ClusterInvalidPrefix(uint32 network, uint8 prefixLength);
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
    error ClusterBindNeedsEvidence(string instanceId);
    error ClusterBindConsentInvalid(address node, address recovered);
    error ClusterInvalidHolder();
    error ClusterClaimDisputed(string instanceId, uint256 tokenId);
    error ClusterOnlyElection(address caller);

    error RegistryStaleNonce(uint256 tokenId, uint64 lastNonce, uint64 nonce);
    error RegistryEmptyRecord(uint256 tokenId);
    error RegistryEndpointWithoutKey(uint256 tokenId);
    error RegistryInvalidEndpoint(string endpoint);
    error RegistryInvalidGatewayUrl(string gatewayUrl);
    error RegistryGatewayUrlNotHttps(string gatewayUrl);
    error RegistryGatewayDomainNotAllowed(string gatewayUrl);
    error RegistryInvalidKeyLength(uint256 length);
    /// @notice The proof's derived key is not a point of secp256k1.
    error RegistryKeyNotOnCurve();
    error RegistryAppIdNotAllowed(address appId);
    error RegistryPurposeMismatch(string expected, string purpose);
    error RegistryAppSignatureInvalid(address appKey, address recovered);
    error RegistryKmsSignatureInvalid(address kmsRoot, address recovered);
    error RegistryRecordSignatureInvalid(address node, address recovered);
    error RegistryWireGuardKeyInUse(bytes32 wgPublicKey, uint256 tokenId);
    /// @notice `field` is not a 65-byte signature in its one accepted encoding: v ∈ {0,1} for dstack's
    /// `appSignature` and `kmsSignature`, v ∈ {27,28} for the EIP-712 `recordSignature` and
    /// `consent`, low s, non-zero r and s.
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
    )
        ERC721("dstack-mesh cluster seat", "DMESH")
        DstackClusterSettings(initialOwner, kmsRoot_, appIds, maxNodes_)
        EIP712("DstackClusterNFT", "1")
    {
        // /31 and /32 have no host address left once the network and broadcast addresses are excluded.
        if (prefixLength_ < 8 || prefixLength_ > 30) revert ClusterInvalidPrefix(network_, prefixLength_);
        if (network_ & uint32(_hostMask(prefixLength_)) != 0) revert ClusterInvalidPrefix(network_, prefixLength_);
        network = network_;
        prefixLength = prefixLength_;
        _recorded.push(RECORDED_PLACEHOLDER);
        election = new DstackClusterElection(this);
        appAuth = new DstackClusterAppAuth(IClusterInstances(address(this)));
        proofs = new DstackClusterProofs();
    }

    // ------------------------------------------------------------------ seats

    /// @notice Mints the next seat to `to`, binding it with `binding` (see bindInstance) unless its instance id is
    /// empty. The consent is for holder `to`.
    /// @dev Requirements: the caller is the owner (free), or public minting is on and `msg.value == mintPrice`;
    /// fewer than `maxNodes` seats are active; the next id still fits the prefix.
    function mintNodeAccess(address to, NodeBinding calldata binding) external payable returns (uint256 tokenId) {
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
        if (bytes(binding.instanceId).length != 0) _bind(tokenId, to, binding);
    }

    /// @notice Binds a seat to a dstack instance's node key, or rebinds it (to another instance, or to the same
    /// instance's new node key after it lost its volume); a rebind clears the seat's record. Only the node key
    /// signs the seat's records from then on, so a sibling instance of the app, which can obtain every GetKey key
    /// this instance can, still cannot register for the seat.
    /// @dev Requirements: the caller holds the seat or is approved for it; the seat is active; the instance id is
    /// 40 lowercase hex characters and bound to no other seat; the chain verifies under the purpose naming the
    /// instance and the node, from the seat's app; the evidence is not empty; the node signed the consent.
    /// The contract does not verify the quote (a TDX quote costs far too much gas to verify on-chain): it keeps
    /// its hash and emits it for agents to verify.
    function bindInstance(uint256 tokenId, NodeBinding calldata binding) external {
        address holder = _requireHolder(tokenId);
        if (!_seats[tokenId].active) revert ClusterSeatInactive(tokenId);
        _bind(tokenId, holder, binding);
    }

    /// @notice A node that has no seat asks `holder` for one: the event carries its binding, for the holder to
    /// verify and send (`meshctl bind --instance`), so nobody needs a shell in the CVM to carry it out. Anyone
    /// may send it (the node key pays for itself, or a funded key relays it); only the node key's consent makes
    /// it valid, and only the holder it names can use it.
    /// A bound instance asks too, for its seat's holder to rebind it: with a new node key after it lost its
    /// volume, or with a quote of the image it was upgraded to.
    /// @dev Requirements: the instance id is 40 lowercase hex characters; the evidence is not empty; the chain verifies under the purpose naming the instance and the node, from an allowed app;
    /// the node consented to `holder`.
    function requestBinding(address holder, NodeBinding calldata binding) external {
        if (holder == address(0)) revert ClusterInvalidHolder();
        string calldata instanceId = binding.instanceId;
        if (!RecordFormat.isInstanceId(instanceId)) revert ClusterInvalidInstanceId(instanceId);
        bytes32 h = keccak256(bytes(instanceId));
        if (binding.evidence.length == 0) revert ClusterBindNeedsEvidence(instanceId);
        _checkDstackChain(binding.proof, instanceId, binding.node);
        _checkConsent(holder, binding);
        bindingRequestedOf[binding.node] = holder;
        uint64 previous = lastBindingRequestBlock;
        lastBindingRequestBlock = uint64(block.number);
        emit BindingRequested(h, binding.node, holder, previous, binding);
    }

    /// @notice The EIP-712 digest a node key signs to consent to `holder` binding a seat to it.
    function bindConsentDigest(string calldata instanceId, address node, address holder) public view returns (bytes32) {
        return
            _hashTypedDataV4(keccak256(abi.encode(BIND_CONSENT_TYPEHASH, keccak256(bytes(instanceId)), node, holder)));
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
        election.seatJoined(tokenId);
        emit SeatActivated(tokenId);
    }

    /// @notice The owner revokes a seat: it is burned, its record cleared and its instance freed. Its id, and so
    /// its overlay address, is never issued again.
    function revoke(uint256 tokenId) external onlyOwner {
        _burn(tokenId);
        emit SeatRevoked(tokenId);
    }

    /// @notice The owner lets seat `tokenId` claim `instanceId` again after the members released that claim by
    /// disputes (`ClusterClaimDisputed`): for a genuine node whose evidence looked forged (a verifier's bug,
    /// say), once the owner has checked it. Nothing else changes: a binding still needs its evidence.
    /// `instanceHash` is keccak256 of the instance id, as the claim is kept (`meshctl dispute clear` hashes it).
    function clearDisputedClaim(uint256 tokenId, bytes32 instanceHash) external onlyOwner {
        delete _disputedClaim[keccak256(abi.encode(tokenId, instanceHash))];
        emit DisputedClaimCleared(tokenId, instanceHash);
    }

    // ---------------------------------------------------------- peer records

    /// @notice Stores a seat's peer record. Anyone may send it; the record proves itself (see the contract doc).
    /// @dev Checks, each with its own error: the seat is active and bound; the nonce is fresh; the fields are
    /// well-formed; the app id is allowed; the purpose names the seat's instance and node; the app key signed
    /// the derived key; the KMS root signed the app key; the seat's node key signed the record; and no other
    /// seat uses the WireGuard key.
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
        address node = seat.node;
        uint32 app = _checkDstackChain(proof, instanceId, node);
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
        address signer =
            _recover(_hashTypedDataV4(structHash), recordSignature, DstackChain.V_ETHEREUM, "recordSignature");
        if (signer != node) revert RegistryRecordSignatureInvalid(node, signer);

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
        seat.appNumber = app;
        seat.nonce = record.nonce;
        seat.registeredBlock = uint64(block.number);
        seat.endpoint = record.endpoint;
        seat.gatewayUrl = record.gatewayUrl;
        emit PeerRegistered(
            tokenId, instanceId, key, record.endpoint, record.gatewayUrl, record.nonce, proof, recordSignature
        );
    }

    // ------------------------------------------------------------------ views

    /// @notice The node of seat `tokenId`, which may vote and elect for the seat while it has a record; zero while
    /// it has none.
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
    /// serves (zero until its first binding, or after the owner reset it).
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

    /// @inheritdoc IClusterSeats
    function boundBlockOf(uint256 tokenId) external view returns (uint64) {
        return _seats[tokenId].boundBlock;
    }

    /// @inheritdoc IClusterSeats
    function releaseBinding(uint256 tokenId, uint64 boundBlock) external {
        if (msg.sender != address(election)) revert ClusterOnlyElection(msg.sender);
        Seat storage seat = _seats[tokenId];
        // Rebound since the disputes began: those were of another binding.
        if (seat.boundBlock != boundBlock) return;
        string memory instanceId = seat.instanceId;
        bytes32 h = keccak256(bytes(instanceId));
        _clearRecord(tokenId, ClearReason.Disputed);
        _disputedClaim[keccak256(abi.encode(tokenId, h))] = true;
        if (_tokenOfInstance[h] == tokenId) delete _tokenOfInstance[h];
        delete seat.instanceId;
        delete seat.node;
        delete seat.boundBlock;
        delete seat.evidenceHash;
        emit InstanceUnbound(tokenId, instanceId);
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

    // ------------------------------------------------------- for the election

    /// @inheritdoc IClusterSeats
    function isActiveSeat(uint256 tokenId) external view returns (bool) {
        return _seats[tokenId].active;
    }

    /// @notice The app seat `tokenId` serves: zero before its first binding, or after the owner reset it.
    function seatAppOf(uint256 tokenId) external view returns (address) {
        return _appOf(_seats[tokenId]);
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
            election.seatJoined(tokenId);
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

    function _bind(uint256 tokenId, address holder, NodeBinding calldata binding) private {
        string calldata instanceId = binding.instanceId;
        if (!RecordFormat.isInstanceId(instanceId)) revert ClusterInvalidInstanceId(instanceId);
        bytes32 h = keccak256(bytes(instanceId));
        uint256 bound = _tokenOfInstance[h];
        if (bound != 0 && bound != tokenId) revert ClusterInstanceAlreadyBound(instanceId, bound);
        if (_disputedClaim[keccak256(abi.encode(tokenId, h))]) revert ClusterClaimDisputed(instanceId, tokenId);
        if (binding.evidence.length == 0) revert ClusterBindNeedsEvidence(instanceId);
        address node = binding.node;
        Seat storage seat = _seats[tokenId];
        uint32 app = _checkDstackChain(binding.proof, instanceId, node);
        _checkSeatApp(tokenId, seat, binding.proof.appId, app);
        _checkConsent(holder, binding);
        delete bindingRequestedOf[node];

        string memory previous = seat.instanceId;
        if (bytes(previous).length != 0) {
            _clearRecord(tokenId, ClearReason.Rebound);
            if (bound == 0) {
                delete _tokenOfInstance[keccak256(bytes(previous))];
                emit InstanceUnbound(tokenId, previous);
            }
        }
        if (bound == 0) {
            seat.instanceId = instanceId;
            _tokenOfInstance[h] = tokenId;
        }
        bytes32 evidenceHash = keccak256(binding.evidence);
        seat.appNumber = app;
        seat.node = node;
        seat.boundBlock = uint64(block.number);
        seat.evidenceHash = evidenceHash;
        emit InstanceBound(tokenId, instanceId, node, evidenceHash, binding.evidence);
    }

    function _checkConsent(address holder, NodeBinding calldata binding) private view {
        address signer = _recover(
            bindConsentDigest(binding.instanceId, binding.node, holder),
            binding.consent,
            DstackChain.V_ETHEREUM,
            "consent"
        );
        if (signer != binding.node) revert ClusterBindConsentInvalid(binding.node, signer);
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
        (bool https, uint256 hostStart, uint256 hostEnd) =
            proofs.checkRecord(record.tokenId, record.wgPublicKey, record.endpoint, record.gatewayUrl);
        if (productionMode && bytes(record.gatewayUrl).length != 0) {
            if (!https) revert RegistryGatewayUrlNotHttps(record.gatewayUrl);
            if (!appAuth.isGatewayHostAllowed(bytes(record.gatewayUrl)[hostStart:hostEnd])) {
                revert RegistryGatewayDomainNotAllowed(record.gatewayUrl);
            }
        }
    }

    /// @dev Returns the proof's app number.
    function _checkDstackChain(DstackProof calldata proof, string memory instanceId, address node)
        private
        view
        returns (uint32 app)
    {
        AppEntry memory entry = _apps[proof.appId];
        address recovered = proofs.checkChain(
            proof.derivedPublicKey,
            proof.appPublicKey,
            proof.purpose,
            proof.appSignature,
            proof.kmsSignature,
            proof.appId,
            instanceId,
            node
        );
        if (!entry.allowed) revert RegistryAppIdNotAllowed(proof.appId);
        app = entry.number;
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

    function _appOf(Seat storage seat) private view returns (address) {
        uint32 n = seat.appNumber;
        return n == 0 ? address(0) : _appOfNumber[n - 1];
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
            overlayAddress: network + uint32(tokenId),
            node: seat.node,
            evidenceHash: seat.evidenceHash,
            boundBlock: seat.boundBlock,
            holder: _ownerOf(tokenId)
        });
    }

    function _hostMask(uint8 length) private pure returns (uint256) {
        return (uint256(1) << (32 - length)) - 1;
    }
}
