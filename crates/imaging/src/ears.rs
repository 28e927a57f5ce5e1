//! Finding the ears: Face Mesh stops at the face's outline, so an ear is found as a run of the
//! patient's skin colour that starts at the outline and ends in something else (hair,
//! background), row by row between the brow's and the nose's level.

use image::RgbImage;

use crate::face::skin::SkinModel;
use crate::face::{Frame, Landmarks, Pt, regions as r};

/// A found ear: per row (face-frame `v`, mm), where it starts at the face outline and where
/// its rim is (`u`, mm).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ear {
    /// `(v, u_root, u_rim)` per row, top to bottom, 1 mm apart.
    pub(crate) rows: Vec<(f32, f32, f32)>,
}

impl Ear {
    /// The ear and `margin` mm of its surroundings, as a polygon in image pixels.
    pub(crate) fn region(&self, f: &Frame, margin: f32) -> Vec<Pt> {
        let s = self.side();
        let (first, last) = (self.rows[0], self.rows[self.rows.len() - 1]);
        let mut poly = vec![f.at(first.1 - s * 2.0, first.0 - margin)];
        poly.extend(
            self.rows
                .iter()
                .map(|&(v, root, _)| f.at(root - s * 2.0, v)),
        );
        poly.push(f.at(last.1 - s * 2.0, last.0 + margin));
        poly.push(f.at(last.2 + s * margin, last.0 + margin));
        poly.extend(
            self.rows
                .iter()
                .rev()
                .map(|&(v, _, rim)| f.at(rim + s * margin, v)),
        );
        poly.push(f.at(first.2 + s * margin, first.0 - margin));
        poly
    }

    fn side(&self) -> f32 {
        let (_, root, rim) = self.rows[0];
        if rim < root { -1.0 } else { 1.0 }
    }
}

/// Share of ear-like pixels in a small square at face coordinates `(u, v)`.
fn skin_at(img: &RgbImage, f: &Frame, skin: &SkinModel, u: f32, v: f32) -> Option<f32> {
    let p = f.at(u, v);
    let half = (f.px(0.5)).max(0.5);
    let (x0, y0) = ((p.x - half).floor() as i64, (p.y - half).floor() as i64);
    let (x1, y1) = ((p.x + half).ceil() as i64, (p.y + half).ceil() as i64);
    if x0 < 0 || y0 < 0 || x1 >= img.width() as i64 || y1 >= img.height() as i64 {
        return None;
    }
    let mut acc = 0.0;
    let mut n = 0;
    for y in y0..=y1 {
        for x in x0..=x1 {
            acc += if skin.ear_like(img.get_pixel(x as u32, y as u32).0) {
                1.0
            } else {
                0.0
            };
            n += 1;
        }
    }
    Some(acc / n as f32)
}

/// Looks for the ear on `side` (0: the subject's right, on the image's left).
pub(crate) fn find(
    img: &RgbImage,
    lm: &Landmarks,
    f: &Frame,
    skin: &SkinModel,
    side: usize,
) -> Option<Ear> {
    let s = if side == 0 { -1.0 } else { 1.0 };
    let outline = outline_side(lm, f, s)?;
    let v_top = f.local(lm.points[r::BROW_TAIL[side]]).1 - 3.0;
    let v_bottom = f.local(lm.points[r::SUBNASALE]).1 + 8.0;
    let mut rows = vec![];
    let mut total = 0;
    let mut v = v_top;
    while v <= v_bottom {
        total += 1;
        let root = root_at(&outline, v);
        if let Some(w) = rim_width(img, f, skin, (root, s), v) {
            rows.push((v, root, root + s * w));
        }
        v += 1.0;
    }
    // An ear spans most of the rows between brow and nose and is at least 6 mm wide.
    if rows.len() * 10 < total * 4 || rows.len() < 12 {
        return None;
    }
    smooth_rim(&mut rows, s);
    let widest = rows
        .iter()
        .map(|&(_, a, b): &(f32, f32, f32)| (b - a).abs())
        .fold(0.0, f32::max);
    if widest < 6.0 {
        return None;
    }
    Some(Ear { rows })
}

/// The face outline on the side `s` (-1 image left, 1 right) as `(v, u)` sorted by `v`.
fn outline_side(lm: &Landmarks, f: &Frame, s: f32) -> Option<Vec<(f32, f32)>> {
    let mut outline: Vec<(f32, f32)> = r::FACE_OVAL
        .iter()
        .map(|&i| f.local(lm.points[i]))
        .filter(|(u, _)| u * s > 0.0)
        .map(|(u, v)| (v, u))
        .collect();
    outline.sort_by(|a, b| a.0.total_cmp(&b.0));
    (outline.len() >= 2).then_some(outline)
}

/// The outline's `u` at height `v`, interpolated.
fn root_at(outline: &[(f32, f32)], v: f32) -> f32 {
    let i = outline
        .partition_point(|p| p.0 < v)
        .clamp(1, outline.len() - 1);
    let (a, b) = (outline[i - 1], outline[i]);
    let t = ((v - a.0) / (b.0 - a.0).max(1e-3)).clamp(0.0, 1.0);
    a.1 + t * (b.1 - a.1)
}

/// How far (mm) the skin run touching the outline reaches outwards at height `v`: walking out
/// from 1 mm inside, allowed 4 mm gaps (the concha's and the helix's shadows). `None` unless
/// the run ends within 40 mm and is 3-35 mm wide.
fn rim_width(
    img: &RgbImage,
    f: &Frame,
    skin: &SkinModel,
    (root, s): (f32, f32),
    v: f32,
) -> Option<f32> {
    let step = 0.5;
    let mut rim = None;
    let mut gap = 0.0;
    let mut d = -1.0;
    while d <= 40.0 {
        match skin_at(img, f, skin, root + s * d, v)? {
            l if l >= 0.5 => {
                rim = Some(d);
                gap = 0.0;
            }
            _ => {
                gap += step;
                if gap > 4.0 {
                    return rim.filter(|w| (3.0..=35.0).contains(w));
                }
            }
        }
        d += step;
    }
    None
}

/// One smooth rim, not a jagged one (the rim's own edge is often lost in the shadows of the
/// helix): the ear's typical width (the 75th percentile of its rows), tapered to half at its
/// top and bottom.
fn smooth_rim(rows: &mut [(f32, f32, f32)], s: f32) {
    let mut widths: Vec<f32> = rows.iter().map(|&(_, a, b)| (b - a).abs()).collect();
    widths.sort_by(f32::total_cmp);
    let typical = widths[widths.len() * 3 / 4];
    let (v0, v1) = (rows[0].0, rows[rows.len() - 1].0);
    for row in rows.iter_mut() {
        let t = ((row.0 - v0) / (v1 - v0).max(1.0)).clamp(0.0, 1.0);
        let w = typical * (0.5 + 0.5 * (std::f32::consts::PI * t).sin());
        row.2 = row.1 + s * w;
    }
}
