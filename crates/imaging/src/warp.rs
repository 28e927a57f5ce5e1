//! Local deformations ("liquify"-style) as backward maps, and masked edge-preserving smoothing.
//!
//! Every deformation has compact support: its displacement is exactly zero outside its circle or
//! ellipse, and [`apply`] never touches a pixel whose total displacement is zero. That is what
//! makes the locality guarantee hold bit for bit. Sampling is bilinear in `f32` with a fixed
//! evaluation order, so the same input always gives the same bytes.

use image::{Rgb, RgbImage};

use crate::face::{Frame, Pt};

/// An axis-aligned pixel rectangle, `[x0, x1) × [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left (inclusive).
    pub x0: u32,
    /// Top (inclusive).
    pub y0: u32,
    /// Right (exclusive).
    pub x1: u32,
    /// Bottom (exclusive).
    pub y1: u32,
}

impl Rect {
    /// Whether `(x, y)` is inside.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1
    }

    /// The smallest rectangle holding both.
    pub fn union(self, o: Rect) -> Rect {
        if self.is_empty() {
            return o;
        }
        if o.is_empty() {
            return self;
        }
        Rect {
            x0: self.x0.min(o.x0),
            y0: self.y0.min(o.y0),
            x1: self.x1.max(o.x1),
            y1: self.y1.max(o.y1),
        }
    }

    /// True when it holds no pixel.
    pub fn is_empty(&self) -> bool {
        self.x1 <= self.x0 || self.y1 <= self.y0
    }

    /// From float bounds, clipped to a `w × h` image.
    pub fn from_bounds(min: Pt, max: Pt, w: u32, h: u32) -> Rect {
        let c = |v: f32, hi: u32| v.max(0.0).min(hi as f32) as u32;
        Rect {
            x0: c(min.x.floor(), w),
            y0: c(min.y.floor(), h),
            x1: c(max.x.ceil() + 1.0, w),
            y1: c(max.y.ceil() + 1.0, h),
        }
    }
}

/// Smooth falloff over the unit disc: 1 at the centre, 0 (with zero slope) at the rim.
fn falloff(rho2: f32) -> f32 {
    if rho2 >= 1.0 {
        0.0
    } else {
        let t = 1.0 - rho2;
        t * t
    }
}

/// One local deformation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deform {
    /// Pushes the content around `center` by `shift` (fading to nothing at `radius`).
    Translate {
        /// Centre.
        center: Pt,
        /// Support radius.
        radius: f32,
        /// Movement of the content at the centre.
        shift: Pt,
    },
    /// Magnifies (factor > 1) or shrinks the content inside an ellipse, separately along `axis`
    /// and across it, fading to no change at the rim.
    Scale {
        /// Centre.
        center: Pt,
        /// Unit vector of the first axis.
        axis: Pt,
        /// Semi-axis along `axis`.
        rx: f32,
        /// Semi-axis across `axis`.
        ry: f32,
        /// Factor along `axis`.
        sx: f32,
        /// Factor across `axis`.
        sy: f32,
    },
}

impl Deform {
    fn bounds(&self) -> (Pt, Pt) {
        let (c, r) = match *self {
            Deform::Translate { center, radius, .. } => (center, radius),
            Deform::Scale { center, rx, ry, .. } => (center, rx.max(ry)),
        };
        (Pt::new(c.x - r, c.y - r), Pt::new(c.x + r, c.y + r))
    }

    /// Where the output pixel `p` takes its colour from, as an offset: `source = p - offset`.
    fn offset(&self, p: Pt) -> Pt {
        match *self {
            Deform::Translate {
                center,
                radius,
                shift,
            } => {
                let d = p.minus(center);
                let w = falloff((d.x * d.x + d.y * d.y) / (radius * radius));
                shift.times(w)
            }
            Deform::Scale {
                center,
                axis,
                rx,
                ry,
                sx,
                sy,
            } => {
                let d = p.minus(center);
                let perp = Pt::new(-axis.y, axis.x);
                let a = d.x * axis.x + d.y * axis.y;
                let b = d.x * perp.x + d.y * perp.y;
                let w = falloff((a / rx) * (a / rx) + (b / ry) * (b / ry));
                if w == 0.0 {
                    return Pt::default();
                }
                let (fa, fb) = (1.0 + w * (sx - 1.0), 1.0 + w * (sy - 1.0));
                let src = axis.times(a / fa).plus(perp.times(b / fb));
                d.minus(src)
            }
        }
    }

    /// The pixels this deformation may change.
    pub fn region(&self, w: u32, h: u32) -> Rect {
        let (min, max) = self.bounds();
        Rect::from_bounds(min, max, w, h)
    }
}

