//! Measuring a preview the way a surgeon would: the landmark model finds the features on the
//! original, and the preview's own pixels tell where each went ([`flow`], block matching, blind
//! to how the preview was made). Distances are millimetres of the original's frame (iris
//! scale). The tests hold every recipe to its clinical target with these; the `measure` example
//! prints them for any photo.

use image::RgbImage;

use crate::face::skin::SkinModel;
use crate::face::{Frame, Landmarks, Pt, regions as r};
use crate::warp::{Mask, Rect};

/// One measured quantity before and after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    /// What was measured.
    pub name: &'static str,
    /// Before (mm, or a unitless energy).
    pub before: f32,
    pub after: f32,
}

impl Change {
    /// Relative change, `after / before - 1`.
    pub fn relative(&self) -> f32 {
        self.after / self.before - 1.0
    }
    /// Absolute change.
    pub fn delta(&self) -> f32 {
        self.after - self.before
    }
}

/// How far the picture's content at `p` moved between `before` and `after`, in pixels: block
/// matching of a luminance patch (half-size 1 mm, at least 3 px) over ±6 mm, refined to a
/// fraction of a pixel by a parabola through the best match's neighbours.
pub fn flow(before: &RgbImage, after: &RgbImage, p: Pt, f: &Frame) -> Pt {
    let lum = |img: &RgbImage, x: i64, y: i64| -> f32 {
        let x = x.clamp(0, img.width() as i64 - 1) as u32;
        let y = y.clamp(0, img.height() as i64 - 1) as u32;
        let c = img.get_pixel(x, y).0;
        0.299 * c[0] as f32 + 0.587 * c[1] as f32 + 0.114 * c[2] as f32
    };
    let r = (f.px(1.0).round() as i64).max(3);
    let s = (f.px(6.0).round() as i64).max(4);
    let (cx, cy) = (p.x.round() as i64, p.y.round() as i64);
    let patch: Vec<f32> = (-r..=r)
        .flat_map(|dy| (-r..=r).map(move |dx| (dx, dy)))
        .map(|(dx, dy)| lum(before, cx + dx, cy + dy))
        .collect();
    let ssd = |ox: i64, oy: i64| -> f32 {
        let mut acc = 0.0;
        let mut k = 0;
        for dy in -r..=r {
            for dx in -r..=r {
                let d = lum(after, cx + ox + dx, cy + oy + dy) - patch[k];
                acc += d * d;
                k += 1;
            }
        }
        acc
    };
    let mut best = (f32::MAX, 0i64, 0i64);
    for oy in -s..=s {
        for ox in -s..=s {
            let e = ssd(ox, oy);
            // Prefer the smaller move among equals (flat patches).
            if e < best.0 - 1e-3
                || (e <= best.0 + 1e-3 && ox * ox + oy * oy < best.1 * best.1 + best.2 * best.2)
            {
                best = (e, ox, oy);
            }
        }
    }
    let (_, bx, by) = best;
    let sub = |m: f32, c: f32, p_: f32| {
        let den = m - 2.0 * c + p_;
        if den.abs() < 1e-6 {
            0.0
        } else {
            (0.5 * (m - p_) / den).clamp(-0.5, 0.5)
        }
    };
    let c = best.0;
    let dx = sub(ssd(bx - 1, by), c, ssd(bx + 1, by));
    let dy = sub(ssd(bx, by - 1), c, ssd(bx, by + 1));
    Pt::new(bx as f32 + dx, by as f32 + dy)
}

/// Where landmark `i` went: its position plus the picture's flow there.
fn moved(before: &RgbImage, after: &RgbImage, lm: &Landmarks, f: &Frame, i: usize) -> Pt {
    let p = lm.points[i];
    p.plus(flow(before, after, p, f))
}

/// Mean fine-texture energy (squared difference from a 1 mm box blur) over disks of radius
/// 5 mm at the cheeks and the lower forehead.
pub fn texture_energy(img: &RgbImage, lm: &Landmarks) -> f32 {
    band_energy(img, lm, 5.0, None, 1.0)
}

/// The energy of fine lines on the same skin, 8 mm disks: the 1 mm box blur against the 3 mm
/// one, so the finest texture (which `texture_energy` measures) is left out and what remains is
/// the 1-3 mm detail a patient sees as fine wrinkles.
pub fn wrinkle_energy(img: &RgbImage, lm: &Landmarks) -> f32 {
    band_energy(img, lm, 8.0, Some(1.0), 3.0)
}

