"""sshd's AuthorizedKeysCommand for the local cloud: print the public keys the builds registered.

Only key pairs tagged by Image Factory builds count, so the server trusts exactly the builds' keys.
"""

import argparse
import sys

import boto3

BUILD_TAG = "image-factory:build-id"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--regions", required=True)
    parser.add_argument("user", nargs="?")
    args = parser.parse_args()
    for region in args.regions.split(","):
        ec2 = boto3.client("ec2", endpoint_url=args.endpoint, region_name=region,
                           aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator
        pairs = ec2.describe_key_pairs(IncludePublicKey=True, Filters=[{"Name": "tag-key", "Values": [BUILD_TAG]}])
        for pair in pairs["KeyPairs"]:
            if pair.get("PublicKey"):
                print(pair["PublicKey"].strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
