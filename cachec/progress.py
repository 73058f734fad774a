"""A progress line for steps that report no progress of their own (export, planning).

torch.export and the passes run as one blocking call, so a background thread refreshes an
elapsed-time bar while it works; when stderr is not a terminal a plain start line and a
"done in N s" line are printed instead, which keeps logs readable.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time


@contextlib.contextmanager
def busy(desc: str):
    stream = sys.stderr  # the real stderr: export redirects sys.stderr while it runs
    start = time.perf_counter()
    bar = None
    stop = threading.Event()
    if stream.isatty():
        from tqdm import tqdm

        bar = tqdm(total=None, desc=f"[cachec] {desc}", bar_format="{desc}: {elapsed}", file=stream, leave=False)

        def tick():
            while not stop.wait(0.5):
                bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    else:
        print(f"[cachec] {desc}", file=stream, flush=True)
    try:
        yield
    finally:  # on failure too: the caller's error message follows a cleared line
        stop.set()
        if bar is not None:
            ticker.join()
            bar.close()
    print(f"[cachec] {desc}: done in {time.perf_counter() - start:.1f} s", file=stream, flush=True)  # success only


def stage(msg: str) -> None:
    """One line about what cachec is doing, on stderr (stdout stays for results and --json)."""
    print(f"[cachec] {msg}", file=sys.stderr, flush=True)