/// Mean squared difference of luminance averaged over ±`inner_mm` (the pixel itself when
/// `None`) from luminance averaged over ±`outer_mm`, over disks of `disc_mm` on both cheeks
/// and the forehead.
fn band_energy(
    img: &RgbImage,
    lm: &Landmarks,
    disc_mm: f32,
    inner_mm: Option<f32>,
    outer_mm: f32,
) -> f32 {
    let f = lm.frame();
    let r = f.px(disc_mm);
    let mut pixels = vec![];
    for c in [
        lm.points[r::CHEEKS[0]],
        lm.points[r::CHEEKS[1]],
        lm.points[151],
    ] {
        let (x0, x1) = ((c.x - r) as i64, (c.x + r) as i64);
        let (y0, y1) = ((c.y - r) as i64, (c.y + r) as i64);
        for y in y0..=y1 {
            for x in x0..=x1 {
                if Pt::new(x as f32, y as f32).minus(c).len() <= r {
                    pixels.push((x, y));
                }
            }
        }
    }
    energy(img, &f, &pixels, inner_mm, outer_mm)
}

/// Mean squared difference, over `pixels`, of luminance averaged over ±`inner_mm` (the pixel
/// itself when `None`) from luminance averaged over ±`outer_mm` (pixels whose box leaves the
/// image are skipped).
fn energy(
    img: &RgbImage,
    f: &Frame,
    pixels: &[(i64, i64)],
    inner_mm: Option<f32>,
    outer_mm: f32,
) -> f32 {
    let b = f.px(outer_mm).round().max(1.0) as i64;
    let bi = inner_mm.map_or(0, |m| f.px(m).round().max(1.0) as i64);
    // Box means from a summed-area table over the pixels' bounding box grown by `b` (clipped
    // to the image): O(1) each, where summing each box took minutes on a 40 MP photo.
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let (x0, y0) = pixels
        .iter()
        .fold((w, h), |(a, c), &(x, y)| (a.min(x - b), c.min(y - b)));
    let (x1, y1) = pixels.iter().fold((0, 0), |(a, c), &(x, y)| {
        (a.max(x + b + 1), c.max(y + b + 1))
    });
    let (x0, y0, x1, y1) = (x0.max(0), y0.max(0), x1.min(w), y1.min(h));
    if x1 <= x0 || y1 <= y0 {
        return 0.0;
    }
    let tw = (x1 - x0 + 1) as usize;
    let mut sat = vec![0f64; tw * (y1 - y0 + 1) as usize];
    for yy in y0..y1 {
        let mut row = 0.0;
        for xx in x0..x1 {
            let p = img.get_pixel(xx as u32, yy as u32).0;
            row += 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64;
            let at = (yy - y0 + 1) as usize * tw + (xx - x0 + 1) as usize;
            sat[at] = sat[at - tw] + row;
        }
    }
    let corner = |xx: i64, yy: i64| sat[(yy - y0) as usize * tw + (xx - x0) as usize];
    let mean = |x: i64, y: i64, r: i64| {
        let (a, c, d, e) = (x - r, y - r, x + r + 1, y + r + 1);
        (corner(d, e) - corner(a, e) - corner(d, c) + corner(a, c))
            / ((2 * r + 1) * (2 * r + 1)) as f64
    };
    let (mut acc, mut n) = (0f64, 0u64);
    for &(x, y) in pixels {
        if x - b < 0 || y - b < 0 || x + b >= img.width() as i64 || y + b >= img.height() as i64 {
            continue;
        }
        acc += (mean(x, y, bi) - mean(x, y, b)).powi(2);
        n += 1;
    }
    (acc / n.max(1) as f64) as f32
}

/// Under eye `side` (0 = the subject's right), on the skin a lower blepharoplasty evens out
/// (`procedures::under_eye_band` without 2 mm round the eye): its shading, as the mean squared
/// difference of luminance averaged over ±1 mm from luminance averaged over ±5 mm; and its fine
/// texture, the pixel against its ±1 mm average.
pub fn under_eye(img: &RgbImage, lm: &Landmarks, side: usize) -> (f32, f32) {
    let f = lm.frame();
    let band = crate::procedures::under_eye_band(lm, side);
    let ring = if side == 0 {
        &r::RIGHT_EYE_RING[..]
    } else {
        &r::LEFT_EYE_RING[..]
    };
    let rect = Rect::around(&band, 1.0, img.width(), img.height());
    let mut m = Mask::new(rect);
    m.fill_polygon(&band, 1.0);
    m.clear_polygon(&crate::face::grow(&lm.group(ring), &f, 2.0));
    let mut pixels = vec![];
    for y in rect.y0..rect.y1 {
        for x in rect.x0..rect.x1 {
            if m.at(x, y) > 0.5 {
                pixels.push((i64::from(x), i64::from(y)));
            }
        }
    }
    (
        energy(img, &f, &pixels, Some(1.0), 5.0),
        energy(img, &f, &pixels, None, 1.0),
    )
}

