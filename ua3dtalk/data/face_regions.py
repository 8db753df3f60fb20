"""Named groups of MediaPipe face-mesh landmarks (478-point topology with irises).

"Right"/"left" are the subject's: the subject's right eye is on the image's left.
Eyelid lists run from the outer to the inner eye corner, upper and lower paired.
"""
from __future__ import annotations

N_LANDMARKS = 478

LIPS_UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_CORNERS = (61, 291, 78, 308)
UPPER_LIP_CENTER, LOWER_LIP_CENTER = 13, 14  # inner lip midpoints

RIGHT_EYE_CORNERS, LEFT_EYE_CORNERS = (33, 133), (263, 362)
RIGHT_EYE_UPPER = (246, 161, 160, 159, 158, 157, 173)
RIGHT_EYE_LOWER = (7, 163, 144, 145, 153, 154, 155)
LEFT_EYE_UPPER = (466, 388, 387, 386, 385, 384, 398)
LEFT_EYE_LOWER = (249, 390, 373, 374, 380, 381, 382)
RIGHT_EYE_CREASE = (247, 30, 29, 27, 28, 56, 190)
LEFT_EYE_CREASE = (467, 260, 259, 257, 258, 286, 414)
RIGHT_IRIS = (468, 469, 470, 471, 472)
LEFT_IRIS = (473, 474, 475, 476, 477)

# brows from the outer end to the inner end, upper and lower rows
RIGHT_BROW = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55)
LEFT_BROW = (300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
BROW_INNER = (107, 66, 55, 65, 336, 296, 285, 295)

RIGHT_CHEEK = (50, 101, 118, 117, 123, 205, 187, 36)
LEFT_CHEEK = (280, 330, 347, 346, 352, 425, 411, 266)
NOSE_WINGS = (129, 49, 48, 64, 98, 102, 219, 218, 235, 358, 279, 278, 294, 327, 331, 439, 438, 455)
NOSE_BRIDGE = (6, 197, 195, 168)
NOSE_TIP = 1
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
