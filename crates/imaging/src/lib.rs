//! Afterview's image work: face location, the local preview engine, labels and
//! composites.
//!
//! Job: turn bytes and values into bytes. This crate knows nothing of tokio, HTTP, SQL or Redis;
//! every function is synchronous and CPU-bound (callers run it off their async threads).
//!
//! Invariants:
//! - **Deterministic**: the same photo, procedure, intensity and landmarks give byte-identical
//!   output (no randomness, fixed evaluation order, fixed PNG settings).
//! - **Local**: pixels outside the treated region are never written ([`Simulated::region`]);
//!   the label touches only its corner box.
//! - **Honest**: no face, no preview ([`face::FaceError::NoFace`]) rather than a distorted one.

pub mod face;
pub mod procedures;
pub mod render;
pub mod warp;

use afterview_core::ErrorCode;
use afterview_core::tasks::{ControlPoints, Intensity};
use image::RgbImage;

pub use afterview_intake as intake;
pub use afterview_intake::{IntakeError, Limits};
pub use face::{FaceError, Landmarks};
pub use warp::Rect;

/// Identifies the local engine's algorithm in stored previews (bump when output changes).
pub const ENGINE_VERSION: &str = "afterview-local/1";

/// The default corner label.
pub const DEFAULT_LABEL: &str = "SIMULATION";

/// What can go wrong making a preview.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImagingError {
    /// The photo could not be read.
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// No usable face.
    #[error(transparent)]
    Face(#[from] FaceError),
    /// The procedure has no recipe.
    #[error("unknown procedure {0:?}")]
    UnknownProcedure(String),
}

impl ImagingError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Intake(e) => e.code(),
            Self::Face(FaceError::NoFace) => ErrorCode::NoFaceDetected,
            Self::Face(FaceError::BadControlPoints(_)) => ErrorCode::InvalidControlPoints,
            Self::UnknownProcedure(_) => ErrorCode::UnknownProcedure,
        }
    }
}

/// A simulated photo.
#[derive(Debug, Clone)]
pub struct Simulated {
    /// The photo after the procedure (without a label).
    pub image: RgbImage,
    /// The pixels that may differ from the input.
    pub region: Rect,
}

/// Applies `procedure` to `photo` at `intensity` for the face at `lm`.
pub fn simulate(
    photo: &RgbImage,
    procedure: &str,
    intensity: Intensity,
    lm: &Landmarks,
) -> Result<Simulated, ImagingError> {
    let plan = procedures::plan(procedure, lm, intensity)
        .ok_or_else(|| ImagingError::UnknownProcedure(procedure.to_owned()))?;
    let (mut image, mut region) = warp::apply(photo, &plan.deforms);
    if let Some(s) = &plan.smoothing {
        let (smoothed, r) = warp::smooth(&image, &s.mask, s.radius, s.sigma, s.strength);
        image = smoothed;
        region = region.union(r);
    }
    Ok(Simulated { image, region })
}

/// A soft mask (0-1 per pixel, row-major) of where `procedure` acts: used to blend a generated
/// picture back into the photo only there, so identity elsewhere is kept.
pub fn treatment_mask(
    width: u32,
    height: u32,
    procedure: &str,
    intensity: Intensity,
    lm: &Landmarks,
) -> Result<Vec<f32>, ImagingError> {
    let plan = procedures::plan(procedure, lm, intensity)
        .ok_or_else(|| ImagingError::UnknownProcedure(procedure.to_owned()))?;
    let mut mask = vec![0f32; (width * height) as usize];
    for d in &plan.deforms {
        let r = d.region(width, height);
        let (c, rad) = match *d {
            warp::Deform::Translate { center, radius, .. } => (center, radius),
            warp::Deform::Scale { center, rx, ry, .. } => (center, rx.max(ry)),
        };
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                let dist = face::Pt::new(x as f32, y as f32).minus(c).len() / rad;
                let w = if dist >= 1.0 {
                    0.0
                } else {
                    (1.0 - dist * dist).powi(2).sqrt()
                };
                let m = &mut mask[(y * width + x) as usize];
                *m = m.max(w);
            }
        }
    }
    if let Some(s) = &plan.smoothing {
        let r = s.mask.region(width, height);
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                let m = &mut mask[(y * width + x) as usize];
                *m = m.max(s.mask.at(x, y));
            }
        }
    }
    Ok(mask)
}

/// Blends `generated` into `photo` through `mask` (same size); pixels where the mask is 0 are
/// the photo's, untouched.
pub fn blend(photo: &RgbImage, generated: &RgbImage, mask: &[f32]) -> RgbImage {
    let mut out = photo.clone();
    let w = photo.width();
    for (x, y, p) in out.enumerate_pixels_mut() {
        let m = mask[(y * w + x) as usize];
        if m <= 0.0 {
            continue;
        }
        let g = generated.get_pixel(x, y).0;
        for (d, s) in p.0.iter_mut().zip(g) {
            *d = (*d as f32 * (1.0 - m) + s as f32 * m + 0.5) as u8;
        }
    }
    out
}

/// Finds the face (or uses the control points) and applies the procedure.
pub fn preview(
    photo: &RgbImage,
    procedure: &str,
    intensity: Intensity,
    control_points: Option<&ControlPoints>,
) -> Result<(Simulated, Landmarks), ImagingError> {
    if procedures::plan(
        procedure,
        &Landmarks::from_box(&face::FaceBox {
            x: 0.0,
            y: 0.0,
            w: 10.0,
            h: 10.0,
            score: 0.0,
        }),
        intensity,
    )
    .is_none()
    {
        return Err(ImagingError::UnknownProcedure(procedure.to_owned()));
    }
    let lm = face::locate(photo, control_points)?;
    Ok((simulate(photo, procedure, intensity, &lm)?, lm))
}