/// The rim of each visible ear (subject's right, left): mean lateral distance of the rim
/// from the face outline, mm.
pub fn ear_projection(img: &RgbImage, lm: &Landmarks) -> [Option<f32>; 2] {
    let f = lm.frame();
    let skin = SkinModel::learn(img, lm);
    [0, 1].map(|side| {
        crate::ears::find(img, lm, &f, &skin, side).map(|ear| {
            ear.rows
                .iter()
                .map(|&(_, root, rim)| (rim - root).abs())
                .sum::<f32>()
                / ear.rows.len() as f32
        })
    })
}

/// The quantities a procedure is about: each landmark of the original (detected by the model)
/// followed into the preview by [`flow`], distances in millimetres of the original's frame.
pub fn changes(
    procedure: &str,
    before: &RgbImage,
    after: &RgbImage,
    lm: &Landmarks,
) -> Vec<Change> {
    let p = Probe {
        before,
        after,
        lm,
        f: lm.frame(),
    };
    match procedure {
        "rhinoplasty" => rhinoplasty(&p),
        "lip-augmentation" => lip_augmentation(&p),
        "chin-augmentation" => chin_augmentation(&p),
        "brow-lift" => brow_lift(&p),
        "blepharoplasty" => blepharoplasty(&p),
        "facelift" => facelift(&p),
        _ => vec![],
    }
}

/// A before/after pair with the landmarks of the before, read in the face's frame.
#[derive(Clone, Copy)]
struct Probe<'a> {
    before: &'a RgbImage,
    after: &'a RgbImage,
    lm: &'a Landmarks,
    f: Frame,
}

impl Probe<'_> {
    /// Where mesh point `i` went.
    fn go(&self, i: usize) -> Pt {
        moved(self.before, self.after, self.lm, &self.f, i)
    }
    /// Where mesh point `i` was.
    fn at(&self, i: usize) -> Pt {
        self.lm.points[i]
    }
    /// Distance in millimetres.
    fn d(&self, a: Pt, b: Pt) -> f32 {
        a.minus(b).len() / self.f.px_per_mm
    }
    /// Height in the face's frame (towards the chin), mm.
    fn v(&self, p: Pt) -> f32 {
        self.f.local(p).1
    }
    /// Width in the face's frame, mm.
    fn u(&self, p: Pt) -> f32 {
        self.f.local(p).0
    }
}

fn c(name: &'static str, before: f32, after: f32) -> Change {
    Change {
        name,
        before,
        after,
    }
}

fn rhinoplasty(p: &Probe<'_>) -> Vec<Change> {
    vec![
        c(
            "alar width (129-358)",
            p.d(p.at(129), p.at(358)),
            p.d(p.go(129), p.go(358)),
        ),
        c(
            "alar base (64-294)",
            p.d(p.at(64), p.at(294)),
            p.d(p.go(64), p.go(294)),
        ),
        c("tip u", p.u(p.at(r::NOSE_TIP)), p.u(p.go(r::NOSE_TIP))),
    ]
}

fn lip_augmentation(p: &Probe<'_>) -> Vec<Change> {
    let Probe {
        before,
        after,
        lm,
        f,
        ..
    } = *p;
    // The stretch of each lip's middle three columns, read between the inner line and
    // a point 60 % of the way to the band's end (inside the vermilion, where the strain
    // is even), as the lip's height before and after.
    let bands = crate::procedures::lip_bands_seen(before, lm);
    let height = |dir: f32| {
        let cols: Vec<_> = bands.iter().filter(|b| b.dir == dir).collect();
        let mid = cols.len() / 2;
        let (mut h0, mut h1) = (0.0, 0.0);
        for b in &cols[mid - 1..=mid + 1] {
            let (ui, vi) = f.local(b.inner);
            let probe = f.at(ui, vi + b.dir * b.height * 0.6);
            let stretch = f.local_vec(flow(before, after, probe, &f)).1
                - f.local_vec(flow(before, after, b.inner, &f)).1;
            h0 += b.height;
            h1 += b.height * (1.0 + stretch * b.dir / (0.6 * b.height));
        }
        (h0 / 3.0, h1 / 3.0)
    };
    let (ub, ua) = height(-1.0);
    let (lb, la) = height(1.0);
    vec![
        c("upper lip height", ub, ua),
        c("lower lip height", lb, la),
        c(
            "mouth width",
            p.d(p.at(61), p.at(291)),
            p.d(p.go(61), p.go(291)),
        ),
        c("lip gap", p.d(p.at(13), p.at(14)), p.d(p.go(13), p.go(14))),
    ]
}

