"""What cachec says while it works: stage lines, progress bars on a terminal, heartbeats in logs.

torch.export and the passes run as one blocking call, so a background thread refreshes an
elapsed-time bar while it works. Why two styles: a progress bar redraws one line with ``\\r``,
which is what a person at a terminal wants and what turns a log file into noise. So bars are
drawn only when stderr is a terminal; otherwise every stage is one plain line, a loop says which
item it is on, and a long quiet stretch prints a heartbeat line every ``HEARTBEAT_S`` seconds, so
a log never goes silent for minutes.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator

HEARTBEAT_S = 15.0  # seconds between "still ..." lines when stderr is not a terminal


def on_terminal() -> bool:
    """True when stderr is a terminal (draw bars); False for a file or a pipe (plain lines)."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


@contextlib.contextmanager
def heartbeat(desc: str, every: float | None = None):
    """While the block runs, print ``[cachec] still DESC (N s)`` every ``every`` seconds when stderr
    is not a terminal (nothing on a terminal, where a bar or the result shows progress)."""
    every = HEARTBEAT_S if every is None else every
    if on_terminal():
        yield
        return
    stream = sys.stderr
    stop = threading.Event()
    start = time.perf_counter()

    def beat():
        while not stop.wait(every):
            print(f"[cachec] still {desc} ({time.perf_counter() - start:.0f} s)", file=stream, flush=True)

    ticker = threading.Thread(target=beat, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()


@contextlib.contextmanager
def busy(desc: str):
    stream = sys.stderr  # the real stderr: export redirects sys.stderr while it runs
    start = time.perf_counter()
    bar = None
    stop = threading.Event()
    if on_terminal():
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
        with heartbeat(desc):
            yield
    finally:  # on failure too: the caller's error message follows a cleared line
        stop.set()
        if bar is not None:
            ticker.join()
            bar.close()
    print(f"[cachec] {desc}: done in {time.perf_counter() - start:.1f} s", file=stream, flush=True)  # success only


def steps(items: Iterable, desc: str) -> Iterator:
    """Iterate ``items``: a progress bar on a terminal; otherwise one line per item
    (``[cachec] DESC 3/12``) and heartbeats while an item takes long."""
    if on_terminal():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, leave=False, file=sys.stderr)
        return
    items = list(items)
    for n, item in enumerate(items, 1):
        stage(f"{desc} {n}/{len(items)}: {item}" if isinstance(item, str) else f"{desc} {n}/{len(items)}")
        with heartbeat(f"{desc} {n}/{len(items)}"):
            yield item


def library_bars_off_terminal() -> None:
    """Turn off diffusers' and transformers' own progress bars (loading components, writing shards)
    when stderr is not a terminal; call it where cachec is about to load or save with them."""
    if on_terminal():
        return
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # huggingface_hub, and transformers at import
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # transformers is optional
        return
    transformers_logging.disable_progress_bar()


def stage(msg: str) -> None:
    """One line about what cachec is doing, on stderr (stdout stays for results and --json)."""
    print(f"[cachec] {msg}", file=sys.stderr, flush=True)
