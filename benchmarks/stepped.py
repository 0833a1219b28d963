"""A benchmark worker in its own process, stepped one batch at a time by its parent.

train_speed.py and precision_speed.py run each configuration in a process of its own and
step them in turn: every step runs while the others wait, so load that comes and goes on a
shared machine falls on all of them alike. The protocol: the worker prints one JSON line
when it is ready, then for each newline it reads, runs one step and prints one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys


class SteppedWorker:
    def __init__(self, name: str, command: list[str], **popen):
        self.name = name
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **popen)
        self.info = self.read()  # the worker's first line: what it built
        self.records: list[dict] = []

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"{self.name}: the worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def step(self) -> dict:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.records.append(self.read())
        return self.records[-1]