fn chin_augmentation(p: &Probe<'_>) -> Vec<Change> {
    // Halfway along the outline from the menton to its neighbours (3-4 mm off the midline),
    // where no mesh point is: the border there sagged while the menton came down (a point).
    let near = |i: usize| p.at(r::MENTON).plus(p.at(i)).times(0.5);
    let went = |q: Pt| q.plus(flow(p.before, p.after, q, &p.f));
    let ((rb, ra), (lb, la)) = [148, 377]
        .map(|i| (p.v(near(i)), p.v(went(near(i)))))
        .into();
    // Sideways: the median of five points along the border (the menton alone is one patch of
    // smooth skin, and block matching there wandered by millimetres on the astronaut).
    let mut du: Vec<f32> = [p.at(r::MENTON), near(148), near(377), p.at(148), p.at(377)]
        .into_iter()
        .map(|q| p.u(went(q)) - p.u(q))
        .collect();
    du.sort_by(f32::total_cmp);
    let u0 = p.u(p.at(r::MENTON));
    vec![
        c("menton v", p.v(p.at(r::MENTON)), p.v(p.go(r::MENTON))),
        c("menton u", u0, u0 + du[2]),
        c("right chin border near v", rb, ra),
        c("left chin border near v", lb, la),
        // The chin's lower border either side of the menton (6-8 mm off the midline): an
        // implant lowers it as a broad curve, not a point at the menton.
        c("right chin border v", p.v(p.at(148)), p.v(p.go(148))),
        c("left chin border v", p.v(p.at(377)), p.v(p.go(377))),
        c("right jaw v", p.v(p.at(176)), p.v(p.go(176))),
        c("left jaw v", p.v(p.at(400)), p.v(p.go(400))),
    ]
}

fn brow_lift(p: &Probe<'_>) -> Vec<Change> {
    vec![
        c("right brow tail v", p.v(p.at(70)), p.v(p.go(70))),
        c("left brow tail v", p.v(p.at(300)), p.v(p.go(300))),
        c("right brow middle v", p.v(p.at(105)), p.v(p.go(105))),
        c("left brow middle v", p.v(p.at(334)), p.v(p.go(334))),
        // The brow's lower edge under its middle: the brow rises as one, not stretched.
        c("right brow lower middle v", p.v(p.at(52)), p.v(p.go(52))),
        c("left brow lower middle v", p.v(p.at(282)), p.v(p.go(282))),
        c("right lid margin v", p.v(p.at(159)), p.v(p.go(159))),
        c("left lid margin v", p.v(p.at(386)), p.v(p.go(386))),
    ]
}

fn blepharoplasty(p: &Probe<'_>) -> Vec<Change> {
    // Lid platform: the fold ring's mean height above the lid margin's mean.
    let mean_v = |idx: &[usize], moved: bool| {
        idx.iter()
            .map(|&i| p.v(if moved { p.go(i) } else { p.at(i) }))
            .sum::<f32>()
            / idx.len() as f32
    };
    let platform = |side: usize, moved: bool| {
        mean_v(&r::UPPER_LID[side][2..7], moved) - mean_v(&r::LID_FOLD[side][1..6], moved)
    };
    let margin = |side: usize, moved: bool| mean_v(&r::UPPER_LID[side][2..7], moved);
    let [(rb, ra), (lb, la)] = [0, 1].map(|side| {
        (
            under_eye(p.before, p.lm, side),
            under_eye(p.after, p.lm, side),
        )
    });
    vec![
        c("right under-eye shading", rb.0, ra.0),
        c("left under-eye shading", lb.0, la.0),
        c("right under-eye texture", rb.1, ra.1),
        c("left under-eye texture", lb.1, la.1),
        c("right lid platform", platform(0, false), platform(0, true)),
        c("left lid platform", platform(1, false), platform(1, true)),
        c("right lid margin v", margin(0, false), margin(0, true)),
        c("left lid margin v", margin(1, false), margin(1, true)),
        // The brows' lower edges stay (the hooding pushed them up: a notch under the brow):
        // the most any of their points rose.
        c(
            "right brow lower rise",
            0.0,
            brow_rise(p, &r::BROW_LOWER[0]),
        ),
        c("left brow lower rise", 0.0, brow_rise(p, &r::BROW_LOWER[1])),
    ]
}

