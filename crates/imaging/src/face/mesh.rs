//! Dense landmarks: MediaPipe Face Mesh (468 points from a 192×192 face crop) and MediaPipe
//! Iris (71 eye and brow contour points and 5 iris points from a 64×64 eye crop), run on crops
//! rotated so the eyes are level, as MediaPipe's face and iris subgraphs do.

use image::RgbImage;

use super::{Iris, Pt, models};
use crate::warp::sample;

/// A square region of the photo, rotated by `angle` (radians, the direction of the eye line
/// in image coordinates).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Roi {
    pub(crate) center: Pt,
    pub(crate) side: f32,
    pub(crate) angle: f32,
}

impl Roi {
    /// The image point at crop coordinates `(u, v)` in `[0, 1]²`.
    fn to_image(self, u: f32, v: f32) -> Pt {
        let (s, c) = self.angle.sin_cos();
        let (x, y) = ((u - 0.5) * self.side, (v - 0.5) * self.side);
        Pt::new(self.center.x + x * c - y * s, self.center.y + x * s + y * c)
    }

    /// The smallest square ROI (rotated by `angle`) around `points`, scaled by `scale`.
    pub(crate) fn around(points: &[Pt], angle: f32, scale: f32) -> Roi {
        let (s, c) = angle.sin_cos();
        let (mut lo, mut hi) = (Pt::new(f32::MAX, f32::MAX), Pt::new(f32::MIN, f32::MIN));
        for p in points {
            let (x, y) = (p.x * c + p.y * s, -p.x * s + p.y * c);
            lo = Pt::new(lo.x.min(x), lo.y.min(y));
            hi = Pt::new(hi.x.max(x), hi.y.max(y));
        }
        let (mx, my) = ((lo.x + hi.x) / 2.0, (lo.y + hi.y) / 2.0);
        Roi {
            center: Pt::new(mx * c - my * s, mx * s + my * c),
            side: (hi.x - lo.x).max(hi.y - lo.y) * scale,
            angle,
        }
    }
}

/// The ROI resampled to `size × size` as a `[0, 1]` HWC tensor, mirrored when `flip`. When the
/// ROI is much larger than the crop, the region is first box-averaged down so that bilinear
/// sampling does not alias.
fn crop(img: &RgbImage, roi: Roi, size: u32, flip: bool) -> Vec<f32> {
    let factor = (roi.side / size as f32 / 1.5).floor().max(1.0) as u32;
    let (src, origin, k) = if factor > 1 {
        // Box-average the ROI's bounding box by `factor`.
        let r = roi.side * std::f32::consts::FRAC_1_SQRT_2 + 2.0;
        let x0 = (roi.center.x - r).floor().max(0.0) as u32;
        let y0 = (roi.center.y - r).floor().max(0.0) as u32;
        let x1 = ((roi.center.x + r).ceil().max(0.0) as u32).min(img.width());
        let y1 = ((roi.center.y + r).ceil().max(0.0) as u32).min(img.height());
        let (bw, bh) = (
            (x1.saturating_sub(x0)) / factor,
            (y1.saturating_sub(y0)) / factor,
        );
        if bw < 2 || bh < 2 {
            (None, Pt::default(), 1.0)
        } else {
            let n = (factor * factor) as f32;
            let small = RgbImage::from_fn(bw, bh, |x, y| {
                let mut acc = [0u32; 3];
                for dy in 0..factor {
                    for dx in 0..factor {
                        let p = img.get_pixel(x0 + x * factor + dx, y0 + y * factor + dy).0;
                        for c in 0..3 {
                            acc[c] += u32::from(p[c]);
                        }
                    }
                }
                image::Rgb(acc.map(|v| (v as f32 / n + 0.5) as u8))
            });
            // Pixel (i) of `small` is centred on original x0 + i*k + (k-1)/2.
            let f = factor as f32;
            (
                Some(small),
                Pt::new(x0 as f32 + (f - 1.0) / 2.0, y0 as f32 + (f - 1.0) / 2.0),
                f,
            )
        }
    } else {
        (None, Pt::default(), 1.0)
    };
    let img_ref = src.as_ref().unwrap_or(img);
    let n = size as f32;
    let mut t = Vec::with_capacity((size * size * 3) as usize);
    for y in 0..size {
        for x in 0..size {
            let xs = if flip { size - 1 - x } else { x };
            let p = roi.to_image((xs as f32 + 0.5) / n, (y as f32 + 0.5) / n);
            let q = p.minus(origin).times(1.0 / k);
            let s = sample(img_ref, q.x, q.y);
            t.extend(s.map(|v| v / 255.0));
        }
    }
    t
}

