"""gRPC through a terminated route: a real grpcio server behind edge (``protocol = "h2"``, h2c) and a
grpcio client in front (TLS, ALPN h2).  Unary, server-streaming and client-streaming calls, an error
status, and trailing metadata all arrive intact; the same over an https:// (ALPN h2) backend."""

from __future__ import annotations

import sys
import textwrap

import grpc
import pytest

from tests.support.procs import Program, free_port, wait_listening
from tests.e2e.test_terminate import local_ca

SERVER = textwrap.dedent('''
    """A gRPC server with generic byte handlers (no protoc needed); TLS when given a certificate."""
    import sys
    from concurrent import futures
    import grpc

    def unary(request, context):
        if request == b"fail":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not you")
        context.set_trailing_metadata((("x-served-by", "grpc-origin"),))
        return b"echo:" + request

    def stream(request, context):
        for i in range(int(request)):
            yield b"part-%d" % i
        context.set_trailing_metadata((("x-parts", request.decode()),))

    def upload(request_iterator, context):
        return b"%d" % sum(len(r) for r in request_iterator)

    handler = grpc.method_handlers_generic_handler("edge.Test", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
    })
    age = [("grpc.max_connection_age_ms", int(sys.argv[4])), ("grpc.max_connection_age_grace_ms", 5000)] \
        if len(sys.argv) > 4 else []  # the server sends GOAWAY when a connection is that old
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=age)
    server.add_generic_rpc_handlers((handler,))
    address = f"127.0.0.1:{sys.argv[1]}"
    if len(sys.argv) > 2 and sys.argv[2] != "-":
        key, cert = open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
        server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        server.add_insecure_port(address)
    server.start()
    server.wait_for_termination()
    ''')


def grpc_origin(start, tmp_path, tls=None):
    port = free_port()
    script = tmp_path / "grpc_server.py"
    script.write_text(SERVER)
    argv = [sys.executable, str(script), str(port)] + ([str(tls[0]), str(tls[1])] if tls else [])
    server = start(Program, argv, tmp_path / "grpc.log")
    wait_listening(port, proc=server.proc)
    return port


def channel(e) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=open(local_ca(e), "rb").read())
    return grpc.secure_channel(f"127.0.0.1:{e.https_port}", credentials, options=(
        ("grpc.ssl_target_name_override", "grpc.example.test"), ("grpc.default_authority", "grpc.example.test")))


def edge_for(edge, backend: str, tls: str = "edge"):
    return edge(f"""
        [tls]
        issuer = "local"
        [backends.grpc]
        {backend}
        protocol = "h2"
        [[routes]]
        hosts = ["grpc.example.test"]
        tls = "{tls}"
        backend = "grpc"
        """)


def calls(e) -> None:
    with channel(e) as ch:
        answer, call = ch.unary_unary("/edge.Test/Unary").with_call(b"hi", timeout=10)
        assert answer == b"echo:hi" and call.code() == grpc.StatusCode.OK
        assert ("x-served-by", "grpc-origin") in [(m.key, m.value) for m in call.trailing_metadata()]
        with pytest.raises(grpc.RpcError) as failed:
            ch.unary_unary("/edge.Test/Unary")(b"fail", timeout=10)
        assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED and failed.value.details() == "not you"
        streamed = ch.unary_stream("/edge.Test/Stream")(b"50", timeout=10)
        assert list(streamed) == [b"part-%d" % i for i in range(50)]
        assert ("x-parts", "50") in [(m.key, m.value) for m in streamed.trailing_metadata()]
        uploaded = ch.stream_unary("/edge.Test/Upload")(iter([b"x" * 100_000] * 40), timeout=20)
        assert uploaded == b"4000000"  # 4 MB through 64 KiB windows both ways
        with pytest.raises(grpc.RpcError) as missing:
            ch.unary_unary("/edge.Test/Nothing")(b"", timeout=10)
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_over_h2c_backend(edge, start, tmp_path):
    port = grpc_origin(start, tmp_path)
    e = edge_for(edge, f'servers = ["http://127.0.0.1:{port}"]')
    calls(e)
    e.assert_alive()