/// The most any of points `idx` rose, mm (0 when none did).
fn brow_rise(p: &Probe<'_>, idx: &[usize]) -> f32 {
    idx.iter()
        .map(|&i| p.v(p.at(i)) - p.v(p.go(i)))
        .fold(0.0, f32::max)
}

fn facelift(p: &Probe<'_>) -> Vec<Change> {
    let Probe {
        before, after, f, ..
    } = *p;
    // Jowls: 3 mm inside the outline (the outline's own pixels may meet a collar that
    // stays).
    let inside = |i: usize| p.at(i).minus(f.vec(0.0, 3.0));
    let lifted = |i: usize| {
        let q = inside(i);
        p.v(q.plus(flow(before, after, q, &f)))
    };
    // The median of four points along each jowl, robust to a patch without texture.
    let jowl = |idx: [usize; 4], moved: bool| {
        let mut vs: Vec<f32> = idx
            .iter()
            .map(|&i| if moved { lifted(i) } else { p.v(inside(i)) })
            .collect();
        vs.sort_by(f32::total_cmp);
        (vs[1] + vs[2]) / 2.0
    };
    vec![
        c(
            "right jowl v",
            jowl(r::JOWLS[0], false),
            jowl(r::JOWLS[0], true),
        ),
        c(
            "left jowl v",
            jowl(r::JOWLS[1], false),
            jowl(r::JOWLS[1], true),
        ),
        c(
            "jaw width (172-397)",
            p.d(p.at(172), p.at(397)),
            p.d(p.go(172), p.go(397)),
        ),
        c(
            "cheek width (234-454)",
            p.d(p.at(234), p.at(454)),
            p.d(p.go(234), p.go(454)),
        ),
    ]
}

/// The mesh points a procedure is allowed to move (beyond them, the face should stay within
/// about half a millimetre).
pub fn own_points(procedure: &str, before: &Landmarks) -> Vec<usize> {
    let f = before.frame();
    let near = |idx: &[usize], mm: f32| -> Vec<usize> {
        (0..before.points.len())
            .filter(|&i| {
                idx.iter()
                    .any(|&j| before.points[i].minus(before.points[j]).len() < f.px(mm))
            })
            .collect()
    };
    match procedure {
        "rhinoplasty" => near(&[64, 294, 129, 358, 98, 327, 2], 9.0),
        "lip-augmentation" => near(
            &r::UPPER_LIP_OUTER
                .iter()
                .chain(&r::LOWER_LIP_OUTER)
                .copied()
                .collect::<Vec<_>>(),
            8.0,
        ),
        "chin-augmentation" => near(&[152, 148, 377, 175, 199, 200, 17, 18], 14.0),
        "brow-lift" | "blepharoplasty" => near(
            &[
                70, 63, 105, 66, 107, 300, 293, 334, 296, 336, 27, 257, 223, 443,
            ],
            14.0,
        ),
        "facelift" => near(
            &r::JAWLINE
                .iter()
                .chain(&r::NASOLABIAL[0])
                .chain(&r::NASOLABIAL[1])
                .copied()
                .collect::<Vec<_>>(),
            22.0,
        ),
        _ => vec![],
    }
}

/// How far the picture moved at the other mesh points: the 90th percentile, mm.
pub fn others_moved(procedure: &str, before: &RgbImage, after: &RgbImage, lm: &Landmarks) -> f32 {
    let f = lm.frame();
    let own = own_points(procedure, lm);
    let mut d: Vec<f32> = (0..lm.points.len())
        .filter(|i| !own.contains(i))
        .map(|i| flow(before, after, lm.points[i], &f).len() / f.px_per_mm)
        .collect();
    if d.is_empty() {
        return 0.0;
    }
    d.sort_by(f32::total_cmp);
    d[d.len() * 9 / 10]
}
