"""Tasks that outlive whoever started them.

asyncio keeps only a weak reference to a task: one nobody holds may be garbage-collected before it
ends. `in_background` holds it until it ends, for work that must finish even when the code that
started it stops waiting (storing a turn's outcome, a cancel sent to Coze, a resumable reply).
"""

import asyncio

_background_tasks: set[asyncio.Task] = set()


def in_background(coro) -> asyncio.Task:
    """Run `coro` as a task that is kept alive until it ends, whoever stops waiting for it."""
    task = asyncio.ensure_future(coro)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)
    return task
