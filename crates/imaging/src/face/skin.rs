//! The patient's own skin colour, learned from the cheeks and forehead, to tell skin from what
//! lies in front of the face (glasses frames, hair) and to find the ears.
//!
//! Chroma (YCbCr's Cb, Cr) is compared with robust statistics (median, MAD) of patches at
//! mesh points that are skin on nearly every face; luminance only rules out very dark and very
//! bright pixels, so shading on the face still counts as skin.

use image::RgbImage;

use crate::face::{Frame, Landmarks, Pt, regions};

/// A skin colour model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkinModel {
    cb: (f32, f32),
    cr: (f32, f32),
    y: f32,
}

pub(crate) fn ycbcr(p: [u8; 3]) -> (f32, f32, f32) {
    let (r, g, b) = (p[0] as f32, p[1] as f32, p[2] as f32);
    let y = 0.299 * r + 0.587 * g + 0.114 * b;
    (
        y,
        128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b,
        128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b,
    )
}

fn median(v: &mut [f32]) -> f32 {
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

impl SkinModel {
    /// Learns from disks of 4 mm at the cheeks, the nose's side walls and the lower forehead.
    pub fn learn(img: &RgbImage, lm: &Landmarks) -> SkinModel {
        let f = lm.frame();
        let r = f.px(4.0).max(2.0);
        let (mut ys, mut cbs, mut crs) = (vec![], vec![], vec![]);
        let centres = [
            lm.points[regions::CHEEKS[0]],
            lm.points[regions::CHEEKS[1]],
            lm.points[regions::FOREHEAD[1]],
            lm.points[50],
            lm.points[280],
        ];
        for c in centres {
            let (x0, x1) = (
                (c.x - r).max(0.0) as u32,
                ((c.x + r) as u32).min(img.width()),
            );
            let (y0, y1) = (
                (c.y - r).max(0.0) as u32,
                ((c.y + r) as u32).min(img.height()),
            );
            for y in y0..y1 {
                for x in x0..x1 {
                    if Pt::new(x as f32, y as f32).minus(c).len() <= r {
                        let (yy, cb, cr) = ycbcr(img.get_pixel(x, y).0);
                        ys.push(yy);
                        cbs.push(cb);
                        crs.push(cr);
                    }
                }
            }
        }
        if ys.is_empty() {
            return SkinModel {
                cb: (110.0, 6.0),
                cr: (150.0, 6.0),
                y: 150.0,
            };
        }
        let robust = |v: &mut Vec<f32>| {
            let m = median(v);
            let mut dev: Vec<f32> = v.iter().map(|x| (x - m).abs()).collect();
            (m, (1.4826 * median(&mut dev)).max(2.5))
        };
        let cb = robust(&mut cbs);
        let cr = robust(&mut crs);
        SkinModel {
            cb,
            cr,
            y: median(&mut ys),
        }
    }

    /// Chroma distance from the skin, in robust standard deviations.
    pub fn distance(&self, p: [u8; 3]) -> f32 {
        let (_, cb, cr) = ycbcr(p);
        (((cb - self.cb.0) / self.cb.1).powi(2) + ((cr - self.cr.0) / self.cr.1).powi(2)).sqrt()
    }

    /// The skin's median luminance.
    pub fn luminance(&self) -> f32 {
        self.y
    }

    /// Whether a pixel may be ear skin: skin, or redder than the face's skin (ears are thin
    /// and flushed; their rims and folds are often far redder than the cheeks).
    pub fn ear_like(&self, p: [u8; 3]) -> bool {
        let (y, cb, cr) = ycbcr(p);
        if y < 0.3 * self.y {
            return false;
        }
        self.likelihood(p) >= 0.5
            || (cr >= self.cr.0 && cb <= self.cb.0 + 2.0 * self.cb.1 && self.distance(p) < 10.0)
    }

    /// How skin-like a pixel is, 0-1.
    pub fn likelihood(&self, p: [u8; 3]) -> f32 {
        let (y, _, _) = ycbcr(p);
        if y < 0.22 * self.y || y > 250.0 {
            return 0.0;
        }
        let d = self.distance(p);
        // 1 within 3 deviations, 0 beyond 5.
        ((5.0 - d) / 2.0).clamp(0.0, 1.0)
    }
}

/// The mesh's face outline pushed outwards by `mm` along the rays from its centre.
pub(crate) fn oval(lm: &Landmarks, f: &Frame, mm: f32) -> Vec<Pt> {
    crate::face::grow(&lm.group(&regions::FACE_OVAL), f, mm)
}
