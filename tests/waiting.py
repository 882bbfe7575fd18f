"""Waiting on a condition with a deadline (never a bare sleep)."""
import time


def wait_for(check, timeout: float = 60.0, what: str = "condition", every: float = 0.05):
    """``check()``'s first truthy value; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
