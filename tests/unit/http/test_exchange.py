"""One request's exchange (edge.http.exchange): max_body as the body streams, retry only when safe,
deadlines, backend failures, intercepted errors and what the access log says.  No sockets."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import given, strategies as st

from edge.http.exchange import BODY_TOO_LARGE, Cut, Exchange, Reply, Retry
from edge.http.policy import IDEMPOTENT

PAGES = {502: b"<p>down</p>", 500: b"<p>oops</p>"}


class FakeRoute(NamedTuple):
    name: str = "web"
    backend: str = "app"
    intercept_errors: bool = False


def exchange(method: bytes = b"GET", has_body: bool = False, limit: int | None = None,
             route: FakeRoute = FakeRoute()) -> Exchange:
    ex = Exchange(method, "a.test", "/x", "HTTP/1.1", 100.0)
    ex.forward(route, has_body, limit)
    return ex


# -- max_body, counted as the body streams ---------------------------------------------------------

def test_a_body_within_max_body_goes_on():
    ex = exchange(b"POST", True, 10)
    assert ex.body(4) is None and ex.body(6) is None
    assert ex.received == 10


def test_a_body_over_max_body_mid_stream_is_413_before_the_response():
    ex = exchange(b"POST", True, 10)
    assert ex.body(8) is None
    assert ex.body(3) == Reply(413, "request body larger than this route allows", BODY_TOO_LARGE)


def test_a_body_over_max_body_after_the_response_began_cuts_it():
    """A backend that answered early while the client goes on uploading: the response is cut, never a
    second status line."""
    ex = exchange(b"POST", True, 10)
    assert ex.response(200, 100.5, None) is None
    assert ex.body(11) == Cut(BODY_TOO_LARGE, 413)
    ex.end(BODY_TOO_LARGE, 413)
    assert ex.status == 200  # what was sent stands in the log


def test_no_max_body_means_no_limit():
    ex = exchange(b"PUT", True, None)
    assert ex.body(10**12) is None


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=40), st.integers(min_value=0, max_value=50000))
def test_the_limit_trips_at_the_first_piece_past_it(pieces, limit):
    ex = exchange(b"POST", True, limit)
    total = 0
    for size in pieces:
        total += size
        action = ex.body(size)
        if total > limit:
            assert type(action) is Reply and action.status == 413
            break
        assert action is None


# -- retry: once, before any response, bodiless, idempotent or unprocessed --------------------------

@pytest.mark.parametrize("method", sorted(IDEMPOTENT))
def test_a_bodiless_idempotent_request_goes_again_once_on_a_fresh_connection(method):
    ex = exchange(method)
    assert ex.failed("connection closed before a response", again=True) == Retry(True)
    again = ex.failed("connection closed before a response", again=True)
    assert type(again) is Reply and again.status == 502 and again.outcome == "backend_failed"


@pytest.mark.parametrize("method", [b"POST", b"PATCH", b"CONNECT"])
def test_a_non_idempotent_request_is_not_repeated(method):
    """The server may have acted on it before the connection died (RFC 9110 9.2.2)."""
    action = exchange(method).failed("connection closed before a response", again=True)
    assert type(action) is Reply and action.status == 502


def test_a_request_the_server_never_processed_goes_again_whatever_its_method():
    """REFUSED_STREAM or a GOAWAY below it: on any connection, not necessarily a new one."""
    assert exchange(b"POST").failed("GOAWAY", again=True, unprocessed=True) == Retry(False)


def test_a_request_with_a_body_is_not_repeated():
    """Its body went to the first connection and is not kept to send twice."""
    ex = exchange(b"PUT", has_body=True)
    action = ex.failed("connection closed before a response", again=True)
    assert type(action) is Reply and action.status == 502
    ex = exchange(b"POST", has_body=True)
    assert type(ex.failed("refused", again=True, unprocessed=True)) is Reply


def test_a_fresh_connection_that_fails_is_not_retried():
    """Only a kept-alive connection its server had closed (``again``) is worth another try."""
    action = exchange(b"GET").failed("connection reset", again=False)
    assert type(action) is Reply and action.status == 502


def test_a_backend_reset_mid_response_cuts_it_short_and_is_never_retried():
    ex = exchange(b"GET")
    assert ex.response(200, 100.25, None) is None
    action = ex.failed("connection closed before the response was complete", again=True)
    assert action == Cut("backend_failed", 502, "backend response cut short: "
                                               "connection closed before the response was complete")
    assert not ex.retried


def test_a_failure_names_the_backend_and_a_hint_in_the_log_only():
    action = exchange().failed("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", again=False)
    assert action.text == "the service did not answer"
    assert "backend app failed" in action.warning and "set ca =" in action.warning


def test_unavailable_servers():
    assert exchange().unavailable(503, "no server available in backend app") == \
        Reply(503, "no server available for this service", "backend_failed", "503 no server available in backend app")


# -- deadlines ---------------------------------------------------------------------------------------

def test_no_response_in_time_is_504():
    action = exchange().expired("response", 30)
    assert action == Reply(504, "the service did not answer in time", "timeout",
                           "504 backend app did not answer within 30s")


def test_a_request_body_that_stops_is_408():
    assert exchange(b"POST", True).expired("body", 60) == Reply(408, "request body took too long", "timeout")


def test_a_response_that_stops_moving_is_cut():
    ex = exchange()
    ex.response(200, 101.0, None)
    assert ex.expired("idle", 60) == Cut("timeout", 504)
    assert ex.expired("response", 60) == Cut("timeout", 504)  # a late timer after the head: never a 504 answer


# -- the response, intercepted errors ---------------------------------------------------------------

def test_an_intercepted_error_is_replaced_and_not_started():
    ex = exchange(route=FakeRoute(intercept_errors=True))
    assert ex.response(502, 100.5, PAGES) == Reply(502, "the service did not answer", "intercepted")
    assert not ex.response_started and ex.upstream_time == 0.5
    assert ex.response(404, 100.5, PAGES) is None  # no page for it: relayed
    assert ex.response_started and ex.status == 404


def test_errors_are_relayed_without_intercept_errors():
    ex = exchange()
    assert ex.response(502, 100.5, PAGES) is None and ex.status == 502


def test_a_websocket_answered_with_a_plain_success_is_502():
    action = exchange().not_upgraded(200, 100.5)
    assert action.status == 502 and "answered a WebSocket upgrade with 200" in action.warning


# -- the client leaving, and the access log ----------------------------------------------------------

def test_a_client_that_aborts_mid_body_is_499_client_aborted():
    ex = exchange(b"POST", True, 100)
    ex.body(10)
    ex.client_gone("client_aborted")
    fields = ex.log_fields(102.0)
    assert fields[3] == 499 and fields[11] == "client_aborted"


def test_a_client_that_leaves_mid_response_keeps_the_status_sent():
    ex = exchange()
    ex.connected("127.0.0.1:8000")
    ex.response(200, 100.5, None)
    ex.sent = 1234
    ex.client_gone("client_closed")
    assert ex.log_fields(101.0) == ("GET", "a.test", "/x", 200, 1234, "web", "app", "127.0.0.1:8000", 0.5, 1.0,
                                    "HTTP/1.1", "client_closed", None)


def test_an_earlier_outcome_stands_when_the_client_leaves():
    ex = exchange()
    ex.end("timeout", 504)
    ex.client_gone("client_closed")
    assert ex.outcome == "timeout" and ex.status == 504


def test_a_completed_exchange_is_logged_as_completed():
    ex = Exchange(b"HEAD", "a.test", "/", "HTTP/2", 5.0)
    ex.end("answered", 404)
    assert ex.log_fields(5.5)[3:] == (404, 0, None, None, None, None, 0.5, "HTTP/2", "answered", None)
    ex = exchange()
    ex.response(204, 100.1, None)
    assert ex.log_fields(100.2)[11] == "completed"
