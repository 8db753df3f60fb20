"""Mouth shapes from a phoneme timeline, with co-articulation, and blinks.

Each phoneme has a target mouth shape and a *dominance* (how strongly it pulls
the mouth toward its target around its own time, after Cohen & Massaro). The
shape at time t is the dominance-weighted mean of the targets, so neighbours
blend smoothly and the mouth starts moving toward a sound before it begins
(anticipation). Bilabials (p, b, m) dominate strongly and narrowly: the lips
must close for them whatever surrounds them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ua3dtalk.data.speech import Phoneme

CHANNELS: tuple[str, ...] = ("open", "round", "spread", "fv")
REST = np.zeros(len(CHANNELS), np.float32)

# target (open, round, spread, fv) and dominance strength per phoneme class
_CONSONANTS: dict[str, tuple[tuple[float, float, float, float], float]] = {
    "p": ((0.0, 0.0, 0.0, 0.0), 12.0), "b": ((0.0, 0.0, 0.0, 0.0), 12.0), "m": ((0.0, 0.0, 0.0, 0.0), 12.0),
    "f": ((0.12, 0.0, 0.1, 1.0), 6.0), "v": ((0.12, 0.0, 0.1, 1.0), 6.0),
    "θ": ((0.22, 0.0, 0.2, 0.0), 2.0), "ð": ((0.2, 0.0, 0.2, 0.0), 1.5),
    "s": ((0.15, 0.0, 0.4, 0.0), 2.0), "z": ((0.15, 0.0, 0.4, 0.0), 2.0),
    "t": ((0.18, 0.0, 0.2, 0.0), 1.0), "d": ((0.18, 0.0, 0.2, 0.0), 1.0), "n": ((0.18, 0.0, 0.2, 0.0), 0.8),
    "l": ((0.25, 0.0, 0.1, 0.0), 0.8), "ɾ": ((0.2, 0.0, 0.1, 0.0), 0.6),
    "ʃ": ((0.2, 0.65, 0.0, 0.0), 3.0), "ʒ": ((0.2, 0.65, 0.0, 0.0), 3.0),
    "tʃ": ((0.2, 0.6, 0.0, 0.0), 3.0), "dʒ": ((0.2, 0.6, 0.0, 0.0), 3.0),
    "k": ((0.3, 0.0, 0.0, 0.0), 0.6), "g": ((0.3, 0.0, 0.0, 0.0), 0.6), "ɡ": ((0.3, 0.0, 0.0, 0.0), 0.6),
    "ŋ": ((0.25, 0.0, 0.0, 0.0), 0.6), "h": ((0.35, 0.0, 0.0, 0.0), 0.3), "x": ((0.3, 0.0, 0.0, 0.0), 0.6),
    "ɹ": ((0.2, 0.5, 0.0, 0.0), 1.5), "r": ((0.2, 0.5, 0.0, 0.0), 1.5), "w": ((0.1, 1.0, 0.0, 0.0), 4.0),
    "j": ((0.15, 0.0, 0.5, 0.0), 1.0), "ʔ": ((0.1, 0.0, 0.0, 0.0), 0.5),
}
_VOWELS: dict[str, tuple[float, float, float, float]] = {
    "a": (0.95, 0.0, 0.1, 0.0), "ɑ": (1.0, 0.0, 0.0, 0.0), "æ": (0.85, 0.0, 0.35, 0.0), "ʌ": (0.7, 0.0, 0.0, 0.0),
    "ɐ": (0.65, 0.0, 0.0, 0.0), "e": (0.5, 0.0, 0.45, 0.0), "ɛ": (0.6, 0.0, 0.35, 0.0),
    "i": (0.25, 0.0, 0.8, 0.0), "ɪ": (0.3, 0.0, 0.6, 0.0), "ᵻ": (0.3, 0.0, 0.5, 0.0),
    "o": (0.55, 0.85, 0.0, 0.0), "ɔ": (0.7, 0.7, 0.0, 0.0), "ɒ": (0.8, 0.5, 0.0, 0.0),
    "u": (0.25, 1.0, 0.0, 0.0), "ʊ": (0.3, 0.8, 0.0, 0.0), "ə": (0.4, 0.0, 0.0, 0.0), "ɜ": (0.45, 0.2, 0.0, 0.0),
    "ɚ": (0.4, 0.35, 0.0, 0.0), "ɘ": (0.4, 0.0, 0.0, 0.0), "ɵ": (0.45, 0.5, 0.0, 0.0),
}
_VOWEL_DOMINANCE = 1.5
_IGNORED = "ˈˌː.ʰ̩ˑ-"


def phoneme_class(name: str) -> str:
    """Coarse class used in tests and ground truth queries: bilabial, labiodental, open, rounded, spread, other."""
    core = "".join(c for c in name if c not in _IGNORED)
    if core in ("p", "b", "m"):
        return "bilabial"
    if core in ("f", "v"):
        return "labiodental"
    vowel = next((c for c in core if c in _VOWELS), None)
    if vowel is not None and core[0] in _VOWELS:
        open_, round_, spread, _ = _VOWELS[core[0]]
        if open_ >= 0.7 and round_ < 0.6:
            return "open"
        if round_ >= 0.8:
            return "rounded"
        if spread >= 0.6:
            return "spread"
    return "other"


@dataclass(frozen=True)
class _Segment:
    target: np.ndarray
    dominance: float
    start: float
    end: float


def _segments(phonemes: tuple[Phoneme, ...] | list[Phoneme]) -> list[_Segment]:
    """Split each phoneme into articulatory targets (a diphthong gets two halves)."""
    out: list[_Segment] = []
    for p in phonemes:
        core = "".join(c for c in p.name if c not in _IGNORED)
        if not core:
            continue
        if core in _CONSONANTS:
            target, dom = _CONSONANTS[core]
            out.append(_Segment(np.array(target, np.float32), dom, p.start, p.end))
            continue
        vowels = [c for c in core if c in _VOWELS]
        if vowels:
            bounds = np.linspace(p.start, p.end, len(vowels) + 1)
            for v, a, b in zip(vowels, bounds[:-1], bounds[1:]):
                out.append(_Segment(np.array(_VOWELS[v], np.float32), _VOWEL_DOMINANCE, float(a), float(b)))
            continue
        first = next((c for c in core if c in _CONSONANTS), None)  # e.g. "l̩" or unknown clusters
        target, dom = _CONSONANTS.get(first, ((0.3, 0.0, 0.0, 0.0), 0.5))
        out.append(_Segment(np.array(target, np.float32), dom, p.start, p.end))
    return out


def _pauses(phonemes: tuple[Phoneme, ...] | list[Phoneme], min_gap: float = 0.06) -> list[_Segment]:
    """Rest targets in silences (before, between and after phonemes): the mouth closes in pauses."""
    spans = sorted((p.start, p.end) for p in phonemes)
    if not spans:
        return []
    edges = [(-1e3, spans[0][0])] + [(a[1], b[0]) for a, b in zip(spans[:-1], spans[1:])] + [(spans[-1][1], 1e3)]
    return [_Segment(REST, 2.0, a, b) for a, b in edges if b - a >= min_gap]


def mouth_track(phonemes: tuple[Phoneme, ...] | list[Phoneme], times: np.ndarray) -> np.ndarray:
    """Mouth shape [len(times), 4] (open, round, spread, fv) at the given times (s).

    Dominance of a segment decays exponentially with distance from it; the decay
    is slower before the segment (anticipatory co-articulation) than after.
    A weak rest target everywhere closes the mouth in pauses.
    """
    segs = _segments(phonemes) + _pauses(phonemes)
    t = np.asarray(times, np.float64)[:, None]
    if not segs:
        return np.zeros((len(times), len(CHANNELS)), np.float32)
    start = np.array([s.start for s in segs])[None]
    end = np.array([s.end for s in segs])[None]
    strength = np.array([s.dominance for s in segs])[None]
    targets = np.stack([s.target for s in segs])
    before = np.clip(start - t, 0, None)  # time until the segment starts
    after = np.clip(t - end, 0, None)     # time since it ended
    # strong articulations (lip closure, lip-teeth contact) are also short-ranged
    reach = np.where(strength >= 4.0, 0.35, 1.0)
    dom = strength * np.exp(-before / (0.06 * reach) - after / (0.04 * reach))
    rest = 0.02 * np.ones((len(times), 1))
    weights = np.concatenate([dom, rest], axis=1)
    shape = weights[:, :-1] @ targets / weights.sum(1, keepdims=True)
    return shape.astype(np.float32)


def frame_phonemes(phonemes: tuple[Phoneme, ...] | list[Phoneme], times: np.ndarray) -> np.ndarray:
    """The phoneme sounding at each time ("" in silence)."""
    out = np.full(len(times), "", dtype=object)
    for p in phonemes:
        out[(times >= p.start) & (times < p.end)] = p.name
    return out.astype(str)


def blink_track(n_frames: int, fps: int, rng: np.random.Generator) -> np.ndarray:
    """Eye openness per frame: 1 open, 0 closed; blinks every 2-6 s lasting ~160 ms."""
    eye = np.ones(n_frames, np.float32)
    profile = np.array([0.45, 0.0, 0.35, 0.8], np.float32)
    f = int(rng.uniform(0.5, 2.5) * fps)
    while f < n_frames:
        depth = rng.uniform(0.9, 1.0)
        for k, v in enumerate(profile):
            if f + k < n_frames:
                eye[f + k] = min(eye[f + k], 1 - depth * (1 - v))
        f += int(rng.uniform(2.0, 6.0) * fps)
    return eye