/// Bilinear sample at a real position (clamped to the image).
fn sample(img: &RgbImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let px = |xx: i64, yy: i64| img.get_pixel(xx as u32, yy as u32).0;
    let (a, b, c, d) = (px(x0, y0), px(x1, y0), px(x0, y1), px(x1, y1));
    let mut out = [0.0; 3];
    for i in 0..3 {
        let top = a[i] as f32 + (b[i] as f32 - a[i] as f32) * fx;
        let bot = c[i] as f32 + (d[i] as f32 - c[i] as f32) * fx;
        out[i] = top + (bot - top) * fy;
    }
    out
}

fn to_u8(v: f32) -> u8 {
    (v + 0.5).clamp(0.0, 255.0) as u8
}

/// Applies the deformations (their offsets add up) and returns the image and the region where
/// pixels may have changed.
pub fn apply(img: &RgbImage, deforms: &[Deform]) -> (RgbImage, Rect) {
    let (w, h) = img.dimensions();
    let region = deforms
        .iter()
        .fold(Rect::default(), |r, d| r.union(d.region(w, h)));
    let mut out = img.clone();
    for y in region.y0..region.y1 {
        for x in region.x0..region.x1 {
            let p = Pt::new(x as f32, y as f32);
            let off = deforms
                .iter()
                .fold(Pt::default(), |acc, d| acc.plus(d.offset(p)));
            if off.x.abs() < 1e-4 && off.y.abs() < 1e-4 {
                continue;
            }
            let s = sample(img, p.x - off.x, p.y - off.y);
            out.put_pixel(x, y, Rgb([to_u8(s[0]), to_u8(s[1]), to_u8(s[2])]));
        }
    }
    (out, region)
}

/// An ellipse in face-frame units (IOD), for masks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceEllipse {
    /// Centre, face coordinates.
    pub cu: f32,
    /// Centre, face coordinates.
    pub cv: f32,
    /// Semi-axis along the eye line.
    pub ru: f32,
    /// Semi-axis across it.
    pub rv: f32,
}

impl FaceEllipse {
    /// 1 well inside, easing to 0 at the rim.
    fn weight(&self, u: f32, v: f32) -> f32 {
        let du = (u - self.cu) / self.ru;
        let dv = (v - self.cv) / self.rv;
        let rho = (du * du + dv * dv).sqrt();
        if rho >= 1.0 {
            0.0
        } else if rho <= 0.7 {
            1.0
        } else {
            let t = (1.0 - rho) / 0.3;
            t * t * (3.0 - 2.0 * t)
        }
    }
}

/// A soft mask: the union of `include` minus the union of `exclude`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceMask {
    /// The face frame the ellipses are in.
    pub frame: Frame,
    /// Areas to treat.
    pub include: Vec<FaceEllipse>,
    /// Areas to leave alone (eyes, mouth...).
    pub exclude: Vec<FaceEllipse>,
}

impl FaceMask {
    /// Mask value at an image pixel, 0-1.
    pub fn at(&self, x: u32, y: u32) -> f32 {
        let (u, v) = self.frame.local(Pt::new(x as f32, y as f32));
        let inc = self
            .include
            .iter()
            .map(|e| e.weight(u, v))
            .fold(0.0f32, f32::max);
        if inc == 0.0 {
            return 0.0;
        }
        let exc = self
            .exclude
            .iter()
            .map(|e| e.weight(u, v))
            .fold(0.0f32, f32::max);
        inc * (1.0 - exc)
    }

    /// Pixels the mask may cover.
    pub fn region(&self, w: u32, h: u32) -> Rect {
        let mut r = Rect::default();
        for e in &self.include {
            let c = self.frame.at(e.cu, e.cv);
            let rad = e.ru.max(e.rv) * self.frame.iod;
            r = r.union(Rect::from_bounds(
                Pt::new(c.x - rad, c.y - rad),
                Pt::new(c.x + rad, c.y + rad),
                w,
                h,
            ));
        }
        r
    }
}

