//! Refining Face Mesh where it is weakest: the inner lip lines of an open mouth. On a smile
//! that shows teeth, the mesh's shape prior can put the upper lip's inner line on the skin
//! above the lip and the lower one inside the lower lip. Here the mouth's inside is found
//! column by column (teeth: bright and colourless; the gap: dark) and the inner lines are set
//! on its edges, so a recipe that must not open the mouth pins the right place. The outer
//! lines stay the mesh's (they enclose the vermilion), pushed out if an inner line passed them.

use image::RgbImage;

use super::{Frame, Landmarks, regions as r};
use crate::face::skin::{SkinModel, ycbcr};

/// Sampling step along a column, mm.
const STEP: f32 = 0.25;

/// Whether the pixel at face coordinates `(u, v)` is the inside of the mouth: teeth (bright,
/// nearly colourless) or the dark gap. `None` outside the photo.
fn inside(img: &RgbImage, f: &Frame, skin_y: f32, u: f32, v: f32) -> Option<bool> {
    let c = f.at(u, v);
    let (x, y) = (c.x.round() as i64, c.y.round() as i64);
    if x < 0 || y < 0 || x >= img.width() as i64 || y >= img.height() as i64 {
        return None;
    }
    let (l, cb, cr) = ycbcr(img.get_pixel(x as u32, y as u32).0);
    let chroma = (cb - 128.0).abs() + (cr - 128.0).abs();
    Some(l < 0.45 * skin_y || (l > (1.08 * skin_y).max(140.0) && chroma < 22.0))
}

/// The mouth's inside in one column: the longest run of inside samples within 6 mm of the
/// mesh's lip line, at least 1 mm long, as `(top, bottom)` (mm).
fn opening(img: &RgbImage, f: &Frame, skin_y: f32, u: f32, line: f32) -> Option<(f32, f32)> {
    let (lo, hi) = (line - 6.0, line + 6.0);
    let n = ((hi - lo) / STEP) as usize + 1;
    let flags: Vec<bool> = (0..n)
        .map(|k| inside(img, f, skin_y, u, lo + k as f32 * STEP))
        .collect::<Option<_>>()?;
    let mut best: Option<(usize, usize)> = None;
    let mut k = 0;
    while k < n {
        if flags[k] {
            let s = k;
            while k + 1 < n && flags[k + 1] {
                k += 1;
            }
            if best.is_none_or(|(a, b)| k - s > b - a) {
                best = Some((s, k));
            }
        }
        k += 1;
    }
    let (s, e) = best?;
    let (top, bottom) = (lo + s as f32 * STEP, lo + (e + 1) as f32 * STEP);
    (bottom - top >= 1.0).then_some((top, bottom))
}

/// Sets the inner lip lines on the edges of an open mouth (when at least four of the nine
/// inner columns see one); a closed mouth keeps the mesh's lines.
pub(crate) fn lips(img: &RgbImage, lm: &mut Landmarks) {
    let f = lm.frame();
    let skin_y = SkinModel::learn(img, lm).luminance();
    let n = r::UPPER_LIP_INNER.len();
    let found: Vec<Option<(f32, f32)>> = (0..n)
        .map(|j| {
            if j == 0 || j == n - 1 {
                return None;
            }
            let (ui, vi) = f.local(lm.points[r::UPPER_LIP_INNER[j]]);
            let (uo, vo) = f.local(lm.points[r::LOWER_LIP_INNER[j]]);
            opening(img, &f, skin_y, (ui + uo) / 2.0, (vi + vo) / 2.0)
        })
        .collect();
    if found.iter().flatten().count() < 4 {
        return;
    }
    for (j, o) in found.iter().enumerate() {
        let Some((top, bottom)) = *o else { continue };
        for (inner, outer, v, dir) in [
            (r::UPPER_LIP_INNER[j], r::UPPER_LIP_OUTER[j], top, -1.0f32),
            (r::LOWER_LIP_INNER[j], r::LOWER_LIP_OUTER[j], bottom, 1.0),
        ] {
            let (u, _) = f.local(lm.points[inner]);
            lm.points[inner] = f.at(u, v);
            let (uo, vo) = f.local(lm.points[outer]);
            if (vo - v) * dir < 1.0 {
                lm.points[outer] = f.at(uo, v + dir * 1.0);
            }
        }
    }
}
