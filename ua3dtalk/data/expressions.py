"""The face rig: landmark displacement fields for speech and emotion, and rendering.

Every movement is an *action*: a displacement field over the 478 landmarks for
unit strength, built once from the rest landmarks in a face frame (x along the
eyes, y down, unit = inter-ocular distance), so it works for any portrait.
Emotions are weighted sums of facial actions (after FACS: brows, lids, cheeks,
nose, mouth corners) plus speech prosody; visemes drive the jaw and lips.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ua3dtalk.config import EMOTIONS
from ua3dtalk.data import landmarks as lmk
from ua3dtalk.data.face_warp import Portrait, Warper
from ua3dtalk.data.mouth import paint_mouth
from ua3dtalk.data.speech import Prosody

# facial actions per emotion at full intensity; "jaw" adds a constant jaw opening,
# "press" narrows speech mouth opening
EMOTION_ACTIONS: dict[str, dict[str, float]] = {
    "neutral": {},
    "angry": {"brow_lower": 1.0, "lid_tighten": 0.6, "upper_lid_raise": 0.3, "lip_press": 1.0, "nose_wrinkle": 0.3},
    "contempt": {"contempt_corner": 1.0, "lid_tighten": 0.3, "brow_lower": 0.2},
    "disgusted": {"nose_wrinkle": 1.0, "upper_lip_raise": 1.0, "brow_lower": 0.6, "lid_tighten": 0.5,
                  "corner_depress": 0.4},
    "fear": {"brow_raise": 0.6, "brow_inner_raise": 0.6, "brow_knit": 0.5, "upper_lid_raise": 1.0,
             "lip_stretch": 1.0, "jaw": 0.12},
    "happy": {"corner_pull": 1.0, "cheek_raise": 1.0, "lid_tighten": 0.4},
    "sad": {"brow_inner_raise": 1.0, "brow_knit": 0.3, "corner_depress": 1.0, "upper_lid_droop": 0.6},
    "surprised": {"brow_raise": 1.0, "upper_lid_raise": 1.0, "jaw": 0.3},
}
PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(rate=160, pitch=50, pitch_range=50, volume=100),
    "angry": Prosody(rate=178, pitch=44, pitch_range=80, volume=165),
    "contempt": Prosody(rate=140, pitch=40, pitch_range=30, volume=95),
    "disgusted": Prosody(rate=135, pitch=38, pitch_range=40, volume=105),
    "fear": Prosody(rate=195, pitch=72, pitch_range=75, volume=90),
    "happy": Prosody(rate=178, pitch=66, pitch_range=85, volume=125),
    "sad": Prosody(rate=120, pitch=34, pitch_range=18, volume=72),
    "surprised": Prosody(rate=168, pitch=76, pitch_range=95, volume=130),
}
JAW_OPEN = 0.32       # jaw drop at full opening, inter-ocular units
LIPS_SEALED = 0.08    # openings below this keep the lips together


def prosody_for(emotion: str, level: int) -> Prosody:
    """Prosody moves from neutral toward the emotion's with intensity level/3."""
    _check(emotion, level)
    a, b, s = PROSODY["neutral"], PROSODY[emotion], level / 3.0
    mix = lambda x, y: int(round(x + (y - x) * s))  # noqa: E731
    return Prosody(mix(a.rate, b.rate), mix(a.pitch, b.pitch), mix(a.pitch_range, b.pitch_range), mix(a.volume, b.volume))


def _check(emotion: str, level: int) -> None:
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    if level not in (1, 2, 3):
        raise ValueError(f"emotion level must be 1, 2 or 3, got {level}")


