//! Face boxes: MediaPipe's BlazeFace (the 256×256 "back camera" model, for faces from a
//! selfie down to about 4 % of the photo's width), decoded as MediaPipe's SSD calculators do:
//! 896 anchors (16×16×2 at stride 16, 8×8×6 at stride 32), sigmoid scores, weighted
//! non-maximum suppression. Each box carries six keypoints (eyes, nose tip, mouth, tragions)
//! in image pixels.

use image::RgbImage;

use super::{FaceBox, Pt, models};

/// Model input side.
const SIDE: u32 = 256;
/// Scores below this are not faces (MediaPipe's default).
const MIN_SCORE: f32 = 0.5;
/// Boxes overlapping more than this are one face.
const NMS_IOU: f32 = 0.3;

/// Anchor centres in the unit square, in the model's output order.
fn anchors() -> Vec<(f32, f32)> {
    let mut out = Vec::with_capacity(896);
    for (grid, per_cell) in [(16usize, 2usize), (8, 6)] {
        for y in 0..grid {
            for x in 0..grid {
                let c = (
                    (x as f32 + 0.5) / grid as f32,
                    (y as f32 + 0.5) / grid as f32,
                );
                out.extend(std::iter::repeat_n(c, per_cell));
            }
        }
    }
    out
}

/// The photo scaled to fit `SIDE` and letterboxed (centred, black bars), as the model's
/// `[-1, 1]` input; returns the input and the letterbox (offset and scale of the photo inside
/// the unit square, as fractions of it).
fn letterbox(img: &RgbImage) -> (Vec<f32>, (f32, f32, f32)) {
    let (w, h) = img.dimensions();
    let long = w.max(h) as f32;
    let (sw, sh) = (
        ((w as f32 * SIDE as f32 / long).round() as u32).clamp(1, SIDE),
        ((h as f32 * SIDE as f32 / long).round() as u32).clamp(1, SIDE),
    );
    let small = super::resize(img, sw, sh);
    let (ox, oy) = ((SIDE - sw) / 2, (SIDE - sh) / 2);
    let mut t = vec![-1f32; (SIDE * SIDE * 3) as usize];
    for (x, y, p) in small.enumerate_pixels() {
        let at = (((y + oy) * SIDE + x + ox) * 3) as usize;
        for c in 0..3 {
            t[at + c] = p.0[c] as f32 / 127.5 - 1.0;
        }
    }
    // Unit-square coordinates of the photo's corner, and the part of the square its long side
    // spans.
    let s = SIDE as f32;
    (t, (ox as f32 / s, oy as f32 / s, sw.max(sh) as f32 / s))
}

/// A raw candidate: box (x0, y0, x1, y1) and keypoints in the unit square, with its score.
#[derive(Debug, Clone)]
struct Candidate {
    coords: [f32; 16],
    score: f32,
}

fn iou(a: &[f32; 16], b: &[f32; 16]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |c: &[f32; 16]| (c[2] - c[0]) * (c[3] - c[1]);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// MediaPipe's weighted NMS: each cluster of overlapping boxes becomes their score-weighted
/// average, with the best score.
fn weighted_nms(mut cands: Vec<Candidate>) -> Vec<Candidate> {
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out = vec![];
    while !cands.is_empty() {
        let best = cands.remove(0);
        // The best box is in its own cluster whatever its overlap with itself (a box whose
        // area rounds to zero overlaps nothing, itself included, and would be kept for ever).
        let (mut cluster, rest): (Vec<_>, Vec<_>) = cands
            .into_iter()
            .partition(|c| iou(&best.coords, &c.coords) > NMS_IOU);
        cluster.insert(0, best.clone());
        let total: f32 = cluster.iter().map(|c| c.score).sum();
        let mut coords = [0f32; 16];
        for c in &cluster {
            for (o, v) in coords.iter_mut().zip(c.coords) {
                *o += v * c.score / total;
            }
        }
        out.push(Candidate {
            coords,
            score: best.score,
        });
        cands = rest;
    }
    out
}

/// Detects faces, most confident first.
pub fn detect_faces(img: &RgbImage) -> Vec<FaceBox> {
    let (w, h) = img.dimensions();
    if w < 16 || h < 16 {
        return vec![];
    }
    let (input, (ox, oy, scale)) = letterbox(img);
    let Ok(out) = models().detector.run(&input) else {
        return vec![];
    };
    let (regressors, scores) = (&out[0].data, &out[1].data);
    let mut cands = vec![];
    for (i, &(ax, ay)) in anchors().iter().enumerate() {
        let raw = scores[i].clamp(-100.0, 100.0);
        let score = 1.0 / (1.0 + (-raw).exp());
        if score < MIN_SCORE {
            continue;
        }
        let r = &regressors[i * 16..(i + 1) * 16];
        let s = SIDE as f32;
        let (cx, cy, bw, bh) = (ax + r[0] / s, ay + r[1] / s, r[2] / s, r[3] / s);
        if bw <= 0.0 || bh <= 0.0 {
            continue;
        }
        let mut coords = [
            cx - bw / 2.0,
            cy - bh / 2.0,
            cx + bw / 2.0,
            cy + bh / 2.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ];
        for k in 0..6 {
            coords[4 + 2 * k] = ax + r[4 + 2 * k] / s;
            coords[5 + 2 * k] = ay + r[5 + 2 * k] / s;
        }
        cands.push(Candidate { coords, score });
    }
    // Unit square of the letterboxed input -> image pixels.
    let px = |u: f32, v: f32| {
        Pt::new(
            (u - ox) / scale * w.max(h) as f32,
            (v - oy) / scale * w.max(h) as f32,
        )
    };
    weighted_nms(cands)
        .into_iter()
        .map(|c| {
            let (p0, p1) = (px(c.coords[0], c.coords[1]), px(c.coords[2], c.coords[3]));
            let kp = |k: usize| px(c.coords[4 + 2 * k], c.coords[5 + 2 * k]);
            FaceBox {
                x: p0.x,
                y: p0.y,
                w: p1.x - p0.x,
                h: p1.y - p0.y,
                score: f64::from(c.score),
                keypoints: [kp(0), kp(1), kp(2), kp(3), kp(4), kp(5)],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_follow_the_model_layout() {
        let a = anchors();
        assert_eq!(a.len(), 896);
        assert_eq!(a[0], (0.5 / 16.0, 0.5 / 16.0));
        assert_eq!(a[1], a[0]);
        assert_eq!(a[512], (0.5 / 8.0, 0.5 / 8.0));
        assert_eq!(a[895], (7.5 / 8.0, 7.5 / 8.0));
    }

    #[test]
    fn overlapping_boxes_merge_by_score() {
        let mk = |x0: f32, s: f32| Candidate {
            coords: [
                x0,
                0.0,
                x0 + 1.0,
                1.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ],
            score: s,
        };
        let out = weighted_nms(vec![mk(0.0, 0.9), mk(0.1, 0.3), mk(5.0, 0.6)]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].score, 0.9);
        assert!((out[0].coords[0] - 0.025).abs() < 1e-6);
        assert_eq!(out[1].coords[0], 5.0);
        // A box whose area is zero (it overlaps nothing, not even itself) ends the loop too.
        let flat = Candidate {
            coords: [
                0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            ],
            score: 0.95,
        };
        let out = weighted_nms(vec![flat, mk(0.0, 0.9)]);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|c| c.coords.iter().all(|v| v.is_finite())));
    }
}
