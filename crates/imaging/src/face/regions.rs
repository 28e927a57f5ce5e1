//! Named groups of Face Mesh indices (MediaPipe's canonical numbering; "right"/"left" are the
//! subject's, so the subject's right eye is on the image's left). Outlines come from
//! MediaPipe's `face_mesh_connections` (lips, eyes, brows, oval, nose) and the Iris model's
//! eye rings; each list runs along its outline.

/// Face outline, clockwise from the top of the forehead (10) down the subject's left side to
/// the menton (152) and up the right side.
pub const FACE_OVAL: [usize; 36] = [
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
    148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
];

/// The jawline from the subject's right cheek (at the ear) to the left one, through the chin.
pub const JAWLINE: [usize; 21] = [
    234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361,
    323, 454,
];

/// Outer lip outline, upper: right corner (61) over the cupid's bow (0) to the left corner (291).
pub const UPPER_LIP_OUTER: [usize; 11] = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291];
/// Outer lip outline, lower, right corner to left corner.
pub const LOWER_LIP_OUTER: [usize; 11] = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291];
/// Inner lip line, upper (the upper lip's lower edge), right to left.
pub const UPPER_LIP_INNER: [usize; 11] = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308];
/// Inner lip line, lower (the lower lip's upper edge), right to left.
pub const LOWER_LIP_INNER: [usize; 11] = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308];
/// Mouth corners (right, left).
pub const MOUTH_CORNERS: [usize; 2] = [61, 291];
/// Upper lip: top of the cupid's bow, middle of the inner edge.
pub const UPPER_LIP_MID: (usize, usize) = (0, 13);
/// Lower lip: middle of the inner edge, bottom of the vermilion.
pub const LOWER_LIP_MID: (usize, usize) = (14, 17);

/// Nose tip (pronasale).
pub const NOSE_TIP: usize = 1;
/// Columella base (subnasale).
pub const SUBNASALE: usize = 2;
/// Nasal bridge, from between the eyes (168) down to the tip.
pub const NOSE_BRIDGE: [usize; 6] = [168, 6, 197, 195, 5, 4];
/// Widest points of the alae (right, left).
pub const ALAR_WIDEST: [usize; 2] = [129, 358];
/// The subject's right ala, from the tip round the wing to the nostril base.
pub const RIGHT_ALA: [usize; 8] = [45, 220, 115, 48, 64, 98, 240, 75];
/// The subject's left ala.
pub const LEFT_ALA: [usize; 8] = [275, 440, 344, 278, 294, 327, 460, 305];
/// Points round the nostrils and alar bases (right then left), for masks.
pub const NOSTRILS: [usize; 12] = [98, 97, 2, 326, 327, 294, 278, 48, 64, 240, 460, 79];

/// Menton (lowest point of the chin).
pub const MENTON: usize = 152;
/// Chin pad, front, between the lower lip's crease and the menton.
pub const CHIN: [usize; 9] = [18, 200, 199, 175, 152, 83, 313, 201, 421];

/// Eye outline, subject's right eye (image left): lower lid from the outer corner (33) to the
/// inner corner (133), then the upper lid back.
pub const RIGHT_EYE_RING: [usize; 16] = [
    33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246,
];
/// Eye outline, subject's left eye: outer corner (263) to inner (362) along the lower lid,
/// then the upper lid back.
pub const LEFT_EYE_RING: [usize; 16] = [
    263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466,
];
/// Upper lid margin, outer corner to inner corner (right eye, left eye).
pub const UPPER_LID: [[usize; 9]; 2] = [
    [33, 246, 161, 160, 159, 158, 157, 173, 133],
    [263, 466, 388, 387, 386, 385, 384, 398, 362],
];
/// Lower lid margin, outer to inner.
pub const LOWER_LID: [[usize; 9]; 2] = [
    [33, 7, 163, 144, 145, 153, 154, 155, 133],
    [263, 249, 390, 373, 374, 380, 381, 382, 362],
];
/// The Iris model's first ring above the lid margin (the lid platform), outer to inner.
pub const LID_FOLD: [[usize; 7]; 2] = [
    [247, 30, 29, 27, 28, 56, 190],
    [467, 260, 259, 257, 258, 286, 414],
];
/// The second ring above the lid (upper-lid skin below the brow: the hooding), outer to inner.
pub const LID_HOOD: [[usize; 7]; 2] = [
    [113, 225, 224, 223, 222, 221, 189],
    [342, 445, 444, 443, 442, 441, 413],
];
/// Rings below the eyes (lower lid skin, then upper cheek), outer to inner.
pub const UNDER_EYE: [[usize; 9]; 2] = [
    [130, 25, 110, 24, 23, 22, 26, 112, 243],
    [359, 255, 339, 254, 253, 252, 256, 341, 463],
];
/// The third ring below the eyes (upper cheek, below the lid's junction with it: the lower edge
/// of the tear trough and of under-eye bags), outer to inner.
pub const UNDER_EYE_LOW: [[usize; 9]; 2] = [
    [143, 111, 117, 118, 119, 120, 121, 128, 245],
    [372, 340, 346, 347, 348, 349, 350, 357, 465],
];
/// Brow, upper edge, tail (lateral) to head (medial), right then left.
pub const BROW_UPPER: [[usize; 5]; 2] = [[70, 63, 105, 66, 107], [300, 293, 334, 296, 336]];
/// Brow, lower edge, tail to head.
pub const BROW_LOWER: [[usize; 6]; 2] = [[46, 53, 52, 65, 55, 193], [276, 283, 282, 295, 285, 417]];
/// Brow tails (right, left).
pub const BROW_TAIL: [usize; 2] = [70, 300];

/// Jowls (right, left): the jawline below the mouth corners' level.
pub const JOWLS: [[usize; 4]; 2] = [[172, 136, 150, 149], [397, 365, 379, 378]];
/// Nasolabial folds, from beside the ala to beside the mouth corner (right, left).
pub const NASOLABIAL: [[usize; 5]; 2] = [[129, 203, 206, 216, 186], [358, 423, 426, 436, 410]];
/// Cheek centres (right, left).
pub const CHEEKS: [usize; 2] = [205, 425];
/// Forehead, low centre (glabella) to high.
pub const FOREHEAD: [usize; 3] = [9, 151, 10];
/// Face outline at the ears' level (right, left): where an ear attaches.
pub const EAR_ROOTS: [[usize; 4]; 2] = [[162, 127, 234, 93], [389, 356, 454, 323]];