/// Edge-preserving smoothing inside `mask`: each pixel moves towards its box-blurred value,
/// less where it differs strongly from it (edges, features), by at most `strength`.
pub fn smooth(
    img: &RgbImage,
    mask: &FaceMask,
    radius: u32,
    sigma: f32,
    strength: f32,
) -> (RgbImage, Rect) {
    let (w, h) = img.dimensions();
    let region = mask.region(w, h);
    let mut out = img.clone();
    if region.is_empty() || radius == 0 {
        return (out, region);
    }
    // Integral image over the region plus the blur margin.
    let ox0 = region.x0.saturating_sub(radius);
    let oy0 = region.y0.saturating_sub(radius);
    let ox1 = (region.x1 + radius).min(w);
    let oy1 = (region.y1 + radius).min(h);
    let (iw, ih) = ((ox1 - ox0 + 1) as usize, (oy1 - oy0 + 1) as usize);
    let mut integral = vec![[0u64; 3]; iw * ih];
    for y in 0..(oy1 - oy0) as usize {
        let mut row = [0u64; 3];
        for x in 0..(ox1 - ox0) as usize {
            let p = img.get_pixel(ox0 + x as u32, oy0 + y as u32).0;
            for c in 0..3 {
                row[c] += u64::from(p[c]);
                integral[(y + 1) * iw + x + 1][c] = integral[y * iw + x + 1][c] + row[c];
            }
        }
    }
    let sigma2 = sigma * sigma;
    for y in region.y0..region.y1 {
        for x in region.x0..region.x1 {
            let m = mask.at(x, y);
            if m <= 0.0 {
                continue;
            }
            let (bx0, by0) = (
                x.saturating_sub(radius).max(ox0) - ox0,
                y.saturating_sub(radius).max(oy0) - oy0,
            );
            let (bx1, by1) = (
                (x + radius + 1).min(ox1) - ox0,
                (y + radius + 1).min(oy1) - oy0,
            );
            let n = u64::from((bx1 - bx0) * (by1 - by0));
            let at = |xx: u32, yy: u32| integral[yy as usize * iw + xx as usize];
            let p = img.get_pixel(x, y).0;
            let mut blur = [0f32; 3];
            let mut diff = 0f32;
            for c in 0..3 {
                let s = at(bx1, by1)[c] + at(bx0, by0)[c] - at(bx0, by1)[c] - at(bx1, by0)[c];
                blur[c] = s as f32 / n as f32;
                diff = diff.max((blur[c] - p[c] as f32).abs());
            }
            let k = strength * m * (-(diff * diff) / sigma2).exp();
            let px = [0, 1, 2].map(|c| to_u8(p[c] as f32 + k * (blur[c] - p[c] as f32)));
            out.put_pixel(x, y, Rgb(px));
        }
    }
    (out, region)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 3 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn pixels_outside_the_support_never_change() {
        let img = gradient(200, 160);
        let d = Deform::Translate {
            center: Pt::new(100.0, 80.0),
            radius: 30.0,
            shift: Pt::new(6.0, -4.0),
        };
        let (out, region) = apply(&img, &[d]);
        assert!(region.x0 >= 69 && region.x1 <= 132);
        for (x, y, p) in out.enumerate_pixels() {
            if !region.contains(x, y) {
                assert_eq!(p, img.get_pixel(x, y));
            }
        }
        assert_ne!(out, img);
    }

    #[test]
    fn translation_moves_content_in_its_direction() {
        // A dark dot at (50, 50) pushed right by 5 px.
        let mut img = RgbImage::from_pixel(100, 100, Rgb([255, 255, 255]));
        img.put_pixel(50, 50, Rgb([0, 0, 0]));
        let d = Deform::Translate {
            center: Pt::new(50.0, 50.0),
            radius: 30.0,
            shift: Pt::new(5.0, 0.0),
        };
        let (out, _) = apply(&img, &[d]);
        let darkest = out
            .enumerate_pixels()
            .min_by_key(|(_, _, p)| p.0[0])
            .map(|(x, y, _)| (x, y))
            .unwrap();
        assert_eq!(darkest.1, 50);
        assert!((54..=56).contains(&darkest.0), "{darkest:?}");
    }

    #[test]
    fn scaling_magnifies_the_centre() {
        // A 10-px dark square grows when magnified.
        let mut img = RgbImage::from_pixel(100, 100, Rgb([255, 255, 255]));
        for y in 45..55 {
            for x in 45..55 {
                img.put_pixel(x, y, Rgb([0, 0, 0]));
            }
        }
        let d = Deform::Scale {
            center: Pt::new(49.5, 49.5),
            axis: Pt::new(1.0, 0.0),
            rx: 30.0,
            ry: 30.0,
            sx: 1.0,
            sy: 1.4,
        };
        let (out, _) = apply(&img, &[d]);
        let dark = |im: &RgbImage| im.pixels().filter(|p| p.0[0] < 128).count();
        assert!(
            dark(&out) > dark(&img) * 12 / 10,
            "{} vs {}",
            dark(&out),
            dark(&img)
        );
    }
}
