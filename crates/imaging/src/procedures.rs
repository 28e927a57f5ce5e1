//! Procedure recipes: each procedure is a few local deformations (and, for skin, masked
//! smoothing) placed in the face frame and scaled by the intensity. Distances are in
//! inter-ocular units, so a recipe fits any photo size; directions follow the frame, so a tilted
//! head is treated along its own axes.

use afterview_core::tasks::Intensity;

use crate::face::{Frame, Landmarks, Pt};
use crate::warp::{Deform, FaceEllipse, FaceMask};

/// What a procedure does to a photo.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Local deformations (their offsets add up).
    pub deforms: Vec<Deform>,
    /// Masked smoothing, for skin procedures.
    pub smoothing: Option<Smoothing>,
}

/// Masked edge-preserving smoothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Smoothing {
    /// Where.
    pub mask: FaceMask,
    /// Box radius in pixels.
    pub radius: u32,
    /// Intensity difference (0-255) above which a pixel counts as an edge and is kept.
    pub sigma: f32,
    /// 0-1.
    pub strength: f32,
}

/// The procedures the local engine knows, in catalog order.
pub const PROCEDURES: &[&str] = &[
    "rhinoplasty",
    "blepharoplasty",
    "facelift",
    "lip-augmentation",
    "chin-augmentation",
    "brow-lift",
    "otoplasty",
    "skin-resurfacing",
];

/// How much of each recipe an intensity applies.
pub fn factor(i: Intensity) -> f32 {
    match i {
        Intensity::Subtle => 0.5,
        Intensity::Moderate => 1.0,
        Intensity::Pronounced => 1.6,
    }
}

fn translate(f: &Frame, at: Pt, radius: f32, du: f32, dv: f32) -> Deform {
    Deform::Translate {
        center: at,
        radius: radius * f.iod,
        shift: f.vec(du, dv),
    }
}