/// Face Mesh on one ROI: 468 points in image pixels and the face-presence probability.
pub(crate) fn face_mesh(img: &RgbImage, roi: Roi) -> Option<(Vec<Pt>, f32)> {
    let input = crop(img, roi, 192, false);
    let out = models().mesh.run(&input).ok()?;
    let raw = &out[0].data;
    let presence = 1.0 / (1.0 + (-out[1].data[0]).exp());
    let pts = raw
        .chunks_exact(3)
        .take(468)
        .map(|p| roi.to_image(p[0] / 192.0, p[1] / 192.0))
        .collect();
    Some((pts, presence))
}

/// Mesh indices the Iris model's 71 contour points refine, for the image-left eye (the
/// subject's right); the image-right eye is done on a mirrored crop with [`RIGHT_EYE_MAP`].
/// From MediaPipe's `iris_landmark_landmarks_to_roi` / `update_face_landmarks` graphs.
const LEFT_EYE_MAP: [usize; 71] = [
    33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173, 130, 25, 110, 24,
    23, 22, 26, 112, 243, 247, 30, 29, 27, 28, 56, 190, 226, 31, 228, 229, 230, 231, 232, 233, 244,
    113, 225, 224, 223, 222, 221, 189, 35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121,
    128, 245, 156, 70, 63, 105, 66, 107, 55, 193,
];
const RIGHT_EYE_MAP: [usize; 71] = [
    263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398, 359, 255, 339,
    254, 253, 252, 256, 341, 463, 467, 260, 259, 257, 258, 286, 414, 446, 261, 448, 449, 450, 451,
    452, 453, 464, 342, 445, 444, 443, 442, 441, 413, 265, 353, 276, 283, 282, 295, 372, 340, 346,
    347, 348, 349, 350, 357, 465, 383, 300, 293, 334, 296, 336, 285, 417,
];

/// Runs Iris on both eyes: refines the eye and brow contours of `mesh` in place and returns
/// the irises (subject's right, subject's left).
pub(crate) fn irises(img: &RgbImage, mesh: &mut [Pt]) -> Option<[Iris; 2]> {
    let mut found = [Iris::default(); 2];
    for (slot, (corners, map, flip)) in [
        ((33usize, 133usize), &LEFT_EYE_MAP, false),
        ((362, 263), &RIGHT_EYE_MAP, true),
    ]
    .into_iter()
    .enumerate()
    {
        let (a, b) = (mesh[corners.0], mesh[corners.1]);
        let d = b.minus(a);
        let angle = d.y.atan2(d.x);
        let lo = Pt::new(a.x.min(b.x), a.y.min(b.y));
        let hi = Pt::new(a.x.max(b.x), a.y.max(b.y));
        let roi = Roi {
            center: lo.mid(hi),
            side: (hi.x - lo.x).max(hi.y - lo.y) * 2.3,
            angle,
        };
        if roi.side < 4.0 {
            return None;
        }
        let input = crop(img, roi, 64, flip);
        let out = models().iris.run(&input).ok()?;
        let to_img = |p: &[f32]| {
            let u = p[0] / 64.0;
            roi.to_image(if flip { 1.0 - u } else { u }, p[1] / 64.0)
        };
        for (k, p) in out[0].data.chunks_exact(3).enumerate() {
            mesh[map[k]] = to_img(p);
        }
        let iris: Vec<Pt> = out[1].data.chunks_exact(3).map(to_img).collect();
        let diameter = (iris[1].minus(iris[3]).len() + iris[2].minus(iris[4]).len()) / 2.0;
        found[slot] = Iris {
            center: iris[0],
            diameter,
        };
    }
    Some(found)
}
