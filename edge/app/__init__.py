# -*- test-case-name: tests.e2e.test_reload, tests.e2e.test_observability -*-
"""The application: the service tree, the live runtime, the dispatcher that hands each connection to its
handler, and the admin listener's status page.  Nothing below imports it."""
