//! Lays a generated picture (a generative model's edit of the photo) over the photo.
//!
//! A generative model answers at its own size and framing (Gemini 2.5 answers about 1024
//! pixels and picks its aspect ratio), and may move the face a little. Stretching its answer to
//! the photo's size would put the edited nose beside the photo's, and the blend would show
//! both. Instead the generated face's landmarks are matched to the photo's by a similarity
//! (scale, rotation, shift) fitted to the points the edit left where they were: the fit is
//! repeated on the best-fitting share of the 468 points, so the treated feature's own points,
//! which the edit moved, drop out. The picture is then resampled into the photo's frame.
//!
//! Invariants:
//! - The answer has the photo's size; a pixel the generated picture does not cover is the
//!   photo's own.
//! - An answer whose face does not match the photo's after the fit (another pose or
//!   expression, another person) is refused, never blended: it would show as a ghost. (Where
//!   the photo's landmarks are only the mean face fitted to a client's control points, the
//!   match cannot be judged and is not. For a face placed by control points, an answer in
//!   which the models see no face is resized to the photo, and only if it has the photo's
//!   shape.) With several faces in the answer, the one that fits the photo's is used.

use image::{Rgb, RgbImage};

use crate::face::{self, Landmarks, Pt, Source};
use crate::warp::{sample, to_u8};

/// The share of landmarks the final fit keeps (the best-fitting ones).
const KEEP: f64 = 0.6;

/// The largest misfit accepted, as a share of the photo's eye distance (the root mean square
/// distance of the kept landmarks after the fit): 2 %, about 1.3 mm. Measured on the test
/// portraits: the same face edited by the local engine, turned and reframed, fits within
/// 0.4 %; each portrait's face laid over the other's misses by 2.4-2.6 %.
pub const MAX_MISFIT: f32 = 0.02;

/// Why a generated picture cannot be laid over the photo.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegisterError {
    /// No face in the generated picture.
    #[error("the generated picture shows no face")]
    NoFace,
    /// The generated face does not match the photo's.
    #[error(
        "the generated face does not match the photo's (its landmarks are off by {:.1} % of the eye distance)",
        .0 * 100.0
    )]
    Mismatch(f32),
}

/// A generated picture in the photo's frame.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The generated picture resampled to the photo's size and framing.
    pub image: RgbImage,
    /// The fit's misfit (a share of the photo's eye distance).
    pub misfit: f32,
}

/// `q = [a -b; b a] p + t`: the similarity taking photo pixels to generated pixels.
#[derive(Debug, Clone, Copy)]
struct Similarity {
    a: f64,
    b: f64,
    tx: f64,
    ty: f64,
}

impl Similarity {
    fn apply(&self, p: Pt) -> (f64, f64) {
        let (x, y) = (f64::from(p.x), f64::from(p.y));
        (
            self.a * x - self.b * y + self.tx,
            self.b * x + self.a * y + self.ty,
        )
    }

    fn scale(&self) -> f64 {
        self.a.hypot(self.b)
    }

    /// The least-squares similarity taking `from[i]` to `to[i]` for `i` in `idx`.
    fn fit(from: &[Pt], to: &[Pt], idx: &[usize]) -> Option<Self> {
        let n = idx.len() as f64;
        let mean = |pts: &[Pt]| {
            let (sx, sy) = idx.iter().fold((0.0, 0.0), |(sx, sy), &i| {
                (sx + f64::from(pts[i].x), sy + f64::from(pts[i].y))
            });
            (sx / n, sy / n)
        };
        let (px, py) = mean(from);
        let (qx, qy) = mean(to);
        let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
        for &i in idx {
            let (ux, uy) = (f64::from(from[i].x) - px, f64::from(from[i].y) - py);
            let (vx, vy) = (f64::from(to[i].x) - qx, f64::from(to[i].y) - qy);
            dot += ux * vx + uy * vy;
            cross += ux * vy - uy * vx;
            norm += ux * ux + uy * uy;
        }
        if norm.is_nan() || norm <= 1e-6 {
            return None;
        }
        let (a, b) = (dot / norm, cross / norm);
        Some(Self {
            a,
            b,
            tx: qx - (a * px - b * py),
            ty: qy - (b * px + a * py),
        })
    }
}

