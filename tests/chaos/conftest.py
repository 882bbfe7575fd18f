"""The chaos suite prints its figures at the end of the session."""
from tests.chaos import tally


def pytest_terminal_summary(terminalreporter):
    if tally.COUNTS["injected"]:
        terminalreporter.write_line(f"{tally.line()} [RAYRLHF_CHAOS_SEED={tally.SEED}]")
