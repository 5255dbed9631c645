// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title The shapes a peer record's fields must have.
/// @dev Agents parse these fields from untrusted storage; the contract refuses what an agent could not use,
/// so a malformed record never reaches them. Every check is bounded by the length caps.
library RecordFormat {
    /// @notice Longest accepted UDP endpoint: a bracketed IPv6 address and a port fit in 47 bytes.
    uint256 internal constant MAX_ENDPOINT_LENGTH = 64;
    /// @notice Longest accepted gateway URL.
    uint256 internal constant MAX_URL_LENGTH = 128;
    /// @notice Longest accepted base domain.
    uint256 internal constant MAX_DOMAIN_LENGTH = 96;
    /// @notice dstack instance ids are 20 bytes, written as 40 lowercase hex characters without `0x`.
    uint256 internal constant INSTANCE_ID_LENGTH = 40;

    /// @dev Bit c is set for each byte c allowed in a DNS label: a-z, 0-9 and '-'. A mask test is far cheaper
    /// than a chain of comparisons inside the per-character loop.
    uint256 private constant HOST_CHARS = (((uint256(1) << 26) - 1) << 0x61) | (((uint256(1) << 10) - 1) << 0x30)
        | (uint256(1) << 0x2d);
    /// @dev Bytes that end a URL's host: '/', ':', '?' and '#'.
    uint256 private constant HOST_END = (uint256(1) << 0x2f) | (uint256(1) << 0x3a) | (uint256(1) << 0x3f)
        | (uint256(1) << 0x23);

    /// @notice True for 40 lowercase hex characters: the one spelling of an instance id, so that one instance
    /// cannot be bound twice under two spellings.
    function isInstanceId(string memory id) internal pure returns (bool) {
        bytes memory b = bytes(id);
        if (b.length != INSTANCE_ID_LENGTH) return false;
        for (uint256 i = 0; i < b.length; ++i) {
            if (!_isHexLower(b[i])) return false;
        }
        return true;
    }

    /// @notice True for `host:port`, where host is a DNS name or IPv4 address, or a bracketed IPv6 address,
    /// and port is a decimal in 1..65535 without leading zeros.
    function isEndpoint(string calldata endpoint) internal pure returns (bool) {
        bytes calldata b = bytes(endpoint);
        if (b.length < 3 || b.length > MAX_ENDPOINT_LENGTH) return false;
        uint256 colon = type(uint256).max;
        for (uint256 i = b.length; i > 0; --i) {
            if (b[i - 1] == ":") {
                colon = i - 1;
                break;
            }
        }
        if (colon == type(uint256).max || colon == 0) return false;
        if (!_isPort(b[colon + 1:])) return false;
        bytes calldata host = b[:colon];
        if (host[0] == "[") {
            if (host.length < 4 || host[host.length - 1] != "]") return false;
            for (uint256 i = 1; i + 1 < host.length; ++i) {
                bytes1 c = host[i];
                if (!(_isHexLower(c) || (c >= "A" && c <= "F") || c == ":" || c == ".")) return false;
            }
            return true;
        }
        return _isHostnameMem(host);
    }

    /// @notice True for `http://` or `https://`, a host, and an optional port, path, query or fragment, with
    /// printable ASCII only, no user-info, and at most MAX_URL_LENGTH bytes.
    /// @return ok whether the URL is well-formed.
    /// @return https whether its scheme is https.
    /// @return host the host part (lowercase letters, digits, dots and dashes).
    function parseUrl(string calldata url) internal pure returns (bool ok, bool https, bytes calldata host) {
        bytes calldata b = bytes(url);
        host = b[0:0];
        if (b.length > MAX_URL_LENGTH) return (false, false, host);
        uint256 start;
        if (b.length >= 8 && bytes8(b[0:8]) == "https://") {
            https = true;
            start = 8;
        } else if (b.length >= 7 && bytes7(b[0:7]) == "http://") {
            start = 7;
        } else {
            return (false, false, host);
        }
        bytes memory m = b;
        uint256 end = m.length;
        unchecked {
            uint256 n = m.length;
            for (uint256 i = start; i < n; ++i) {
                uint256 c = _byteAt(m, i);
                // Printable ASCII without space; '@' anywhere would let `https://trusted.net@evil.com` pass.
                if (c <= 0x20 || c >= 0x7f || c == 0x40 || c == 0x5c) return (false, false, host);
                if (end == n && (HOST_END >> c) & 1 != 0) end = i;
            }
        }
        host = b[start:end];
        if (!_isHostnameMem(bytes(host))) return (false, false, host);
        if (end < m.length && m[end] == ":") {
            uint256 portEnd = end + 1;
            while (portEnd < m.length && m[portEnd] != "/" && m[portEnd] != "?" && m[portEnd] != "#") ++portEnd;
            if (!_isPort(b[end + 1:portEnd])) return (false, false, host);
        }
        ok = true;
    }

    /// @notice True when `host` is `domain` or ends with `"." ‖ domain`: a match on a label boundary, so that
    /// `evil-phala.network` does not match `phala.network`.
    function isUnderDomain(bytes calldata host, bytes memory domain) internal pure returns (bool) {
        if (domain.length == 0 || host.length < domain.length) return false;
        uint256 offset = host.length - domain.length;
        for (uint256 i = 0; i < domain.length; ++i) {
            if (host[offset + i] != domain[i]) return false;
        }
        return offset == 0 || host[offset - 1] == ".";
    }

    /// @notice True for a lowercase DNS name usable as a base domain: labels of [a-z0-9-], dot-separated.
    function isDomain(string memory domain) internal pure returns (bool) {
        bytes memory b = bytes(domain);
        if (b.length == 0 || b.length > MAX_DOMAIN_LENGTH) return false;
        return _isHostnameMem(b);
    }

    function _isPort(bytes calldata p) private pure returns (bool) {
        if (p.length == 0 || p.length > 5 || p[0] == "0") return false;
        uint256 port;
        for (uint256 i = 0; i < p.length; ++i) {
            if (p[i] < "0" || p[i] > "9") return false;
            port = port * 10 + (uint8(p[i]) - 48);
        }
        return port <= 65535;
    }

    /// @dev Lowercase labels of letters, digits and inner dashes, separated by single dots. IPv4 literals pass
    /// too, as all-digit labels.
    function _isHostnameMem(bytes memory h) private pure returns (bool) {
        uint256 n = h.length;
        if (n == 0 || n > 253) return false;
        uint256 labelLength;
        uint256 previous;
        unchecked {
            for (uint256 i = 0; i < n; ++i) {
                uint256 c = _byteAt(h, i);
                if (c == 0x2e) {
                    // '.': no empty label, no label ending in '-'
                    if (labelLength == 0 || previous == 0x2d) return false;
                    labelLength = 0;
                } else {
                    if ((HOST_CHARS >> c) & 1 == 0) return false;
                    if (labelLength == 0 && c == 0x2d) return false;
                    if (++labelLength > 63) return false;
                }
                previous = c;
            }
        }
        return labelLength > 0 && previous != 0x2d;
    }

    /// @dev `uint8(b[i])` without the bounds check and byte masking that via-IR emits for it, which made
    /// validating a 77-byte URL cost ~60k gas. Callers keep `i < b.length`.
    function _byteAt(bytes memory b, uint256 i) private pure returns (uint256 c) {
        assembly ("memory-safe") {
            c := byte(0, mload(add(add(b, 0x20), i)))
        }
    }

    function _isHexLower(bytes1 c) private pure returns (bool) {
        return (c >= "0" && c <= "9") || (c >= "a" && c <= "f");
    }
}
