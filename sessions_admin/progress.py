"""Progress of long management commands: a bar redrawn in place on a terminal, a line every few
seconds otherwise (logs, cron, systemd's journal), and nothing at verbosity 0."""

import time
from typing import TextIO


class ProgressBar:
    """`update(n)` after each batch; `close()` at the end. `total` may be None when not known."""

    width = 30

    def __init__(self, stream: TextIO | None, *, label: str, total: int | None, unit: str, every: float = 2.0):
        self.stream, self.label, self.total, self.unit, self.every = stream, label, total, unit, every
        self.done = 0
        self.started = self.last = time.monotonic()
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.drawn = False

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.stream is None:
            return
        if self.tty:
            if now - self.last >= 0.1 or (self.total is not None and self.done >= self.total):
                self.last = now
                self.stream.write("\r" + self.text(now))
                self.stream.flush()
                self.drawn = True
        elif now - self.last >= self.every:
            self.last = now
            self.stream.write(f"  … {self.text(now)}\n")
            self.stream.flush()

    def text(self, now: float) -> str:
        elapsed = now - self.started
        if self.total:
            share = min(self.done / self.total, 1.0)
            filled = round(share * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            left = f", ~{elapsed / share - elapsed:.0f} s left" if 0 < share < 1 else ""
            return f"{self.label} [{bar}] {share:4.0%} {self.done:,}/{self.total:,} {self.unit} ({elapsed:.0f} s{left})"
        return f"{self.label}: {self.done:,} {self.unit} ({elapsed:.0f} s)"

    def close(self) -> None:
        if self.stream is not None and self.tty and self.drawn:
            self.stream.write("\r" + self.text(time.monotonic()) + "\n")
            self.stream.flush()
