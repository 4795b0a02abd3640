"""Executors run trial functions. Inline runs them one after another in this process."""

from typing import Callable, Iterable


class InlineExecutor:
    name = "inline"

    def run(self, jobs: Iterable, fn: Callable) -> None:
        for job in jobs:
            fn(job)


EXECUTORS = {"inline": InlineExecutor}
