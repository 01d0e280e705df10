"""Setup shared by every test directory (tests/ and each plugin's tests/)."""

import signal


def pytest_configure(config):
    # A script that starts the suite in the background (`cmd &`) hands it an ignored SIGINT, which
    # Python keeps and every process a test starts inherits; the Ctrl-C tests need a terminal's.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
