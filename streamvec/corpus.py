"""A seeded corpus of natural English sentences over ten distinct topics, for demos and tests."""

from __future__ import annotations

import json
import math
import string
import zlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class _Template:
    """One sentence pattern: its text, the slots it fills in order, and how many it can make."""

    text: str
    slots: tuple[str, ...]
    capacity: int


@dataclass(frozen=True)
class _Topic:
    """The templates and slot vocabularies of one topic."""

    templates: tuple[_Template, ...]
    vocab: dict[str, tuple[str, ...]]

    @property
    def capacity(self) -> int:
        """How many distinct sentences the topic can produce."""
        return sum(t.capacity for t in self.templates)


@cache
def _topics() -> dict[str, _Topic]:
    """Parse the packaged vocabulary once per process."""
    raw = json.loads(resources.files("streamvec").joinpath("corpus_data.json").read_text("utf-8"))
    parsed = {}
    for name, spec in raw["topics"].items():
        vocab = {slot: tuple(words) for slot, words in spec["slots"].items()}
        templates = []
        for text in spec["templates"]:
            slots = tuple(f for _, f, _, _ in string.Formatter().parse(text) if f)
            templates.append(_Template(text, slots, math.prod(len(vocab[s]) for s in slots)))
        parsed[name] = _Topic(tuple(templates), vocab)
    return parsed


def topics() -> list[str]:
    """Return the topic names, in a fixed order."""
    return list(_topics())


def capacity(topic: str) -> int:
    """How many distinct sentences `topic` can produce: the most `sentences_by_topic` gives."""
    table = _topics()
    if topic not in table:
        raise ValueError(f"unknown topic {topic!r}; known topics: {', '.join(table)}")
    return table[topic].capacity


def _rng(seed: int, stream: str) -> np.random.Generator:
    """Return a generator for one (seed, stream) pair, stable across processes and platforms."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    # crc32, not hash(): str hashes are salted per process.
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


def _quotas(capacities: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """Spread n over templates as evenly as their capacities allow (water filling)."""
    quotas = [0] * len(capacities)
    remaining = n
    open_ = list(range(len(capacities)))
    while remaining and open_:
        share, extra = divmod(remaining, len(open_))
        bonus = set(rng.choice(open_, size=extra, replace=False).tolist())
        for i in open_:
            take = min(capacities[i] - quotas[i], share + (i in bonus))
            quotas[i] += take
            remaining -= take
        open_ = [i for i in open_ if quotas[i] < capacities[i]]
    return quotas


def _render(template: _Template, vocab: dict[str, tuple[str, ...]], index: int) -> str:
    """Build the sentence whose slot choices are the mixed-radix digits of `index`."""
    values = {}
    for slot in template.slots:
        index, digit = divmod(index, len(vocab[slot]))
        values[slot] = vocab[slot][digit]
    text = template.text.format(**values)
    return text[0].upper() + text[1:]


def sentences_by_topic(topic: str, n: int, seed: int = 0) -> list[str]:
    """Return n distinct sentences about `topic`, the same ones for the same (n, seed)."""
    table = _topics()
    if topic not in table:
        raise ValueError(f"unknown topic {topic!r}; known topics: {', '.join(table)}")
    spec = table[topic]
    if not 0 <= n <= spec.capacity:
        raise ValueError(f"topic {topic!r} has {spec.capacity} distinct sentences, asked for {n}")
    rng = _rng(seed, topic)
    quotas = _quotas([t.capacity for t in spec.templates], n, rng)
    out = []
    for template, quota in zip(spec.templates, quotas, strict=True):
        # Sampling indices without replacement makes every sentence distinct by construction.
        picks = rng.choice(template.capacity, size=quota, replace=False).tolist()
        out.extend(_render(template, spec.vocab, i) for i in picks)
    return [out[i] for i in rng.permutation(len(out))]


def labelled(n: int = 3000, seed: int = 0) -> list[tuple[str, str]]:
    """Return n (topic, sentence) pairs, topics balanced to within one, in seeded order."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    names = topics()
    base, extra = divmod(n, len(names))
    pairs = []
    for i, name in enumerate(names):
        pairs.extend((name, s) for s in sentences_by_topic(name, base + (i < extra), seed))
    return [pairs[i] for i in _rng(seed, "mix").permutation(len(pairs))]


def sentences(n: int = 3000, seed: int = 0) -> list[str]:
    """Return n distinct sentences spread evenly over all topics, deterministic for a seed."""
    return [sentence for _, sentence in labelled(n, seed)]