def test_grpc_over_tls_backend_with_alpn_h2(edge, start, tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("grpc-origin.test")
    key_path, cert_path, ca_path = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    ca.cert_pem.write_to_path(str(ca_path))
    port = grpc_origin(start, tmp_path, (key_path, cert_path))
    e = edge_for(edge, f'servers = ["https://127.0.0.1:{port}"]\nca = "{ca_path}"\nserver_name = "grpc-origin.test"', "reencrypt")
    calls(e)
    e.assert_alive()


def test_http1_client_reaches_an_h2_backend_with_trailers(edge, start, tmp_path):
    """An HTTP/1.1 client that sends ``TE: trailers`` gets the gRPC server's answer chunked, its status and
    metadata as chunked trailers: a unary call made by hand over HTTP/1.1."""
    import socket
    import ssl

    port = grpc_origin(start, tmp_path)
    e = edge_for(edge, f'servers = ["http://127.0.0.1:{port}"]')
    message = b"\x00\x00\x00\x00\x02hi"  # not compressed, 2 bytes
    context = ssl.create_default_context(cafile=local_ca(e))
    with context.wrap_socket(socket.create_connection(("127.0.0.1", e.https_port), timeout=10),
                             server_hostname="grpc.example.test") as tls:
        tls.sendall(b"POST /edge.Test/Unary HTTP/1.1\r\nHost: grpc.example.test\r\nContent-Type: application/grpc\r\n"
                    b"TE: trailers\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(message), message))
        answer = b""
        while data := tls.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"\r\ntransfer-encoding: chunked" in head.lower(), answer
    payload = b"\x00\x00\x00\x00\x07echo:hi"
    assert body.startswith(b"%x\r\n%s\r\n0\r\n" % (len(payload), payload)), answer
    trailers = body.split(b"\r\n0\r\n", 1)[1]
    assert b"grpc-status: 0\r\n" in trailers and b"x-served-by: grpc-origin\r\n" in trailers, answer
    assert trailers.endswith(b"\r\n\r\n")
    e.assert_alive()


UPLOAD_ENDS_EARLY = textwrap.dedent('''
    """The upload handler answers at the first message: the server ends its stream while the client sends."""
    import sys
    from concurrent import futures
    import grpc

    def upload(request_iterator, context):
        return next(request_iterator)

    handler = grpc.method_handlers_generic_handler("edge.Test", {
        "Upload": grpc.stream_unary_rpc_method_handler(upload)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    server.wait_for_termination()
    ''')


def test_streams_a_backend_ends_early_do_not_use_up_its_connection(edge, start, tmp_path):
    """A backend that answers before the request's end leaves its half of the stream open unless edge
    resets it: a connection's 100 streams would be used up one by one, and more connections opened."""
    import time

    port = free_port()
    script = tmp_path / "early.py"
    script.write_text(UPLOAD_ENDS_EARLY)
    server = start(Program, [sys.executable, str(script), str(port)], tmp_path / "early.log")
    wait_listening(port, proc=server.proc)
    e = edge_for(edge, f'servers = ["http://127.0.0.1:{port}"]')

    def slow_messages():
        yield b"first"
        time.sleep(0.05)  # the answer is on its way before the request ends
        yield b"second"

    with channel(e) as ch:
        upload = ch.stream_unary("/edge.Test/Upload")
        for _ in range(120):
            try:
                upload(slow_messages(), timeout=10)
            except grpc.RpcError as error:  # grpcio may see the early answer as cancelled: either is fine here
                assert error.code() != grpc.StatusCode.DEADLINE_EXCEEDED
        assert upload(iter([b"last"]), timeout=10) == b"last"
    connections = [line for line in open(f"/proc/{e.pid}/net/tcp").read().splitlines()[1:]
                   if line.split()[2].endswith(f":{port:04X}") and line.split()[3] == "01"]
    assert len(connections) == 1, connections


def test_a_backend_that_sends_goaway_loses_no_call(edge, start, tmp_path):
    """grpc-go and grpcio servers end old connections with a graceful GOAWAY (max_connection_age): the
    calls the server took finish on that connection, later ones go to a new one; none fails."""
    import threading
    import time

    port = free_port()
    script = tmp_path / "grpc_server.py"
    script.write_text(SERVER)
    server = start(Program, [sys.executable, str(script), str(port), "-", "-", "200"], tmp_path / "grpc.log")
    wait_listening(port, proc=server.proc)
    e = edge_for(edge, f'servers = ["http://127.0.0.1:{port}"]')
    failures: list[str] = []
    done = [0]

    def caller() -> None:
        with channel(e) as ch:
            unary = ch.unary_unary("/edge.Test/Unary")
            streamed = ch.unary_stream("/edge.Test/Stream")
            deadline = time.monotonic() + 3  # several GOAWAYs of the backend's (one every 200 ms at most)
            while time.monotonic() < deadline:
                try:
                    assert unary(b"x", timeout=10) == b"echo:x"
                    assert len(list(streamed(b"20", timeout=10))) == 20
                    done[0] += 1
                except (grpc.RpcError, AssertionError) as error:
                    failures.append(repr(error))

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == [] and done[0] > 20, (failures[:3], done[0])


def test_a_backend_that_accepts_and_says_nothing_fails_fast(edge):
    """A server that takes the connection and never sends its SETTINGS (hung, or not HTTP/2 at all): the
    call fails after timeouts.connect with the reason in the log, not after the response timeout."""
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshake; nothing ever answers (a stand-in for a hung server)
    try:
        e = edge_for(edge, f'servers = ["http://127.0.0.1:{silent.getsockname()[1]}"]')
        started = time.monotonic()
        with channel(e) as ch, pytest.raises(grpc.RpcError) as failed:
            ch.unary_unary("/edge.Test/Unary")(b"hi", timeout=30)
        assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
        assert time.monotonic() - started < 10  # timeouts.connect is 2 s here; the response timeout is longer
        e.wait_log("no HTTP/2 SETTINGS from the server within 2s")
    finally:
        silent.close()
