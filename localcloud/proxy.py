"""The front of the local cloud's AWS endpoint: an HTTP relay before moto, and a chain of hooks on each AWS call.

``python -m localcloud.proxy --listen-port P --upstream-port M`` listens on 127.0.0.1:P and forwards every
request (any method, path, query, headers and body) to moto on 127.0.0.1:M, relaying status, headers and body
(hop-by-hop headers dropped). Standard library only.

An AWS API call (a request with an AWS signature; moto's own ``/moto-api/`` is relayed as it is) goes through a
chain of hooks (localcloud/chain.py), each owning its own state, in this order: the ``Journal`` of calls, the
``Count`` of calls and errors, ``Throttle``, ``Deny`` and ``InsufficientCapacity`` (fault injection; in
localcloud/hooks.py), moto's fixes (``CopyTokens``, ``ImageNames``, ``TagSpecifications``, ``FailedCopies``,
``CreationDates``, ``ConsoleOutput``; in localcloud/moto_fixes.py), the emulated state-change times
(``Latency``), and ``Machines``, where boots, stops and images meet the real machines. Each hook's docstring
tells what it does. A hook may answer a call itself (throttled, denied, refused: the later hooks and moto never
see it); the answer then goes back through the hooks before it, in reverse order.

The front's own endpoints, never forwarded:

* ``GET /_localcloud/stats``: ``{"calls": {"ec2:RunInstances": 1, ...}, "throttled": {...}, "errors": {...},
  "config": {...}, "changes": {...}}``: ``Count``'s ``calls`` and ``errors``, ``Throttle``'s ``throttled``,
  ``Latency``'s ``changes``, and the config.
* ``POST /_localcloud/reset``: zero the counters and clear the journal.
* ``GET /_localcloud/config``; ``POST /_localcloud/config`` with some of ``{"throttle_rate": 0.3,
  "throttle_seed": 1, "latency": {...}, "fail_copies_to": [...], "deny": [...], "insufficient_capacity": [...]}``
  (each key's hook tells its meaning): all or nothing, an unknown key or a bad value changes nothing (400).
* ``GET /_localcloud/calls``: the journal, every AWS API call received (``Journal``).
* ``GET /_localcloud/machines``: the machines and their images (``Machines``).
* ``POST /_localcloud/creation-dates``: the CreationDate DescribeImages shows for images (``CreationDates``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from localcloud import hooks, instance_refresh, moto_fixes
from localcloud.chain import Answer, Call, Chain

LOOPBACK = "127.0.0.1"
CONTROL_PREFIX = "/_localcloud/"
#: Connection-level headers (RFC 9110 7.6.1) are the proxy's own business on each side, never relayed.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
MAX_BODY = 256 * 1024 * 1024
MAX_CHUNKS = 100_000
CLIENT_IDLE_TIMEOUT = 300  # seconds an idle client connection (and its thread) is kept
UPSTREAM_TIMEOUT = 300  # seconds one forwarded request may take


def front_chain(upstream_port: int, machines=None, console_host_key: str = "") -> Chain:
    """The hooks of the front, in order."""
    return Chain([
        hooks.Journal(), hooks.Count(), hooks.Throttle(), hooks.Deny(), hooks.InsufficientCapacity(),
        instance_refresh.InstanceRefreshes(LOOPBACK, upstream_port),
        moto_fixes.CopyTokens(), moto_fixes.ImageNames(), moto_fixes.TagSpecifications(upstream_port),
        moto_fixes.FailedCopies(), moto_fixes.CreationDates(), moto_fixes.ConsoleOutput(machines, console_host_key),
        hooks.Latency(machines), hooks.Machines(machines),
    ], log=_log)


def _log(message: str, *args) -> None:
    sys.stderr.write(f"{message % args}\n")


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive towards the clients
    timeout = CLIENT_IDLE_TIMEOUT
    # Status line, headers and body leave in one write, without Nagle: written apart (http.server's default), a
    # small body waits for the client's delayed ACK, some 40 ms per call.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: FrontServer

    def setup(self) -> None:
        super().setup()
        self.upstream: http.client.HTTPConnection | None = None  # one keep-alive connection per client connection
        self.upstream_used = False

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.upstream is not None:
                self.upstream.close()

    def handle_expect_100(self) -> bool:
        # The interim answer leaves now, not in the write buffer with the final one: botocore holds an S3
        # PutObject's body back until it comes (a second at most: every SBOM write and bucket check waited 1 s).
        answered = super().handle_expect_100()
        self.wfile.flush()
        return answered

    def __getattr__(self, name: str):
        # Every method (GET, POST, PUT, DELETE, HEAD, PATCH, OPTIONS, ...) is handled, and handled alike.
        if name.startswith("do_"):
            return self.handle_request
        raise AttributeError(name)

    def handle_request(self) -> None:
        try:
            body = self.read_body()
        except BadRequest as exc:
            self.close_connection = True  # the rest of the stream cannot be trusted to start a request
            self.reply(Answer(exc.status, [("Content-Type", "text/plain")], f"{exc}\n".encode()))
            return
        path = urlsplit(self.path).path
        if path.startswith(CONTROL_PREFIX):
            self.control(path[len(CONTROL_PREFIX):], body)
            return
        call = Call.of(self.command, self.path, self.headers, body)
        if call is None:  # no AWS signature: moto's own API, relayed as it is
            self.reply(self.forward(body))
        else:
            self.reply(self.server.chain.answer(call, lambda call: self.forward(call.sent)))

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise BadRequest(400, f"bad Content-Length {length!r}") from None
        if not 0 <= size <= MAX_BODY:
            raise BadRequest(413, f"request body of {size} bytes refused")
        return self.rfile.read(size)

    def read_chunked(self) -> bytes:
        parts, total = [], 0
        for _ in range(MAX_CHUNKS):
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BadRequest(400, f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                for _ in range(1000):  # trailer section, up to the empty line
                    if self.rfile.readline(65537) in (b"\r\n", b"\n", b""):
                        break
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise BadRequest(413, f"request body of over {MAX_BODY} bytes refused")
            parts.append(self.rfile.read(size))
            self.rfile.readline(3)  # the CRLF after each chunk
        raise BadRequest(413, f"request body of over {MAX_CHUNKS} chunks refused")

    # --- forwarding -------------------------------------------------------------------------------

    def forward(self, body: bytes) -> Answer:
        """moto's answer to the request with ``body``; a 502 when moto failed."""
        # As HTTP clients do, a reused keep-alive connection that fails before any answer (closed by the upstream
        # while idle) gets one more try on a fresh one. With moto it never comes to that: werkzeug's server sends
        # "Connection: close" on every response, so each forwarded request has a fresh connection.
        for attempt in range(2):
            reused = self.upstream is not None and self.upstream_used
            try:
                response = self.send_upstream(body)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.drop_upstream()
                if reused and attempt == 0:
                    continue
                return self.upstream_failed(exc)
            except (OSError, http.client.HTTPException) as exc:
                self.drop_upstream()
                return self.upstream_failed(exc)
            break
        self.upstream_used = True
        if response.will_close:
            self.drop_upstream()
        # The body was read whole (and de-chunked): its length is sent, except where a response has no body,
        # where the upstream's own Content-Length (a HEAD's) is relayed as it is.
        bodiless = self.bodiless(response.status)
        hop = _connection_tokens(response.msg)
        headers = [(k, v) for k, v in response.getheaders()
                   if k.lower() not in hop and (bodiless or k.lower() != "content-length")]
        return Answer(response.status, headers, response.body, reason=response.reason, from_cloud=True)

    def send_upstream(self, body: bytes) -> http.client.HTTPResponse:
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection(LOOPBACK, self.server.upstream_port, timeout=UPSTREAM_TIMEOUT)
            self.upstream_used = False
        connection = self.upstream
        connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        hop = _connection_tokens(self.headers)
        for key, value in self.headers.items():
            lower = key.lower()
            if lower in hop or lower in ("content-length", "expect"):  # the body was read here: no 100-continue
                continue
            connection.putheader(key, value)
        if body or "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        response.body = response.read()  # whole, so the connection is free for the next request
        return response

    def drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        self.upstream = None

    def upstream_failed(self, exc: Exception) -> Answer:
        self.log_message("moto on port %s failed: %r", self.server.upstream_port, exc)
        return Answer(502, [("Content-Type", "text/plain")], f"local cloud front: moto failed: {exc!r}\n".encode())

    def bodiless(self, status: int) -> bool:
        return self.command == "HEAD" or status in (204, 304) or status < 200

    def reply(self, answer: Answer) -> None:
        # Not send_response: the upstream's own Server and Date headers are relayed, not replaced.
        bodiless = answer.from_cloud and self.bodiless(answer.status)
        self.log_request(answer.status)
        self.send_response_only(answer.status, answer.reason)
        for key, value in answer.headers:
            self.send_header(key, value)
        if not bodiless:
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if not bodiless and self.command != "HEAD":
            self.wfile.write(answer.body)

    # --- the front's own endpoints --------------------------------------------------------------

    def control(self, name: str, body: bytes) -> None:
        chain = self.server.chain
        if name == "stats" and self.command == "GET":
            self.reply_json(200, self.stats())
        elif name == "reset" and self.command == "POST":
            chain.reset()
            self.reply_json(200, self.stats())
        elif name == "config" and self.command == "GET":
            self.reply_json(200, chain.config())
        elif name == "config" and self.command == "POST":
            try:
                settings = json.loads(body or b"{}")
                if not isinstance(settings, dict):
                    raise ValueError("a JSON object is expected")
                chain.configure(settings)
            except (ValueError, TypeError) as exc:
                self.reply_json(400, {"error": str(exc)})
                return
            self.reply_json(200, chain.config())
        elif (answered := chain.control(self.command, name, body)) is not None:
            self.reply_json(*answered)
        else:
            self.reply_json(404, {"error": f"no {self.command} {CONTROL_PREFIX}{name}; there are GET stats, "
                                           "POST reset, GET/POST config, GET calls, GET machines, "
                                           "POST creation-dates"})

    def stats(self) -> dict:
        stats = self.server.chain.stats()
        return {"calls": stats["calls"], "throttled": stats["throttled"], "errors": stats["errors"],
                "config": self.server.chain.config(), "changes": stats["changes"]}

    def reply_json(self, status: int, document: dict | list) -> None:
        self.reply(Answer(status, [("Content-Type", "application/json")], json.dumps(document).encode() + b"\n"))

    def log_request(self, code="-", size="-") -> None:
        if self.server.verbose:
            super().log_request(code, size)


