"""Allocation-heavy CPython workload for scripts/bench: objects, dicts, json and strings."""
import json


class Record:
    def __init__(self, i):
        self.id = i
        self.name = "record-%d" % i
        self.tags = [str(i % 7), str(i % 11)]


def build(n):
    return [Record(i) for i in range(n)]


def encode(records):
    return [json.dumps({"id": r.id, "name": r.name, "tags": r.tags}) for r in records]


def decode(lines):
    return sum(len(json.loads(line)["name"]) for line in lines)


total = 0
for round_ in range(4):
    recs = build(50000)
    total += decode(encode(recs))
print(total)
