"""sshd's AuthorizedKeysCommand for the local cloud: print the public keys the builds registered.

Only key pairs tagged by Image Factory builds count, so the server trusts exactly the builds' keys.
sshd runs this for every login attempt, so it stays light: the standard library only (one EC2 Query API
call per region to the emulator, which does not check signatures), no boto3 to import.
"""

import argparse
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

BUILD_TAG = "image-factory:build-id"


def public_keys(endpoint: str, region: str) -> list[str]:
    body = urllib.parse.urlencode({"Action": "DescribeKeyPairs", "Version": "2016-11-15", "IncludePublicKey": "true",
                                   "Filter.1.Name": "tag-key", "Filter.1.Value.1": BUILD_TAG}).encode()
    request = urllib.request.Request(endpoint.rstrip("/") + "/", data=body, headers={  # noqa: S310 http://127.0.0.1
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        # The emulator reads the region from the credential scope.
        "Authorization": f"AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/ec2/aws4_request, "
                         "SignedHeaders=host, Signature=0"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 the emulator on loopback
        root = ET.fromstring(response.read())  # noqa: S314 the emulator's answer, on loopback
    return [e.text.strip() for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "publicKey" and e.text]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--regions", required=True)
    parser.add_argument("user", nargs="?")
    args = parser.parse_args()
    regions = args.regions.split(",")
    # One request per region, at once: sshd waits for this on every login.
    with ThreadPoolExecutor(len(regions)) as pool:
        for keys in pool.map(lambda region: public_keys(args.endpoint, region), regions):
            for key in keys:
                print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
