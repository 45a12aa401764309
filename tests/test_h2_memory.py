"""HTTP/2 connections keep a bounded memory of closed streams (edge.http_proxy sets h2's limit)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events

import edge.http_proxy  # noqa: F401  (sets the limit for the connections Twisted makes)


def test_a_long_lived_connection_forgets_old_closed_streams():
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    for _ in range(5000):  # a browser tab open for a day
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, [(":method", "GET"), (":path", "/"), (":scheme", "https"),
                                     (":authority", "a.test")], end_stream=True)
        for event in server.receive_data(client.data_to_send()):
            if isinstance(event, h2.events.RequestReceived):
                server.send_headers(event.stream_id, [(":status", "200")], end_stream=True)
        client.receive_data(server.data_to_send())
    assert len(server._closed_streams) <= 1000  # h2 keeps 65,536 (about 6 MB) unless told otherwise
    # A late frame for a stream forgotten long ago is answered, not a connection error.
    from hyperframe.frame import RstStreamFrame, WindowUpdateFrame

    late = RstStreamFrame(1)
    late.error_code = 8  # CANCEL
    update = WindowUpdateFrame(3)
    update.window_increment = 100
    server.receive_data(late.serialize() + update.serialize())
    assert server.state_machine.state != h2.connection.ConnectionState.CLOSED