/// Fits the similarity on the best-fitting landmarks (three rounds, each keeping the points
/// the previous fit placed best) and measures what is left, in photo pixels.
fn robust_fit(from: &[Pt], to: &[Pt]) -> Option<(Similarity, f64)> {
    let all: Vec<usize> = (0..from.len().min(to.len())).collect();
    let keep = ((all.len() as f64 * KEEP) as usize).max(3);
    let mut t = Similarity::fit(from, to, &all)?;
    let mut rms = f64::INFINITY;
    for _ in 0..3 {
        let mut by_error: Vec<(f64, usize)> = all
            .iter()
            .map(|&i| {
                let (x, y) = t.apply(from[i]);
                ((x - f64::from(to[i].x)).hypot(y - f64::from(to[i].y)), i)
            })
            .collect();
        by_error.sort_by(|a, b| a.0.total_cmp(&b.0));
        let kept: Vec<usize> = by_error[..keep].iter().map(|e| e.1).collect();
        t = Similarity::fit(from, to, &kept)?;
        let sum: f64 = kept
            .iter()
            .map(|&i| {
                let (x, y) = t.apply(from[i]);
                (x - f64::from(to[i].x)).powi(2) + (y - f64::from(to[i].y)).powi(2)
            })
            .sum();
        rms = (sum / keep as f64).sqrt() / t.scale();
    }
    Some((t, rms))
}

/// Lays `generated` over `photo`, whose face is `lm` (see the module's documentation).
pub fn register(
    photo: &RgbImage,
    lm: &Landmarks,
    generated: &RgbImage,
) -> Result<Registered, RegisterError> {
    // The mean face fitted to a client's control points is an estimate of where the features
    // are: matching it cannot tell another face from this one.
    let estimated = lm.source == Source::Template;
    // Every face in the answer, the one fitting the photo's best: with two people in the
    // picture, the patient's (control points may have placed the smaller one).
    let eyes = f64::from(lm.right_eye().minus(lm.left_eye()).len()).max(1.0);
    let best = face::detect_all(generated)
        .iter()
        .filter_map(|theirs| robust_fit(&lm.points, &theirs.points))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let Some((t, rms)) = best else {
        // A face the models do not see in the photo (placed by control points) is likely
        // unseen in the answer too: only an answer of the photo's shape can be placed then.
        return match lm.source {
            Source::Detected => Err(RegisterError::NoFace),
            Source::ControlPoints | Source::Template => {
                stretched(photo, generated).ok_or(RegisterError::NoFace)
            }
        };
    };
    let misfit = (rms / eyes) as f32;
    // A NaN misfit (degenerate points) is a mismatch too.
    if (misfit.is_nan() || misfit > MAX_MISFIT) && !estimated {
        return Err(RegisterError::Mismatch(misfit));
    }
    let (gw, gh) = (generated.width() as f64, generated.height() as f64);
    let image = RgbImage::from_fn(photo.width(), photo.height(), |x, y| {
        let (gx, gy) = t.apply(Pt::new(x as f32, y as f32));
        if gx < 0.0 || gy < 0.0 || gx > gw - 1.0 || gy > gh - 1.0 {
            return *photo.get_pixel(x, y);
        }
        Rgb(sample(generated, gx as f32, gy as f32).map(to_u8))
    });
    Ok(Registered { image, misfit })
}

/// For a photo whose face was placed by a client's control points and an answer where the
/// models see no face: the answer resized to the photo's size, if it has the photo's shape
/// (within 2 %); nothing else can place it.
fn stretched(photo: &RgbImage, generated: &RgbImage) -> Option<Registered> {
    let (w, h) = photo.dimensions();
    let (gw, gh) = generated.dimensions();
    let ratio = (f64::from(w) * f64::from(gh)) / (f64::from(h) * f64::from(gw)).max(1.0);
    if !(0.98..=1.02).contains(&ratio) {
        return None;
    }
    let image = image::imageops::resize(generated, w, h, image::imageops::FilterType::CatmullRom);
    Some(Registered { image, misfit: 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Vec<Pt> {
        (0..40)
            .map(|i| Pt::new((i % 8) as f32 * 13.0 + 5.0, (i / 8) as f32 * 17.0 + 3.0))
            .collect()
    }

    #[test]
    fn the_fit_recovers_a_similarity_and_ignores_moved_points() {
        let from = grid();
        let (s, c) = 0.2f32.sin_cos();
        let mut to: Vec<Pt> = from
            .iter()
            .map(|p| {
                Pt::new(
                    1.7 * (c * p.x - s * p.y) + 30.0,
                    1.7 * (s * p.x + c * p.y) - 12.0,
                )
            })
            .collect();
        // The edit moved a quarter of the points.
        for p in to.iter_mut().take(10) {
            p.x += 25.0;
        }
        let (t, rms) = robust_fit(&from, &to).unwrap();
        assert!((t.scale() - 1.7).abs() < 1e-4, "{}", t.scale());
        assert!(rms < 1e-3, "{rms}");
        let (x, y) = t.apply(from[20]);
        assert!((x - f64::from(to[20].x)).abs() < 1e-3 && (y - f64::from(to[20].y)).abs() < 1e-3);
    }

    #[test]
    fn degenerate_points_have_no_fit() {
        let same = vec![Pt::new(4.0, 4.0); 10];
        assert!(robust_fit(&same, &grid()).is_none());
    }
}