def _connection_tokens(headers) -> set[str]:
    """The hop-by-hop header names: the fixed ones and any that a Connection header names."""
    named = {token.strip().lower() for value in headers.get_all("Connection", []) for token in value.split(",")}
    return HOP_BY_HOP | (named - {""})


class FrontServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, upstream_port: int, verbose: bool = False, machines=None, host: str = LOOPBACK,
                 chain: Chain | None = None, console_host_key: str = ""):
        super().__init__((host, port), FrontHandler)
        self.upstream_port = upstream_port
        self.chain = chain or front_chain(upstream_port, machines, console_host_key)
        self.verbose = verbose


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m localcloud.proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--listen-port", type=int, required=True, help="port on 127.0.0.1 the clients use")
    parser.add_argument("--upstream-port", type=int, required=True, help="moto's port on 127.0.0.1")
    parser.add_argument("--state-dir", help="the local cloud's state directory (informational)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--machines", metavar="BASE", help="make a real machine of every instance, booting "
                        "images from this origin root filesystem (localcloud/machines.py; needs root)")
    parser.add_argument("--slot", type=int, default=0, help="the machines' address slot (localcloud/addresses.py)")
    parser.add_argument("--init", default="systemd", choices=("systemd", "sshd"), help="a machine's PID 1: its "
                        "image's systemd, with cloud-init (the default), or sshd alone (the light model)")
    parser.add_argument("--console-host-key", metavar="FILE", help="without machines: the public host key of the "
                        "sshd that stands in for every instance, shown on their consoles (GetConsoleOutput)")
    parser.add_argument("--also-listen", metavar="ADDRESS", help="listen on this address too, same port and "
                        "counters (the bridge's: hosts of the Celery deployment reach the cloud API there)")
    args = parser.parse_args()
    from pathlib import Path

    machines = None
    if args.machines:
        from localcloud.addresses import Plan
        from localcloud.machines import Machines, Moto

        machines = Machines(Path(args.state_dir), Path(args.machines), Moto(args.upstream_port), Plan(args.slot),
                            init=args.init)
    shared_key = ""
    if args.console_host_key:
        shared_key = " ".join(Path(args.console_host_key).read_text().split()[:2])
    server = FrontServer(args.listen_port, args.upstream_port, args.verbose, machines,
                         console_host_key=shared_key)
    if args.also_listen:
        import threading

        second = FrontServer(args.listen_port, args.upstream_port, args.verbose, machines, args.also_listen,
                             server.chain)
        threading.Thread(target=second.serve_forever, name="front-bridge", daemon=True).start()
    print(f"local cloud front on {LOOPBACK}:{server.server_address[1]}"
          f"{f' and {args.also_listen}' if args.also_listen else ''} -> moto on {LOOPBACK}:{args.upstream_port}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
