"""Speech with phoneme timing from espeak-ng, through its C library (ctypes).

The engine itself reports each phoneme's position in the audio it generates
(``espeakEVENT_PHONEME`` events when initialised with phoneme events), so the
timeline is exact rather than re-aligned after the fact.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

_LIB_NAMES = ("libespeak-ng.so.1", "libespeak-ng.so", "libespeak-ng.so.1.1.51")
# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_INIT_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED, _EVENT_WORD, _EVENT_SENTENCE, _EVENT_END, _EVENT_MSG_TERMINATED, _EVENT_PHONEME = 0, 1, 2, 5, 6, 7
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
        ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Prosody:
    """espeak-ng speech parameters: rate in words/min, pitch and range 0..100, volume 0..200."""

    rate: int = 160
    pitch: int = 50
    pitch_range: int = 50
    volume: int = 100


@dataclass(frozen=True)
class Phoneme:
    """One phoneme span of the audio, in seconds. ``name`` is IPA as espeak-ng spells it."""

    name: str
    start: float
    end: float


@dataclass(frozen=True)
class Speech:
    """Mono int16 audio with the engine's phoneme timeline (pauses are left out)."""

    audio: np.ndarray
    sample_rate: int
    phonemes: tuple[Phoneme, ...]

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


class _Engine:
    """The library is a process-wide singleton with global state: one lock guards it."""

    _lock = threading.Lock()
    _lib: ctypes.CDLL | None = None
    _sample_rate = 0

    @classmethod
    def lib(cls) -> tuple[ctypes.CDLL, int]:
        """The library, initialised once per process."""
        if cls._lib is None:
            lib = None
            for name in (*_LIB_NAMES, ctypes.util.find_library("espeak-ng")):
                if not name:
                    continue
                try:
                    lib = ctypes.CDLL(name)
                    break
                except OSError:
                    continue
            if lib is None:
                raise RuntimeError("libespeak-ng not found: install espeak-ng (Debian: apt-get install libespeak-ng1 espeak-ng-data)")
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                         ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 200, None,
                                         _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT)
            if rate <= 0:
                raise RuntimeError("espeak-ng failed to initialise (is espeak-ng-data installed?)")
            cls._lib, cls._sample_rate = lib, rate
        return cls._lib, cls._sample_rate


def _seed_libc() -> None:
    """espeak-ng draws from the C library's shared random generator (voice jitter), which
    other libraries in the process also advance; seeding it makes an utterance repeatable."""
    libc = ctypes.CDLL(None)
    libc.srand(0)
    libc.srandom(0)


def speak(text: str, prosody: Prosody = Prosody(), voice: str = "en-us") -> Speech:
    """Synthesize ``text`` and return its audio and phoneme spans.

    espeak-ng carries state from one utterance to the next (the output differs by
    a few samples), and re-initialising it in-process can deadlock in
    ``espeak_Terminate``; so each utterance is synthesized by a fresh engine in a
    short-lived child process, which makes the output depend on its inputs alone.
    """
    if not text.strip():
        raise ValueError("cannot speak an empty sentence")
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:  # one task: a fresh engine
        return pool.submit(_speak_here, text, prosody, voice).result()


def _speak_here(text: str, prosody: Prosody, voice: str) -> Speech:
    """Synthesize in this process. A phoneme ends where the next event (phoneme,
    word or sentence end) starts; pauses ("_" / "") are dropped."""
    with _Engine._lock:
        lib, sample_rate = _Engine.lib()
        chunks: list[np.ndarray] = []
        marks: list[tuple[int, float, str]] = []  # (type, seconds, name)

        def on_synth(wav: ctypes.POINTER(ctypes.c_short), n: int, events: ctypes.POINTER(_Event)) -> int:
            if n > 0 and wav:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                ev = events[i]
                name = ev.id.string.decode("utf-8", "replace") if ev.type == _EVENT_PHONEME else ""
                marks.append((ev.type, ev.audio_position / 1000.0, name))
                i += 1
            return 0

        callback = _CALLBACK(on_synth)  # kept alive until synthesis returns
        lib.espeak_SetSynthCallback(callback)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for param, value in ((_RATE, prosody.rate), (_PITCH, prosody.pitch), (_RANGE, prosody.pitch_range),
                             (_VOLUME, prosody.volume)):
            lib.espeak_SetParameter(param, int(value), 0)
        _seed_libc()
        data = text.encode("utf-8") + b"\0"
        if lib.espeak_Synth(data, len(data), 0, 1, 0, _CHARS_UTF8, None, None) != 0:
            raise RuntimeError(f"espeak-ng could not synthesize {text!r}")
        # no espeak_Synchronize(): in synchronous mode espeak_Synth has finished when it
        # returns, and Synchronize can spin forever waiting on an audio device that is not used
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    duration = len(audio) / sample_rate
    bounds = sorted({t for kind, t, _ in marks if kind in (_EVENT_PHONEME, _EVENT_WORD, _EVENT_END, _EVENT_MSG_TERMINATED)} | {duration})
    phonemes = []
    for kind, start, name in marks:
        name = name.strip()
        if kind != _EVENT_PHONEME or name in ("", "_", "_:", "_!", "||", "|"):
            continue
        end = next((b for b in bounds if b > start + 1e-6), duration)
        phonemes.append(Phoneme(name, start, min(end, duration)))
    return Speech(audio=audio.astype(np.int16), sample_rate=sample_rate, phonemes=tuple(phonemes))