@dataclass(frozen=True)
class FacePose:
    """Everything that shapes one frame: mouth (0..1 each), eye openness, emotion."""

    open: float = 0.0
    round: float = 0.0
    spread: float = 0.0
    fv: float = 0.0
    eye_open: float = 1.0
    emotion: str = "neutral"
    level: int = 1


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class FaceRig:
    """Moves a portrait's landmarks for a ``FacePose`` and renders the frame."""

    def __init__(self, portrait: Portrait):
        self.portrait = portrait
        rest = portrait.landmarks.astype(np.float64)
        self.rest = rest
        eye_r, eye_l = rest[list(lmk.RIGHT_IRIS)].mean(0), rest[list(lmk.LEFT_IRIS)].mean(0)
        self.unit = float(np.linalg.norm(eye_l - eye_r))
        self.ax = (eye_l - eye_r) / self.unit
        self.ay = np.array([-self.ax[1], self.ax[0]])
        self.mouth_center = 0.5 * (rest[lmk.UPPER_LIP_CENTER] + rest[lmk.LOWER_LIP_CENTER])
        rel = (rest - self.mouth_center) / self.unit
        self.u, self.v = rel @ self.ax, rel @ self.ay
        self._lip_groups()
        self.actions = self._build_actions()
        self.warper = Warper(portrait.image, rest)

    # ----- geometry helpers -------------------------------------------------------
    def _vec(self, du: np.ndarray | float, dv: np.ndarray | float) -> np.ndarray:
        """Face-frame displacements (inter-ocular units) -> pixels [478, 2]."""
        du = np.broadcast_to(np.asarray(du, np.float64), (lmk.N_LANDMARKS,))
        dv = np.broadcast_to(np.asarray(dv, np.float64), (lmk.N_LANDMARKS,))
        return (du[:, None] * self.ax + dv[:, None] * self.ay) * self.unit

    def _near(self, group: tuple[int, ...] | list[int], radius: float) -> np.ndarray:
        """Soft membership: 1 on the group, Gaussian falloff with distance to it (face units)."""
        pts = np.stack([self.u, self.v], 1)
        d = np.linalg.norm(pts[:, None] - pts[list(group)][None], axis=-1).min(1)
        return np.exp(-0.5 * (d / radius) ** 2)

    def _lip_groups(self) -> None:
        """Split lip-region landmarks into upper and lower by the inner lip midline."""
        import cv2

        outer = np.concatenate([self.rest[list(lmk.LIPS_UPPER_OUTER)], self.rest[list(lmk.LIPS_LOWER_OUTER)][::-1]])
        inside = np.array([cv2.pointPolygonTest(outer.astype(np.float32), tuple(map(float, p)), True) >= -1.0
                           for p in self.rest])
        up_u, up_v = self.u[list(lmk.LIPS_UPPER_INNER)], self.v[list(lmk.LIPS_UPPER_INNER)]
        lo_v = self.v[list(lmk.LIPS_LOWER_INNER)]
        order = np.argsort(up_u)
        mid = np.interp(self.u, up_u[order], (0.5 * (up_v + lo_v))[order])
        self.rest_gap = np.interp(self.u, up_u[order], (lo_v - up_v)[order])  # inner-lip gap at each u
        corners = np.zeros(lmk.N_LANDMARKS, bool)
        corners[list(lmk.MOUTH_CORNERS)] = True
        self.lower_lip = inside & (self.v > mid) & ~corners
        self.upper_lip = inside & (self.v <= mid) & ~corners
        self.corners = corners
        self.mid = mid
        self.corner_u = float(np.abs(self.u[list(lmk.MOUTH_CORNERS)]).max())

    def _jaw_weight(self) -> np.ndarray:
        """How much each landmark follows the jaw: lower lip 1, upper lip 0, fading sideways."""
        below = _smoothstep((self.v - self.mid + 0.05) / 0.3)
        lateral = np.clip(1 - (self.u / 1.5) ** 2, 0.15, 1.0)
        w = below * lateral
        w[self.lower_lip] = 1.0
        w[self.upper_lip] = 0.0
        w[self.corners] = 0.45
        eyes = list(lmk.RIGHT_EYE_UPPER + lmk.RIGHT_EYE_LOWER + lmk.LEFT_EYE_UPPER + lmk.LEFT_EYE_LOWER
                    + lmk.RIGHT_IRIS + lmk.LEFT_IRIS)
        w[eyes] = 0.0
        return w

    def _build_actions(self) -> dict[str, np.ndarray]:
        u, v = self.u, self.v
        lips = self.lower_lip | self.upper_lip | self.corners
        lip_idx = np.flatnonzero(lips)
        side = np.sign(u)
        frozen = np.zeros(lmk.N_LANDMARKS, bool)  # eyes and lips are moved only by their own actions
        frozen[list(lmk.RIGHT_EYE_UPPER + lmk.RIGHT_EYE_LOWER + lmk.LEFT_EYE_UPPER + lmk.LEFT_EYE_LOWER
                    + lmk.RIGHT_IRIS + lmk.LEFT_IRIS + lmk.RIGHT_EYE_CORNERS + lmk.LEFT_EYE_CORNERS)] = True
        skin = ~(frozen | lips)
        jaw = self._jaw_weight()
        center_profile = np.clip(1 - (u / max(self.corner_u, 1e-3)) ** 2, 0, 1)
        a: dict[str, np.ndarray] = {}
        # canonical closed mouth: lips meet at the midline, whatever the portrait shows
        g = self.rest_gap
        close_v = np.where(self.upper_lip, g / 2, np.where(self.lower_lip, -g / 2, -jaw * g.max() / 2))
        close_v[self.corners | frozen] = 0.0
        a["close"] = self._vec(0.0, close_v)
        # speech
        a["open"] = self._vec(0.0, JAW_OPEN * jaw + np.where(self.upper_lip, -0.03 * center_profile, 0.0))
        near_lips = self._near(lip_idx, 0.15) * ~frozen
        a["round"] = self._vec(-0.35 * u * near_lips, np.where(self.upper_lip, -0.015, np.where(self.lower_lip, 0.02, 0.0)) * center_profile)
        a["spread"] = self._vec(0.12 * u / max(self.corner_u, 1e-3) * near_lips, -0.01 * near_lips * (~lips))
        a["fv"] = self._vec(0.0, np.where(self.upper_lip, -0.06 * (0.3 + 0.7 * center_profile), 0.0)
                            + np.where(self.lower_lip, -0.015, 0.0))
        # brows (skin around them follows; eyelids stay)
        brows = list(lmk.RIGHT_BROW + lmk.LEFT_BROW)
        near_brows = self._near(brows, 0.18) * skin
        near_brows[brows] = 1.0
        a["brow_raise"] = self._vec(0.0, -0.14 * near_brows)
        inner = self._near(list(lmk.BROW_INNER), 0.15) * skin
        a["brow_inner_raise"] = self._vec(0.0, -0.12 * inner)
        a["brow_lower"] = self._vec(-0.05 * np.sign(u) * inner, 0.09 * near_brows)
        a["brow_knit"] = self._vec(-0.06 * np.sign(u) * inner, 0.02 * inner)
        # eyelids
        up_lids = list(lmk.RIGHT_EYE_UPPER + lmk.LEFT_EYE_UPPER)
        lo_lids = list(lmk.RIGHT_EYE_LOWER + lmk.LEFT_EYE_LOWER)
        crease = list(lmk.RIGHT_EYE_CREASE + lmk.LEFT_EYE_CREASE)
        lid_up = np.zeros(lmk.N_LANDMARKS)
        lid_up[up_lids] = 1.0
        lid_up[crease] = 0.6
        lid_lo = np.zeros(lmk.N_LANDMARKS)
        lid_lo[lo_lids] = 1.0
        a["upper_lid_raise"] = self._vec(0.0, -0.06 * lid_up)
        a["upper_lid_droop"] = self._vec(0.0, 0.05 * lid_up)
        a["lid_tighten"] = self._vec(0.0, -0.04 * lid_lo + 0.02 * lid_up)
        # cheeks and nose
        cheeks = self._near(list(lmk.RIGHT_CHEEK + lmk.LEFT_CHEEK), 0.15) * skin
        a["cheek_raise"] = self._vec(0.02 * side * cheeks, -0.07 * cheeks - 0.03 * lid_lo)
        wings = self._near(list(lmk.NOSE_WINGS), 0.08) * skin
        bridge = self._near(list(lmk.NOSE_BRIDGE), 0.06) * skin
        a["nose_wrinkle"] = self._vec(0.0, -0.06 * wings + 0.03 * bridge)
        # mouth corners and lips
        upper_soft = np.where(self.upper_lip, 1.0, 0.0) * (0.4 + 0.6 * center_profile)
        a["upper_lip_raise"] = self._vec(0.0, -0.07 * upper_soft - 0.03 * wings)
        corner_w = self._near(list(lmk.MOUTH_CORNERS), 0.2) * ~frozen
        a["corner_pull"] = self._vec(0.09 * side * corner_w, -0.1 * corner_w)
        a["corner_depress"] = self._vec(0.02 * side * corner_w, 0.09 * corner_w)
        a["lip_stretch"] = self._vec(0.12 * side * corner_w, 0.025 * corner_w)
        outer_up = np.isin(np.arange(lmk.N_LANDMARKS), lmk.LIPS_UPPER_OUTER) & ~self.corners
        outer_lo = np.isin(np.arange(lmk.N_LANDMARKS), lmk.LIPS_LOWER_OUTER) & ~self.corners
        a["lip_press"] = self._vec(-0.04 * u * near_lips, 0.03 * outer_up - 0.035 * outer_lo)
        one_side = corner_w * (u < 0)  # the subject's right corner (image left)
        a["contempt_corner"] = self._vec(0.08 * side * one_side, -0.08 * one_side)
        return a

    # ----- posing and rendering -----------------------------------------------------
    def landmarks(self, pose: FacePose) -> np.ndarray:
        """Landmarks [478, 2] (pixels) for a pose."""
        _check(pose.emotion, pose.level)
        s = pose.level / 3.0
        acts = EMOTION_ACTIONS[pose.emotion]
        opening = pose.open * (1 - 0.45 * s * acts.get("lip_press", 0.0)) + s * acts.get("jaw", 0.0)
        opening = float(np.clip((opening - LIPS_SEALED) / (1 - LIPS_SEALED), 0.0, 1.0))
        pts = self.rest + self.actions["close"] + opening * self.actions["open"]
        pts = pts + pose.round * self.actions["round"] + pose.spread * self.actions["spread"]
        pts = pts + pose.fv * self.actions["fv"]
        for name, weight in acts.items():
            if name in self.actions:
                pts = pts + s * weight * self.actions[name]
        return self._blink(pts, pose.eye_open)

    def _blink(self, pts: np.ndarray, eye_open: float) -> np.ndarray:
        """Close the eyes: lids and iris squeeze toward the lower lid (order kept, nothing folds)."""
        if eye_open >= 1.0:
            return pts
        ratio = 1.0 - 0.95 * (1.0 - float(eye_open))
        pts = pts.copy()
        for corners, upper, lower, iris, crease in (
                (lmk.RIGHT_EYE_CORNERS, lmk.RIGHT_EYE_UPPER, lmk.RIGHT_EYE_LOWER, lmk.RIGHT_IRIS, lmk.RIGHT_EYE_CREASE),
                (lmk.LEFT_EYE_CORNERS, lmk.LEFT_EYE_UPPER, lmk.LEFT_EYE_LOWER, lmk.LEFT_IRIS, lmk.LEFT_EYE_CREASE)):
            line = pts[[corners[0], *lower, corners[1]]]
            lu, lv = line @ self.ax, line @ self.ay
            order = np.argsort(lu)
            for group, amount in ((upper, 1.0), (iris, 1.0), (crease, 0.3)):
                idx = list(group)
                pu, pv = pts[idx] @ self.ax, pts[idx] @ self.ay
                low = np.interp(pu, lu[order], lv[order])
                shift = (low - pv) * (1.0 - ratio) * amount
                pts[idx] += shift[:, None] * self.ay
        return pts

    def render(self, pose: FacePose) -> tuple[np.ndarray, np.ndarray]:
        """(RGB frame [S, S, 3] uint8, landmarks [478, 2] float32) for a pose."""
        pts = self.landmarks(pose)
        frame = self.warper.warp(pts, self.rest)
        teeth = self.rest[list(lmk.LIPS_UPPER_INNER)] + self.actions["close"][list(lmk.LIPS_UPPER_INNER)]
        teeth = teeth + 0.02 * self.unit * self.ay
        paint_mouth(frame, pts, teeth, self.unit)
        return frame, pts.astype(np.float32)