/// The recipe of `procedure` for a face, or `None` for an unknown procedure.
pub fn plan(procedure: &str, lm: &Landmarks, intensity: Intensity) -> Option<Plan> {
    let f = lm.frame();
    let k = factor(intensity);
    let (_, nose_v) = f.local(lm.nose_tip);
    let (_, mouth_v) = f.local(lm.mouth());
    let mut deforms = vec![];
    let mut smoothing = None;
    match procedure {
        "rhinoplasty" => {
            // Narrow the alar base (each wing towards the midline) and refine the tip.
            for side in [-1.0f32, 1.0] {
                let wing = lm.nose_tip.plus(f.vec(side * 0.27, -0.04));
                deforms.push(translate(&f, wing, 0.30, -side * 0.05 * k, 0.0));
                let bridge = f.at(side * 0.11, nose_v * 0.55);
                deforms.push(translate(&f, bridge, 0.16, -side * 0.018 * k, 0.0));
            }
            deforms.push(Deform::Scale {
                center: lm.nose_tip,
                axis: f.ex,
                rx: 0.20 * f.iod,
                ry: 0.17 * f.iod,
                sx: 1.0 - 0.07 * k,
                sy: 1.0 - 0.03 * k,
            });
        }
        "blepharoplasty" => {
            // Raise the upper-lid fold, firm the lower lid.
            for eye in [lm.right_eye, lm.left_eye] {
                // Centred above the lid margin: the fold and the upper margin rise, the lower
                // margin stays, so the eye opens rather than moves.
                deforms.push(translate(
                    &f,
                    eye.plus(f.vec(0.0, -0.20)),
                    0.28,
                    0.0,
                    -0.040 * k,
                ));
                deforms.push(translate(
                    &f,
                    eye.plus(f.vec(0.0, 0.27)),
                    0.20,
                    0.0,
                    -0.018 * k,
                ));
            }
        }
        "facelift" => {
            // Lift the jowls up and in along the jawline; soften the nasolabial folds.
            for side in [-1.0f32, 1.0] {
                let jowl = f.at(side * 1.02, mouth_v + 0.22);
                deforms.push(translate(&f, jowl, 0.50, -side * 0.06 * k, -0.07 * k));
                let jaw = f.at(side * 0.74, mouth_v + 0.55);
                deforms.push(translate(&f, jaw, 0.38, -side * 0.035 * k, -0.045 * k));
            }
            smoothing = Some(Smoothing {
                mask: FaceMask {
                    frame: f,
                    include: vec![
                        FaceEllipse {
                            cu: -0.42,
                            cv: mouth_v - 0.18,
                            ru: 0.30,
                            rv: 0.42,
                        },
                        FaceEllipse {
                            cu: 0.42,
                            cv: mouth_v - 0.18,
                            ru: 0.30,
                            rv: 0.42,
                        },
                    ],
                    exclude: vec![FaceEllipse {
                        cu: 0.0,
                        cv: mouth_v,
                        ru: 0.48,
                        rv: 0.20,
                    }],
                },
                radius: radius_px(&f, 0.05),
                sigma: 14.0,
                strength: (0.35 * k).min(0.8),
            });
        }
        "lip-augmentation" => {
            // Fuller lips: magnify mostly vertically; the corners stay nearly fixed.
            deforms.push(Deform::Scale {
                center: lm.mouth(),
                axis: f.ex,
                rx: 0.60 * f.iod,
                ry: 0.34 * f.iod,
                sx: 1.0 + 0.04 * k,
                sy: 1.0 + 0.28 * k,
            });
        }
        "chin-augmentation" => {
            // Longer, more projected chin.
            deforms.push(translate(&f, lm.chin, 0.55, 0.0, 0.09 * k));
            deforms.push(Deform::Scale {
                center: lm.chin.plus(f.vec(0.0, -0.12)),
                axis: f.ex,
                rx: 0.40 * f.iod,
                ry: 0.30 * f.iod,
                sx: 1.0 + 0.02 * k,
                sy: 1.0 + 0.08 * k,
            });
        }
        "brow-lift" => {
            // Raise the brows, the tails a little more.
            for (eye, side) in [(lm.right_eye, -1.0f32), (lm.left_eye, 1.0)] {
                deforms.push(translate(
                    &f,
                    eye.plus(f.vec(0.0, -0.36)),
                    0.42,
                    0.0,
                    -0.065 * k,
                ));
                deforms.push(translate(
                    &f,
                    eye.plus(f.vec(side * 0.26, -0.32)),
                    0.28,
                    0.0,
                    -0.035 * k,
                ));
            }
        }
        "otoplasty" => {
            // Set the ears closer to the head.
            for side in [-1.0f32, 1.0] {
                deforms.push(translate(
                    &f,
                    f.at(side * 1.42, 0.40),
                    0.55,
                    -side * 0.10 * k,
                    0.0,
                ));
            }
        }
        "skin-resurfacing" => {
            let mv = mouth_v;
            smoothing = Some(Smoothing {
                mask: FaceMask {
                    frame: f,
                    include: vec![
                        FaceEllipse {
                            cu: 0.0,
                            cv: 0.55,
                            ru: 1.22,
                            rv: 1.30,
                        },
                        FaceEllipse {
                            cu: 0.0,
                            cv: -0.62,
                            ru: 0.85,
                            rv: 0.40,
                        },
                    ],
                    exclude: vec![
                        FaceEllipse {
                            cu: -0.5,
                            cv: 0.0,
                            ru: 0.30,
                            rv: 0.19,
                        },
                        FaceEllipse {
                            cu: 0.5,
                            cv: 0.0,
                            ru: 0.30,
                            rv: 0.19,
                        },
                        FaceEllipse {
                            cu: -0.5,
                            cv: -0.36,
                            ru: 0.34,
                            rv: 0.13,
                        },
                        FaceEllipse {
                            cu: 0.5,
                            cv: -0.36,
                            ru: 0.34,
                            rv: 0.13,
                        },
                        FaceEllipse {
                            cu: 0.0,
                            cv: mv,
                            ru: 0.55,
                            rv: 0.24,
                        },
                        FaceEllipse {
                            cu: 0.0,
                            cv: nose_v + 0.04,
                            ru: 0.33,
                            rv: 0.14,
                        },
                    ],
                },
                radius: radius_px(&f, 0.06),
                sigma: 16.0,
                strength: (0.55 * k).min(0.9),
            });
        }
        _ => return None,
    }
    Some(Plan { deforms, smoothing })
}

fn radius_px(f: &Frame, units: f32) -> u32 {
    ((units * f.iod).round() as u32).max(1)
}
