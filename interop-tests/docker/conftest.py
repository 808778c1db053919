"""SIGTERM (scripts/test-docker forwards Ctrl-C and its own TERM as one)
ends the run like Ctrl-C does, so fixtures still take the cluster down."""

import signal


def pytest_configure(config):
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
