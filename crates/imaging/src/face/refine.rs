//! Refining Face Mesh where it is weakest: the inner lip lines of an open mouth. On a smile
//! that shows teeth, the mesh's shape prior can put the upper lip's inner line on the skin
//! above the lip and the lower one inside the lower lip. Here the mouth's inside is found
//! column by column (teeth: bright and colourless; the gap: darker than the skin and than the
//! lips themselves, so dark lipstick is no gap) and the inner lines are set on its edges, so a
//! recipe that must not open the mouth pins the right place. A closed mouth (a seam of 1-2 mm,
//! or nothing) keeps the mesh's lines. The outer lines stay the mesh's (they enclose the
//! vermilion), pushed out if an inner line passed them.

use image::RgbImage;

use super::{Frame, Landmarks, regions as r};
use crate::face::skin::{SkinModel, ycbcr};

/// Sampling step along a column, mm.
const STEP: f32 = 0.25;

/// Whether the pixel at face coordinates `(u, v)` is the inside of the mouth: teeth (bright,
/// nearly colourless) or the dark gap, darker than `dark` (below the skin's and the lips' own
/// luminance: dark lipstick is not a gap). `None` outside the photo.
fn inside(img: &RgbImage, f: &Frame, (skin_y, dark): (f32, f32), u: f32, v: f32) -> Option<bool> {
    let (l, cb, cr) = ycbcr(pixel(img, f, u, v)?);
    let chroma = (cb - 128.0).abs() + (cr - 128.0).abs();
    Some(l < dark || (l > (1.08 * skin_y).max(140.0) && chroma < 22.0))
}

/// The photo's pixel at face coordinates `(u, v)`; `None` outside the photo.
fn pixel(img: &RgbImage, f: &Frame, u: f32, v: f32) -> Option<[u8; 3]> {
    let c = f.at(u, v);
    let (x, y) = (c.x.round() as i64, c.y.round() as i64);
    if x < 0 || y < 0 || x >= img.width() as i64 || y >= img.height() as i64 {
        return None;
    }
    Some(img.get_pixel(x as u32, y as u32).0)
}

/// The mouth's inside in one column: the longest run of inside samples within 6 mm of the
/// mesh's lip line, at least 1 mm long and ending inside that window on both sides (lips
/// above and below it), as `(top, bottom)` (mm). A run cut by the window is no mouth: a lip
/// in dark lipstick, a moustache.
fn opening(img: &RgbImage, f: &Frame, levels: (f32, f32), u: f32, line: f32) -> Option<(f32, f32)> {
    let (lo, hi) = (line - 6.0, line + 6.0);
    let n = ((hi - lo) / STEP) as usize + 1;
    let flags: Vec<bool> = (0..n)
        .map(|k| inside(img, f, levels, u, lo + k as f32 * STEP))
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
    if s == 0 || e == n - 1 {
        return None;
    }
    let (top, bottom) = (lo + s as f32 * STEP, lo + (e + 1) as f32 * STEP);
    (bottom - top >= 1.0).then_some((top, bottom))
}

/// The lips' own luminance: the median of samples across each lip's band between the mesh's
/// inner and outer lines (its middle half: the vermilion, whatever is beyond either line),
/// in the middle columns; `None` when none is in the photo.
fn lips_luminance(img: &RgbImage, f: &Frame, lm: &Landmarks) -> Option<f32> {
    let n = r::UPPER_LIP_OUTER.len();
    let mut ys = vec![];
    for j in 2..n - 2 {
        for (outer, inner) in [
            (r::UPPER_LIP_OUTER[j], r::UPPER_LIP_INNER[j]),
            (r::LOWER_LIP_OUTER[j], r::LOWER_LIP_INNER[j]),
        ] {
            let (uo, vo) = f.local(lm.points[outer]);
            let (ui, vi) = f.local(lm.points[inner]);
            for k in 1..=7 {
                let t = 0.25 + 0.5 * k as f32 / 8.0;
                let (u, v) = (uo + (ui - uo) * t, vo + (vi - vo) * t);
                if let Some(p) = pixel(img, f, u, v) {
                    ys.push(ycbcr(p).0);
                }
            }
        }
    }
    if ys.is_empty() {
        return None;
    }
    ys.sort_by(f32::total_cmp);
    Some(ys[ys.len() / 2])
}

/// The least median height of the columns' openings for a mouth to be open, mm: a closed
/// mouth's seam and its shadow are 1-2 mm, a smile that shows teeth several.
const MIN_OPENING: f32 = 2.5;

/// Whether the columns' openings are an open mouth's: seen in at least four columns, and
/// taller than a closed mouth's seam (their median height at least [`MIN_OPENING`]).
fn open_mouth(found: &[Option<(f32, f32)>]) -> bool {
    let mut heights: Vec<f32> = found.iter().flatten().map(|(t, b)| b - t).collect();
    if heights.len() < 4 {
        return false;
    }
    heights.sort_by(f32::total_cmp);
    heights[heights.len() / 2] >= MIN_OPENING
}

/// Sets the inner lip lines on the edges of an open mouth ([`open_mouth`]); a closed mouth
/// keeps the mesh's lines.
pub(crate) fn lips(img: &RgbImage, lm: &mut Landmarks) {
    let f = lm.frame();
    let skin_y = SkinModel::learn(img, lm).luminance();
    // The gap is darker than the skin and much darker than the lips: natural lips are well
    // above it, a dark lipstick sets it lower (its shadowed part by the seam is then no gap).
    let lips_y = lips_luminance(img, &f, lm).unwrap_or(skin_y);
    let levels = (skin_y, (0.45 * skin_y).min(0.55 * lips_y));
    let n = r::UPPER_LIP_INNER.len();
    let found: Vec<Option<(f32, f32)>> = (0..n)
        .map(|j| {
            if j == 0 || j == n - 1 {
                return None;
            }
            let (ui, vi) = f.local(lm.points[r::UPPER_LIP_INNER[j]]);
            let (uo, vo) = f.local(lm.points[r::LOWER_LIP_INNER[j]]);
            opening(img, &f, levels, (ui + uo) / 2.0, (vi + vo) / 2.0)
        })
        .collect();
    if !open_mouth(&found) {
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
