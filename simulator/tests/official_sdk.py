"""Drive dstack-simulator with dstack's official Python SDK and print what it saw as one JSON object.

Usage: python3 official_sdk.py <socket path>. Run by tests/official_sdk.rs; the assertions live there.
"""

import json
import sys

from dstack_sdk import DstackClient


def main() -> None:
    client = DstackClient(sys.argv[1])
    key = client.get_key("wallet/ethereum", "ethereum")
    info = client.info()
    quote = client.get_quote(b"dstack-mesh")
    out = {
        "key": key.key,
        "decoded_key_len": len(key.decode_key()),
        "signature_chain": key.signature_chain,
        "app_id": info.app_id,
        "instance_id": info.instance_id,
        "app_name": info.app_name,
        "compose_hash": info.compose_hash,
        "tcb_compose_hash": info.tcb_info.compose_hash,
        "tcb_rtmrs": [getattr(info.tcb_info, f"rtmr{i}") for i in range(4)],
        "quote": quote.quote,
        "report_data": quote.report_data,
        "replayed_rtmrs": [quote.replay_rtmrs()[i] for i in range(4)],
    }
    # Sign/Verify/Version arrived in later guest agents; this SDK release already has them.
    if hasattr(client, "sign"):
        signed = client.sign("secp256k1", b"hello dstack-mesh")
        verified = client.verify(
            "secp256k1",
            b"hello dstack-mesh",
            bytes.fromhex(signed.signature),
            bytes.fromhex(signed.public_key),
        )
        out["sign"] = {
            "chain_len": len(signed.signature_chain),
            "valid": verified.valid,
        }
    if hasattr(client, "version"):
        out["version"] = client.version().version
    print(json.dumps(out))


if __name__ == "__main__":
    main()
