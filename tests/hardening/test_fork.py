"""Forking while other threads toggle enable()/disable(): every child can enable and disable, none hangs.

Before ropepatch's locks were fork-safe, a child forked while another thread was inside
``enable()``/``disable()`` inherited the lock held, and its first ``enable()`` hung forever (30 of
30 children). Each child here runs ``enable()`` + ``disable()`` under a 10 s alarm; the parent
kills and counts any child still running after 15 s.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import hardening_kit as kit
import pytest

pytest.importorskip("transformers")

import ropepatch  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork exists only on POSIX")

CHILDREN = 30
TOGGLERS = 4


def _child() -> None:
    signal.alarm(10)  # a hang ends the child with SIGALRM, which the parent reports
    try:
        ropepatch.enable(quiet=True)
        assert ropepatch.is_enabled()
        ropepatch.disable()
        ropepatch.enable(quiet=True, method="linear", factor=2.0)
        ropepatch.disable()
        assert not ropepatch.is_enabled()
    except BaseException:  # noqa: BLE001 - any failure is an exit status the parent reports
        os._exit(3)
    os._exit(0)


def _wait(pid: int, deadline: float) -> str:
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return "hang (alarm)" if os.WTERMSIG(status) == signal.SIGALRM else f"signal {os.WTERMSIG(status)}"
            code = os.WEXITSTATUS(status)
            return "ok" if code == 0 else f"exit {code}"
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hang"


def test_children_forked_while_threads_toggle_enable_disable_never_hang():
    import transformers.modeling_utils  # noqa: F401 - enable() installs real patches: the locks are busy

    stop = threading.Event()
    errors: list[BaseException] = []

    def toggle(i: int) -> None:
        try:
            while not stop.is_set():
                ropepatch.enable(quiet=True, **({"method": "ntk", "alpha": 2.0} if i % 2 else {}))
                ropepatch.disable()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=toggle, args=(i,), daemon=True) for i in range(TOGGLERS)]
    for t in threads:
        t.start()
    outcomes: dict[str, int] = {}
    try:
        for _ in range(CHILDREN):
            time.sleep(0.01)  # let the togglers get inside enable()/disable()
            pid = os.fork()
            if pid == 0:
                _child()
            outcome = _wait(pid, time.monotonic() + 15)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            kit.record("fork-while-toggling", "spec" if outcome == "ok" else "other", outcome)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        ropepatch.disable()
    assert not errors, errors
    assert outcomes == {"ok": CHILDREN}, outcomes
