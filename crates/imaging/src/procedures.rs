//! Procedure recipes: each procedure says where the face's own landmarks go, in millimetres
//! in the face frame, and what may move at all.
//!
//! A recipe moves the outline of one feature (the alae, the vermilion, the brow, the upper-lid
//! folds, the jowls, the chin, the ears) and pins every other mesh point where it is, plus two
//! rings of points outside the face; the warp ([`crate::warp`]) interpolates between them.
//! Amounts are clinical magnitudes at `moderate` (see `docs/previews.md` for the table and
//! sources); `subtle` applies half and `pronounced` one and a half times as much. Directions
//! follow the face frame, so a tilted head is treated along its own axes.

use afterview_core::tasks::Intensity;
use image::RgbImage;

use crate::ImagingError;
use crate::face::skin::{SkinModel, oval};
use crate::face::{Frame, Landmarks, MESH_POINTS, Pt, grow, regions as r};
use crate::warp::Handle;

/// What a procedure does to a photo.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Where content moves (image pixels); pinned points have a zero shift.
    pub handles: Vec<Handle>,
    /// Support radius of the interpolation, millimetres.
    pub radius_mm: f32,
    /// Polygons (image pixels) outside which nothing may change.
    pub allow: Vec<Vec<Pt>>,
    /// What in front of the skin is kept rigid.
    pub protect: Protect,
    /// Texture smoothing, for skin procedures.
    pub smoothing: Option<Smoothing>,
    /// Shading evened out (under-eye bags and hollows).
    pub shading: Option<Shading>,
}

/// Which pixels are laid back unchanged over the warped skin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protect {
    /// None.
    Nothing,
    /// Near-black pixels only (glasses frames crossing the eyelids, where shaded skin must
    /// still move).
    Dark,
    /// Near-black pixels and anything far from the skin's colour (frames, hair, a collar).
    Overlays,
    /// As `Overlays`, and skin meeting a wide overlay (over 5 mm: a collar, the background,
    /// not a frame's line) is anchored to it: the warp draws nothing from behind it. Lifted
    /// away from a collar, the skin took the collar's filled-in colour (streaks, a step in the
    /// jaw's outline); a lifted brow, by contrast, should show the skin a frame hid.
    Anchoring,
}

/// Edge-preserving removal of fine texture.
#[derive(Debug, Clone, PartialEq)]
pub struct Smoothing {
    /// Where (union of polygons)...
    pub include: Vec<Vec<Pt>>,
    /// ...except here (eyes, brows, lips, nostrils).
    pub exclude: Vec<Vec<Pt>>,
    /// Filter radius, millimetres: detail finer than about this is smoothed.
    pub radius_mm: f32,
    /// The guided filter's regularization (8-bit intensity units squared): local contrast
    /// whose variance is well under it counts as texture, well over it as an edge that stays.
    pub eps: f32,
    /// Share of the fine detail removed, 0-1.
    pub amount: f32,
    /// Over how many millimetres inside `include`'s outline the smoothing fades in.
    pub feather_mm: f32,
}

/// Shading evened out under the skin's texture (frequency separation): a shadow or a bulge
/// narrower than `reach_mm` takes its surroundings' tone, detail finer than `detail_mm` stays.
#[derive(Debug, Clone, PartialEq)]
pub struct Shading {
    /// Where (union of polygons)...
    pub include: Vec<Vec<Pt>>,
    /// ...except here; neither is part of the surroundings' average (the eyes, the lashes).
    pub exclude: Vec<Vec<Pt>>,
    /// Detail finer than this (millimetres, a box's radius) stays: pores, fine lines.
    pub detail_mm: f32,
    /// Shading up to about twice this wide (millimetres, a box's radius) is evened out.
    pub reach_mm: f32,
    /// Share of it evened out, 0-1.
    pub amount: f32,
}

/// The procedures the local engine knows: every one Afterview previews (`plan` has a recipe
/// for each; the imaging tests measure each).
pub const PROCEDURES: &[&str] = afterview_core::catalog::RENDERABLE;

/// How much of each recipe an intensity applies.
pub fn factor(i: Intensity) -> f32 {
    match i {
        Intensity::Subtle => 0.5,
        Intensity::Moderate => 1.0,
        Intensity::Pronounced => 1.5,
    }
}

/// Clinical amounts at `moderate`, millimetres or fractions.
pub mod amounts {
    /// Alar base narrowing, fraction of the alar width.
    pub const ALAR_NARROWING: f32 = 0.075;
    /// Upper vermilion height gain, fraction.
    pub const UPPER_LIP_GAIN: f32 = 0.34;
    /// Lower vermilion height gain, fraction.
    pub const LOWER_LIP_GAIN: f32 = 0.26;
    /// Menton lowered, mm.
    pub const CHIN_DROP_MM: f32 = 2.6;
    /// Brow tail raised, mm (the brow's head about a quarter of it).
    pub const BROW_TAIL_MM: f32 = 3.0;
    /// Upper-lid fold raised (more lid platform), mm.
    pub const LID_FOLD_MM: f32 = 2.0;
    /// Upper-lid hooding raised, mm.
    pub const LID_HOOD_MM: f32 = 2.6;
    /// Share of the under-eye shading (bags, the hollow below them) evened out.
    pub const UNDER_EYE_EVENED: f32 = 0.6;
    /// Jowls lifted, mm.
    pub const JOWL_LIFT_MM: f32 = 4.5;
    /// Ear rim moved towards the head, mm (at most a third of the ear's visible width).
    pub const EAR_SETBACK_MM: f32 = 4.0;
    /// Share of fine skin texture removed.
    pub const TEXTURE_REMOVED: f32 = 0.42;
    /// Skin resurfacing's filter radius, mm: fine lines (up to ~2 mm wide) are detail to it.
    pub const RESURFACING_RADIUS_MM: f32 = 3.0;
    /// Skin resurfacing's edge threshold: a fine line's contrast (variance of a few hundred)
    /// is texture; the face's own edges (nose, jaw) stay.
    pub const RESURFACING_EPS: f32 = 900.0;
}

/// Shifts of the mesh points (millimetres in the face frame); `None` = pinned.
struct Moves<'a> {
    lm: &'a Landmarks,
    f: Frame,
    shift: Vec<Option<(f32, f32)>>,
    /// Points left out entirely (neither moved nor pinned): the warp interpolates them.
    free: Vec<bool>,
    extra: Vec<Handle>,
}

impl<'a> Moves<'a> {
    fn new(lm: &'a Landmarks) -> Self {
        Moves {
            lm,
            f: lm.frame(),
            shift: vec![None; MESH_POINTS],
            free: vec![false; MESH_POINTS],
            extra: vec![],
        }
    }

    /// Face coordinates (mm) of mesh point `i`.
    fn uv(&self, i: usize) -> (f32, f32) {
        self.f.local(self.lm.points[i])
    }

    fn set(&mut self, i: usize, du: f32, dv: f32) {
        self.shift[i] = Some((du, dv));
    }

    /// Pins a ring of points outside the face outline (`mm` beyond it).
    fn pin_outside(&mut self, mm: &[f32]) {
        for &d in mm {
            for p in oval(self.lm, &self.f, d) {
                self.extra.push(Handle {
                    at: p,
                    shift: Pt::default(),
                });
            }
        }
    }

    fn handles(self) -> Vec<Handle> {
        let mut out: Vec<Handle> = (0..MESH_POINTS)
            .filter(|&i| !self.free[i])
            .map(|i| {
                let (du, dv) = self.shift[i].unwrap_or((0.0, 0.0));
                Handle {
                    at: self.lm.points[i],
                    shift: self.f.vec(du, dv),
                }
            })
            .collect();
        out.extend(self.extra);
        out
    }
}

/// A table for [`lerp_table`]: the `(u, value)` pairs sorted by `u`, as `(us, values)`.
fn by_u(pairs: impl IntoIterator<Item = (f32, f32)>) -> (Vec<f32>, Vec<f32>) {
    let mut t: Vec<(f32, f32)> = pairs.into_iter().collect();
    t.sort_by(|a, b| a.0.total_cmp(&b.0));
    t.into_iter().unzip()
}

/// Piecewise-linear interpolation of `ys` over increasing `xs`, clamped at the ends.
fn lerp_table(xs: &[f32], ys: &[f32], x: f32) -> f32 {
    if x <= xs[0] {
        return ys[0];
    }
    for i in 1..xs.len() {
        if x <= xs[i] {
            let t = (x - xs[i - 1]) / (xs[i] - xs[i - 1]).max(1e-6);
            return ys[i - 1] + t * (ys[i] - ys[i - 1]);
        }
    }
    ys[ys.len() - 1]
}

fn face_outline(lm: &Landmarks) -> Vec<Vec<Pt>> {
    vec![lm.group(&r::FACE_OVAL)]
}

/// The recipe of `procedure` for the face at `lm` in `photo`.
pub fn plan(
    procedure: &str,
    photo: &RgbImage,
    lm: &Landmarks,
    intensity: Intensity,
) -> Result<Plan, ImagingError> {
    let sc = Scene {
        photo,
        lm,
        k: factor(intensity),
    };
    let mut d = Draft {
        m: Moves::new(lm),
        allow: face_outline(lm),
        protect: Protect::Nothing,
        smoothing: None,
        shading: None,
        radius_mm: 0.0,
    };
    match procedure {
        "rhinoplasty" => rhinoplasty(&mut d, &sc)?,
        "lip-augmentation" => lip_augmentation(&mut d, &sc)?,
        "chin-augmentation" => chin_augmentation(&mut d, &sc)?,
        "brow-lift" => brow_lift(&mut d, &sc)?,
        "blepharoplasty" => blepharoplasty(&mut d, &sc)?,
        "facelift" => facelift(&mut d, &sc)?,
        "otoplasty" => otoplasty(&mut d, &sc)?,
        "skin-resurfacing" => skin_resurfacing(&mut d, &sc)?,
        _ => return Err(ImagingError::UnknownProcedure(procedure.to_owned())),
    }
    let handles = if d.smoothing.is_some() && procedure == "skin-resurfacing" {
        vec![]
    } else {
        d.m.handles()
    };
    within_frame(procedure, photo, &handles)?;
    Ok(Plan {
        handles,
        radius_mm: d.radius_mm,
        allow: d.allow,
        protect: d.protect,
        smoothing: d.smoothing,
        shading: d.shading,
    })
}

/// No moving handle brings content into the photo from beyond its edge: a face cut by the
/// frame (a headshot cropped at the chin, for a facelift's neck moving up) would otherwise be
/// warped with pixels the photo does not have (the edge row repeated into streaks), or a
/// feature it does not show would be edited. A handle within its own move of an edge may move
/// along it or out of the photo (a brow lift on a photo cropped through the forehead: the
/// pixels left behind are taken from inside).
fn within_frame(procedure: &str, photo: &RgbImage, handles: &[Handle]) -> Result<(), ImagingError> {
    let (w, h) = (photo.width() as f32, photo.height() as f32);
    for hd in handles {
        let (p, s) = (hd.at, hd.shift);
        let m = s.len();
        if m < 0.5 {
            continue;
        }
        let inward = (p.y < m && s.y > 0.0)
            || (p.y > h - 1.0 - m && s.y < 0.0)
            || (p.x < m && s.x > 0.0)
            || (p.x > w - 1.0 - m && s.x < 0.0);
        if inward {
            return Err(ImagingError::FeatureNotVisible(format!(
                "{procedure}: the part of the face it changes reaches the edge of the photo; \
                 use a photo with some space around the whole face"
            )));
        }
    }
    Ok(())
}

/// What a recipe reads: the photo, its landmarks, the intensity's factor.
#[derive(Clone, Copy)]
struct Scene<'a> {
    photo: &'a RgbImage,
    lm: &'a Landmarks,
    k: f32,
}

/// What a recipe writes: moved and pinned points, where the warp may act, what it must leave
/// untouched, texture smoothing, and the field's reach.
struct Draft<'a> {
    m: Moves<'a>,
    allow: Vec<Vec<Pt>>,
    protect: Protect,
    smoothing: Option<Smoothing>,
    shading: Option<Shading>,
    radius_mm: f32,
}

/// The rhinoplasty recipe.
fn rhinoplasty(d: &mut Draft<'_>, sc: &Scene<'_>) -> Result<(), ImagingError> {
    let k = sc.k;
    let m = &mut d.m;
    // Narrow the lower nose about its own midline: every point of the alae and the
    // nostril sill moves medially in proportion to its distance from the midline, so the
    // tip (on the midline) stays and the alar base narrows by the target fraction.
    let u0 = m.uv(r::NOSE_TIP).0;
    let s = amounts::ALAR_NARROWING * k;
    for &i in LOWER_NOSE.iter() {
        let (u, _) = m.uv(i);
        m.set(i, -s * (u - u0), 0.0);
    }
    m.pin_outside(&[6.0, 14.0]);
    // The glasses' bridge sits well above the alae: no overlay to protect.
    d.radius_mm = 9.0;

    Ok(())
}

/// The lip-augmentation recipe.
fn lip_augmentation(d: &mut Draft<'_>, sc: &Scene<'_>) -> Result<(), ImagingError> {
    let lm = sc.lm;
    let k = sc.k;
    let m = &mut d.m;
    let f = m.f;
    // Each column of the lips stretches away from its inner line (where the lips meet,
    // or the edge of the open mouth): the vermilion gains height wherever its border
    // lies inside the mesh's outline, the inner lines (so the mouth's opening) and the
    // corners stay.
    let bands = lip_bands_seen(sc.photo, lm);
    let grows = border_gains(&bands, k);
    hold_between_columns(m, &bands, &grows);
    let mut ends = vec![];
    for (band, &grow_mm) in bands.iter().zip(&grows) {
        let (u, v_in) = f.local(band.inner);
        if band.inner != lm.points[band.inner_index] {
            // An open mouth's lip edge, found in the photo: it stays, as the teeth between it
            // and the mesh's inner point (pinned) do.
            m.extra.push(Handle {
                at: band.inner,
                shift: Pt::new(0.0, 0.0),
            });
        }
        ends.push(f.at(u, v_in + band.dir * band.height));
        // An even stretch along the column: the vermilion grows by the gain wherever
        // its border is.
        for t in [0.25f32, 0.5, 0.75, 1.0] {
            m.extra.push(Handle {
                at: f.at(u, v_in + band.dir * band.height * t),
                shift: f.vec(0.0, band.dir * grow_mm * t),
            });
        }
    }
    // Every mesh point inside the lips (the bands' ends joined round the corners) is
    // interpolated, except the inner lines and the corners, which stay.
    let half = ends.len() / 2;
    let mut outline = vec![lm.points[r::MOUTH_CORNERS[0]]];
    outline.extend(&ends[..half]);
    outline.push(lm.points[r::MOUTH_CORNERS[1]]);
    outline.extend(ends[half..].iter().rev());
    let keep: Vec<usize> = r::UPPER_LIP_INNER
        .iter()
        .chain(&r::LOWER_LIP_INNER)
        .chain(&r::MOUTH_CORNERS)
        .copied()
        .collect();
    // So is the skin within 5 mm beyond the bands' ends: the lip pushes it instead of
    // folding against a pinned point next to the border (the nose stays pinned).
    let grown = grow(&outline, &f, 5.0);
    for i in 0..MESH_POINTS {
        if keep.contains(&i) || LOWER_NOSE.contains(&i) {
            continue;
        }
        if inside_polygon(&grown, lm.points[i]) {
            m.free[i] = true;
        }
    }
    for band in &bands {
        m.free[band.outer_index] = true;
    }
    m.pin_outside(&[6.0, 14.0]);
    d.radius_mm = 8.0;

    Ok(())
}

/// How far each column's border moves: the gain of the lip the photo shows, the median of the
/// column and its neighbours on the same lip (a column whose edge was misread, or an open
/// mouth's, would make a notch or a spike in the border).
fn border_gains(bands: &[LipBand], k: f32) -> Vec<f32> {
    (0..bands.len())
        .map(|j| {
            let same = |i: usize| bands.get(i).filter(|b| b.dir == bands[j].dir);
            let mut near: Vec<f32> = [j.checked_sub(1).and_then(same), same(j), same(j + 1)]
                .into_iter()
                .flatten()
                .map(|b| b.height * b.gain * k)
                .collect();
            near.sort_by(f32::total_cmp);
            near[near.len() / 2]
        })
        .collect()
}

/// Between two columns of a lip, its border is held halfway too (the mean of theirs): held at
/// the columns only, it sagged between them, a scallop per column.
fn hold_between_columns(m: &mut Moves<'_>, bands: &[LipBand], grows: &[f32]) {
    let f = m.f;
    for j in 0..bands.len().saturating_sub(1) {
        let (a, b) = (&bands[j], &bands[j + 1]);
        if a.dir != b.dir {
            continue;
        }
        let ((ua, va), (ub, vb)) = (f.local(a.inner), f.local(b.inner));
        for t in [0.5f32, 1.0] {
            let (ea, eb) = (va + a.dir * a.height * t, vb + b.dir * b.height * t);
            m.extra.push(Handle {
                at: f.at(0.5 * (ua + ub), 0.5 * (ea + eb)),
                shift: f.vec(0.0, a.dir * 0.5 * (grows[j] + grows[j + 1]) * t),
            });
        }
    }
}

/// The chin-augmentation recipe.
fn chin_augmentation(d: &mut Draft<'_>, sc: &Scene<'_>) -> Result<(), ImagingError> {
    let lm = sc.lm;
    let k = sc.k;
    let m = &mut d.m;
    let f = m.f;
    // The chin pad comes down as an implant lowers it: the whole lower border of the chin
    // alike (±9 mm of the menton, an implant's width), fading along the jaw beyond and
    // towards the lower lip above. Each point's share is its height between the lip and the
    // border below it, not below the menton: else only the menton would get the full drop and
    // the chin would come to a point.
    let (_, v_lip) = m.uv(r::LOWER_LIP_MID.1);
    let (u_c, _) = m.uv(r::MENTON);
    let (border_u, border_v) = by_u(
        r::FACE_OVAL
            .iter()
            .map(|&i| m.uv(i))
            .filter(|&(_, v)| v > v_lip + 2.0),
    );
    if border_u.is_empty() {
        return Err(ImagingError::FeatureNotVisible(
            "the chin's lower border is not in the photo".into(),
        ));
    }
    let drop = amounts::CHIN_DROP_MM * k;
    let side = |u: f32| (-(((u - u_c).abs() - 9.0).max(0.0) / 9.0).powi(2)).exp();
    for i in 0..MESH_POINTS {
        let (u, v) = m.uv(i);
        if v <= v_lip + 2.0 {
            continue;
        }
        let border = lerp_table(&border_u, &border_v, u);
        let down = ((v - v_lip - 2.0) / (border - v_lip - 2.0).max(1.0)).clamp(0.0, 1.0);
        let w = down * side(u);
        if w > 0.02 {
            m.set(i, 0.0, drop * w);
        }
    }
    // The border itself every 2 mm: the outline's own points are 8-10 mm apart, and between
    // them the field sagged towards the pins below, so the border came down as a point under
    // the menton (a patient's-eye review: a "witch's chin").
    let mut u = u_c - 26.0;
    while u <= u_c + 26.0 {
        let w = side(u);
        if w > 0.02 && u >= border_u[0] && u <= border_u[border_u.len() - 1] {
            m.extra.push(Handle {
                at: f.at(u, lerp_table(&border_u, &border_v, u)),
                shift: f.vec(0.0, drop * w),
            });
        }
        u += 2.0;
    }
    // Below the chin: the neck stays beyond 12 mm.
    m.pin_outside(&[12.0, 22.0]);
    d.allow = vec![lm.group(&r::FACE_OVAL), below_jaw(lm, &f, 14.0)];
    d.radius_mm = 14.0;

    Ok(())
}

/// The brow-lift recipe.
fn brow_lift(d: &mut Draft<'_>, sc: &Scene<'_>) -> Result<(), ImagingError> {
    let k = sc.k;
    let m = &mut d.m;
    // A lateral lift: the brow's tail rises most, its head least; the forehead above
    // follows and fades; the upper lid skin takes part of it; the lid margin, the eye
    // and everything below stay.
    for side in 0..2 {
        let upper = &r::BROW_UPPER[side];
        let us: Vec<f32> = upper.iter().map(|&i| m.uv(i).0).collect();
        // Order the table by u (tail is lateral: negative u on the subject's right).
        let tail = amounts::BROW_TAIL_MM * k;
        let (xs, lift) = by_u(
            us.iter()
                .enumerate()
                .map(|(j, &u)| (u, tail * (1.0 - 0.75 * j as f32 / 4.0))),
        );
        let lift_at = |u: f32| lerp_table(&xs, &lift, u);
        let table = |idx: &[usize]| by_u(idx.iter().map(|&i| m.uv(i)));
        let (brow_u, brow_vs) = table(upper);
        let (low_u, low_vs) = table(&r::BROW_LOWER[side]);
        let (lid_u, lid_vs) = table(&r::UPPER_LID[side]);
        // The brow's lower edge: its outline's lower line and a millimetre for the hairs below
        // it, at least 3 mm under the upper line. The whole brow rises as one; a thick brow
        // ramped from 3 mm under its upper line rose at its top only and came out taller.
        let brow_v = |u: f32| {
            let top = lerp_table(&brow_u, &brow_vs, u);
            (top, (lerp_table(&low_u, &low_vs, u) + 1.0).max(top + 3.0))
        };
        let lid_v = |u: f32| lerp_table(&lid_u, &lid_vs, u);
        let (u_lo, u_hi) = (
            xs[0] - if side == 0 { 8.0 } else { 3.0 },
            xs[xs.len() - 1] + if side == 0 { 3.0 } else { 8.0 },
        );
        let eye: Vec<usize> = r::RIGHT_EYE_RING
            .iter()
            .chain(&r::LEFT_EYE_RING)
            .copied()
            .collect();
        for i in 0..MESH_POINTS {
            if eye.contains(&i) || m.shift[i].is_some() {
                continue;
            }
            let (u, v) = m.uv(i);
            if u < u_lo || u > u_hi {
                continue;
            }
            let ((top, low), lv) = (brow_v(u), lid_v(u));
            if v > lv - 0.5 {
                continue;
            }
            // 0 at the lid margin, 1 from the brow's lower edge up, fading 25 mm above its top.
            let w = if v >= low {
                ((lv - v) / (lv - low).max(1.0)).clamp(0.0, 1.0).powf(1.5)
            } else {
                (1.0 - (top - v) / 25.0).clamp(0.0, 1.0)
            };
            // Beyond the brow's ends the lift fades over 8 mm.
            let edge = ((u - xs[0] + 8.0) / 8.0).min((xs[xs.len() - 1] + 8.0 - u) / 8.0);
            let w = w * edge.clamp(0.0, 1.0);
            if w > 0.01 {
                m.set(i, 0.0, -lift_at(u) * w);
            }
        }
    }
    m.pin_outside(&[6.0, 14.0]);
    d.radius_mm = 12.0;
    d.protect = Protect::Overlays;

    Ok(())
}

/// The blepharoplasty recipe.
fn blepharoplasty(d: &mut Draft<'_>, sc: &Scene<'_>) -> Result<(), ImagingError> {
    let k = sc.k;
    let m = &mut d.m;
    // Less hooding: the upper-lid fold and the hooding skin above it rise towards the
    // brow, so more lid platform shows; the lid margin, the eye and the brow stay. The
    // hooding rises at most 40 % of its distance to the brow's lower edge (half its amount at
    // least): the skin between is compressed, and further it would push the brow's lower
    // hairs up (a notch under the brow where it is close to the lid).
    for side in 0..2 {
        let (brow_u, brow_v) = by_u(r::BROW_LOWER[side].iter().map(|&i| m.uv(i)));
        for (ring, amount) in [
            (&r::LID_FOLD[side], amounts::LID_FOLD_MM),
            (&r::LID_HOOD[side], amounts::LID_HOOD_MM),
        ] {
            let n = ring.len() - 1;
            for (j, &i) in ring.iter().enumerate() {
                // Less at the corners.
                let t = j as f32 / n as f32;
                let w = 0.45 + 0.55 * (std::f32::consts::PI * t).sin();
                let (u, v) = m.uv(i);
                let room = 0.4 * (v - lerp_table(&brow_u, &brow_v, u)).max(0.0);
                // Never below half the amount: the procedure still shows where the brow is low.
                let full = amount * k * w;
                m.set(i, 0.0, -full.min(room.max(0.5 * full)));
            }
        }
    }
    m.pin_outside(&[6.0, 14.0]);
    d.radius_mm = 7.0;
    d.protect = Protect::Dark;
    // Under the eyes (the lower lid's part): the bags and the hollow below them, shading a few
    // millimetres wide, evened out towards the surrounding skin's tone, the texture kept.
    // The creases that outline the bags are softened as a facelift softens the nasolabial folds.
    let lm = sc.lm;
    let f = lm.frame();
    let include: Vec<Vec<Pt>> = (0..2).map(|side| under_eye_band(lm, side)).collect();
    let exclude: Vec<Vec<Pt>> = [&r::RIGHT_EYE_RING, &r::LEFT_EYE_RING]
        .map(|ring| grow(&lm.group(ring), &f, 1.2))
        .to_vec();
    d.smoothing = Some(Smoothing {
        include: include.clone(),
        exclude: exclude.clone(),
        radius_mm: 1.6,
        eps: 220.0,
        amount: (0.45 * k).min(0.8),
        feather_mm: 2.0,
    });
    d.shading = Some(Shading {
        include,
        exclude,
        detail_mm: 1.0,
        reach_mm: 7.0,
        amount: (amounts::UNDER_EYE_EVENED * k).min(0.9),
    });

    Ok(())
}

/// The skin under eye `side` (0 = the subject's right) that a lower blepharoplasty changes:
/// from the lower lid's margin down to 3 mm below the third mesh ring under the eye (the crease
/// that outlines a bag, where the lid meets the cheek, lies about there), its inner end at the
/// inner corner's ring (the nose's side wall is not part of it).
pub(crate) fn under_eye_band(lm: &Landmarks, side: usize) -> Vec<Pt> {
    let f = lm.frame();
    let mut band = lm.group(&r::LOWER_LID[side]);
    let low = &r::UNDER_EYE_LOW[side];
    band.extend(
        lm.group(&low[..low.len() - 1])
            .into_iter()
            .rev()
            .map(|p| p.plus(f.vec(0.0, 3.0))),
    );
    band
}

/// The facelift recipe.
fn facelift(d: &mut Draft<'_>, sc: &Scene<'_>) -> Result<(), ImagingError> {
    let lm = sc.lm;
    let k = sc.k;
    let m = &mut d.m;
    let f = m.f;
    // The lower face lifts along its own vertical: most at the jowls, nothing at the
    // chin's centre, half at the jaw's angle, none at the ears (`jowl_profile`); fading over
    // 25 mm above the jawline.
    // One smooth function for every point (outline included), so the outline stays
    // smooth; purely vertical, so the face is not widened. Below the jaw, only skin
    // moves: a collar or the background is kept rigid, the skin meeting it anchored there
    // (`Protect::Anchoring`).
    let lift = amounts::JOWL_LIFT_MM * k;
    let (ju, jv) = by_u(r::JAWLINE.iter().map(|&i| m.uv(i)));
    let half = (ju[ju.len() - 1] - ju[0]) / 2.0;
    let mid = (ju[ju.len() - 1] + ju[0]) / 2.0;
    let profile = |u: f32| jowl_profile(((u - mid).abs() / half.max(1.0)).min(1.0));
    let (_, v_nose) = f.local(lm.points[r::SUBNASALE]);
    for i in 0..MESH_POINTS {
        let (u, v) = m.uv(i);
        if v < v_nose {
            continue;
        }
        let above = lerp_table(&ju, &jv, u) - v;
        let fade = (1.0 - above / 25.0).clamp(0.0, 1.0);
        let w = profile(u) * fade * fade;
        if w > 0.01 {
            m.set(i, 0.0, -lift * w);
        }
    }
    // Soften the folds: move them a little up and out.
    for side in 0..2 {
        let s = if side == 0 { -1.0 } else { 1.0 };
        for &i in &r::NASOLABIAL[side][1..] {
            let (_, dv) = m.shift[i].unwrap_or((0.0, 0.0));
            m.set(i, s * 0.6 * k, dv - 0.6 * k);
        }
    }
    // The neck below follows with the same profile, fading over 20 mm.
    for (u, v) in ju.iter().copied().zip(jv.iter().copied()) {
        for d in [6.0f32, 12.0] {
            let w = profile(u) * (1.0 - d / 20.0);
            m.extra.push(Handle {
                at: f.at(u, v + d),
                shift: f.vec(0.0, -lift * w),
            });
        }
        m.extra.push(Handle {
            at: f.at(u, v + 22.0),
            shift: Pt::default(),
        });
    }
    m.pin_outside(&[10.0, 20.0]);
    d.allow = vec![lm.group(&r::FACE_OVAL), below_jaw(lm, &f, 22.0)];
    d.radius_mm = 14.0;
    d.protect = Protect::Anchoring;
    d.smoothing = Some(Smoothing {
        include: (0..2)
            .map(|s| band(lm, &f, &r::NASOLABIAL[s], 5.0))
            .collect(),
        exclude: vec![lm.group(&LIPS_OUTLINE)],
        radius_mm: 1.6,
        eps: 220.0,
        amount: (0.45 * k).min(0.8),
        feather_mm: 2.0,
    });

    Ok(())
}

/// The facelift's lift across the face, by `t`, the distance from the chin's centre over half
/// the jaw's width: 0 at the centre, 1 at 55 %, half at the jaw's angle (85 %), none from 95 %
/// out: the face's side at the ear, where a facelift's skin is anchored and where the mesh's
/// outline runs over the earlobe (lifted, its crease was dragged into a dark pocket).
fn jowl_profile(t: f32) -> f32 {
    if t < 0.55 {
        let x = t / 0.55;
        x * x * (3.0 - 2.0 * x)
    } else if t < 0.85 {
        1.0 - (t - 0.55) / 0.30 * 0.5
    } else {
        (0.5 * (0.95 - t) / 0.10).max(0.0)
    }
}

/// How far beyond an ear's rim its setback fades (mm).
const EAR_FADE_MM: f32 = 24.0;
/// Over how many millimetres from the found ear's top and bottom its setback grows from 30 %.
const EAR_END_MM: f32 = 8.0;

/// The otoplasty recipe.
fn otoplasty(d: &mut Draft<'_>, sc: &Scene<'_>) -> Result<(), ImagingError> {
    let photo = sc.photo;
    let lm = sc.lm;
    let k = sc.k;
    let m = &mut d.m;
    let f = m.f;
    let skin = SkinModel::learn(photo, lm);
    let mut any = false;
    d.allow = vec![];
    for side in 0..2 {
        let Some(ear) = crate::ears::find(photo, lm, &f, &skin, side) else {
            continue;
        };
        any = true;
        let s = if side == 0 { -1.0 } else { 1.0 };
        let (top, bottom) = (ear.rows[0].0, ear.rows[ear.rows.len() - 1].0);
        for &(v, u_root, u_rim) in &ear.rows {
            // The ear folds back towards the head: its rim moves in, its root stays, and
            // what lies between follows evenly; less towards its found ends, which the rows
            // above and below, left where they are, would otherwise shear from it.
            let width = (u_rim - u_root).abs();
            let end = ((v - top).min(bottom - v) / EAR_END_MM).clamp(0.0, 1.0);
            let setback = (amounts::EAR_SETBACK_MM * k).min(width / 3.0)
                * (0.3 + 0.7 * end * end * (3.0 - 2.0 * end));
            for t in [1.0f32 / 3.0, 2.0 / 3.0, 1.0] {
                m.extra.push(Handle {
                    at: f.at(u_root + s * width * t, v),
                    shift: f.vec(-s * setback * t, 0.0),
                });
            }
            // Beyond the rim what lies behind the ear closes over its old place evenly, the
            // shift fading over EAR_FADE_MM: left to the warp's radius it faded within a few
            // millimetres, and the rim's light and the background were dragged into streaks.
            for t in [0.25f32, 0.5, 0.75, 1.0] {
                m.extra.push(Handle {
                    at: f.at(u_rim + s * EAR_FADE_MM * t, v),
                    shift: f.vec(-s * setback * (1.0 - t), 0.0),
                });
            }
        }
        d.allow.push(ear.region(&f, EAR_FADE_MM + 4.0));
    }
    if !any {
        return Err(ImagingError::FeatureNotVisible(
            "no ear could be found in the photo: hidden by hair, turned away, or too close \
                 in colour or light to what surrounds it; otoplasty needs at least one ear \
                 clearly in view"
                .into(),
        ));
    }
    d.radius_mm = 12.0;

    Ok(())
}

/// The skin-resurfacing recipe.
fn skin_resurfacing(d: &mut Draft<'_>, sc: &Scene<'_>) -> Result<(), ImagingError> {
    let lm = sc.lm;
    let k = sc.k;
    let m = &mut d.m;
    let f = m.f;
    d.allow = vec![];
    let mut exclude: Vec<Vec<Pt>> = vec![
        grow(&lm.group(&r::RIGHT_EYE_RING), &f, 2.5),
        grow(&lm.group(&r::LEFT_EYE_RING), &f, 2.5),
        grow(&lm.group(&LIPS_OUTLINE), &f, 1.5),
        grow(&lm.group(&NOSTRIL_OUTLINE), &f, 1.0),
    ];
    for side in 0..2 {
        let mut brow = lm.group(&r::BROW_UPPER[side]);
        brow.extend(lm.group(&r::BROW_LOWER[side]).into_iter().rev());
        exclude.push(grow(&brow, &f, 2.5));
    }
    d.smoothing = Some(Smoothing {
        include: vec![with_forehead(lm, &f)],
        exclude,
        radius_mm: amounts::RESURFACING_RADIUS_MM,
        eps: amounts::RESURFACING_EPS,
        amount: (amounts::TEXTURE_REMOVED * k).min(0.9),
        feather_mm: RESURFACING_FEATHER_MM,
    });
    d.radius_mm = 1.0;

    Ok(())
}

/// Over how many millimetres a resurfacing fades out towards the face's outline: it ended
/// within 2 mm, a line across an older forehead, smooth below and lined above.
const RESURFACING_FEATHER_MM: f32 = 7.0;

/// The face outline grown by 1 mm, its upper part raised over the forehead (Face Mesh's outline
/// stops mid-forehead, and a resurfacing reaches the hairline): points above the brows by up
/// to 12 mm, most at the top. Only skin-coloured pixels are smoothed, so hair stays as it is.
fn with_forehead(lm: &Landmarks, f: &Frame) -> Vec<Pt> {
    let brows = lm
        .group(&r::BROW_UPPER[0])
        .into_iter()
        .chain(lm.group(&r::BROW_UPPER[1]));
    let v_brows = brows.map(|p| f.local(p).1).fold(f32::MAX, f32::min);
    let outline = oval(lm, f, 1.0);
    let v_top = outline
        .iter()
        .map(|&p| f.local(p).1)
        .fold(f32::MAX, f32::min);
    outline
        .into_iter()
        .map(|p| {
            let (u, v) = f.local(p);
            let t = ((v_brows - v) / (v_brows - v_top).max(1.0)).clamp(0.0, 1.0);
            f.at(u, v - 12.0 * t)
        })
        .collect()
}

/// One column of a lip, from its inner line outwards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LipBand {
    /// The inner point (image pixels).
    pub inner: Pt,
    /// Mesh index of the outer point.
    pub outer_index: usize,
    /// Mesh index of the inner point.
    pub inner_index: usize,
    /// Height from the inner line outwards, mm (the mesh's, capped).
    pub height: f32,
    /// Whether the cap applied (the mesh's outline lies farther out).
    pub capped: bool,
    /// -1 for the upper lip (upwards), 1 for the lower.
    pub dir: f32,
    /// Height gain at `moderate`.
    pub gain: f32,
}

/// The columns the lip recipe stretches (corners excluded): the mesh's outer and inner lip
/// lines, the band capped at 9 mm (upper) and 11 mm (lower) where the mesh's outline is drawn
/// far out on the skin.
pub fn lip_bands(lm: &Landmarks) -> Vec<LipBand> {
    let f = lm.frame();
    let mut out = vec![];
    for (outer, inner, dir, gain, cap) in [
        (
            &r::UPPER_LIP_OUTER,
            &r::UPPER_LIP_INNER,
            -1.0f32,
            amounts::UPPER_LIP_GAIN,
            9.0f32,
        ),
        (
            &r::LOWER_LIP_OUTER,
            &r::LOWER_LIP_INNER,
            1.0,
            amounts::LOWER_LIP_GAIN,
            11.0,
        ),
    ] {
        for j in 1..outer.len() - 1 {
            let (_, vo) = f.local(lm.points[outer[j]]);
            let (_, vi) = f.local(lm.points[inner[j]]);
            let h = ((vo - vi) * dir).max(0.3);
            out.push(LipBand {
                inner: lm.points[inner[j]],
                outer_index: outer[j],
                inner_index: inner[j],
                height: h.min(cap),
                capped: h > cap,
                dir,
                gain,
            });
        }
    }
    out
}

/// [`lip_bands`], each starting where the photo shows the lip's inner edge. On an open mouth
/// the mesh's inner lip points often lie on the teeth or the tongue (the face model was
/// trained mostly on closed mouths), and a band from there stretched the teeth with the lip:
/// a sawtooth along the upper teeth, lower incisors drawn into the lip. Each column is read
/// from 1 mm inside the lip's border (the mesh's outer point) inwards, every quarter
/// millimetre, against the lip's own colour 1-2 mm inside its border; two samples in a row
/// that are teeth (40 levels brighter, and greyer), the mouth (darker than half the lip and
/// than 60) or, on the upper lip, gums or teeth (30 levels over its darkest sample so far) end
/// the lip there. A closed mouth's bands are as the mesh's.
pub fn lip_bands_seen(photo: &RgbImage, lm: &Landmarks) -> Vec<LipBand> {
    let f = lm.frame();
    lip_bands(lm)
        .into_iter()
        .map(|b| lip_edge(photo, lm, &f, b))
        .collect()
}

fn lip_edge(photo: &RgbImage, lm: &Landmarks, f: &Frame, b: LipBand) -> LipBand {
    const STEP_MM: f32 = 0.25;
    let (u, vi) = f.local(b.inner);
    // The whole column, to the mesh's outer point (the vermilion border), whatever the cap.
    let whole = (f.local(lm.points[b.outer_index]).1 - vi) * b.dir;
    let (w, h) = photo.dimensions();
    if whole < 3.0 || w == 0 || h == 0 {
        return b;
    }
    // A sample `mm` in from the border.
    let sample = |mm: f32| {
        let p = f.at(u, vi + b.dir * (whole - mm));
        let x = (p.x.round().max(0.0) as u32).min(w - 1);
        let y = (p.y.round().max(0.0) as u32).min(h - 1);
        let c = photo.get_pixel(x, y).0.map(f32::from);
        let lum = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        let chroma = c[0].max(c[1]).max(c[2]) - c[0].min(c[1]).min(c[2]);
        (lum, chroma)
    };
    // The lip: 1-2 mm in from its border.
    let mut lip: Vec<(f32, f32)> = (4..=8).map(|k| sample(k as f32 * STEP_MM)).collect();
    lip.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (lum, chroma) = lip[lip.len() / 2];
    // Teeth: brighter and greyer than the lip. The mouth: dark in itself, not only darker
    // than the lip.
    // (Greyer or as grey: a black-and-white photo's teeth are no greyer than its lips.)
    let off = |(l, c): (f32, f32)| (l > lum + 40.0 && c <= chroma) || l < (0.5 * lum).min(60.0);
    // Above the upper teeth a smile shows the gums: pink, and brighter than the upper lip's
    // lower edge, its darkest part (counted as lip, they were stretched with it into a gummy
    // smile). Two samples in a row 30 levels over the darkest so far end the upper lip too.
    let gums = b.dir < 0.0;
    let mut darkest = f32::MAX;
    // Not within a millimetre of the mesh's inner point: a closed mouth's seam between the
    // lips is dark there, and no cut.
    let n = ((whole - 1.0) / STEP_MM) as usize;
    let mut next = sample(4.0 * STEP_MM);
    for k in 4..n {
        let mm = k as f32 * STEP_MM;
        let here = next;
        next = sample(mm + STEP_MM);
        darkest = darkest.min(here.0);
        let gum = gums && here.0 > darkest + 30.0 && next.0 > darkest + 30.0;
        if gum || (off(here) && off(next)) {
            // The lip ends just outside the first of the two.
            let cut = whole - mm + STEP_MM;
            let height = (whole - cut).min(b.height).max(0.3);
            return LipBand {
                inner: f.at(u, vi + b.dir * cut),
                height,
                ..b
            };
        }
    }
    b
}

/// The points of the lower nose (alae, nostril sills, columella), both sides and the midline.
const LOWER_NOSE: [usize; 59] = [
    // Subject's right ala and nostril.
    64, 48, 102, 129, 49, 219, 235, 98, 240, 115, 220, 218, 79, 166, 59, 75, 60, 237, 239, 238, 20,
    241, 242, 99, 97, 44, 45, // Left.
    294, 278, 331, 358, 279, 439, 455, 327, 460, 344, 440, 438, 309, 392, 289, 305, 290, 457, 459,
    458, 250, 461, 462, 328, 326, 274, 275, // Midline: tip, columella, subnasale.
    1, 4, 19, 94, 2,
];

/// The lips' outer outline as one polygon.
const LIPS_OUTLINE: [usize; 20] = [
    61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146,
];

/// Round the nostrils and the alar bases.
const NOSTRIL_OUTLINE: [usize; 12] = [98, 64, 48, 115, 220, 45, 4, 275, 440, 344, 278, 294];

/// Even-odd point-in-polygon test.
fn inside_polygon(poly: &[Pt], p: Pt) -> bool {
    let mut inside = false;
    for i in 0..poly.len() {
        let (a, b) = (poly[i], poly[(i + 1) % poly.len()]);
        if (a.y > p.y) != (b.y > p.y) && p.x < a.x + (p.y - a.y) / (b.y - a.y) * (b.x - a.x) {
            inside = !inside;
        }
    }
    inside
}

/// A band of half-width `mm` around a polyline.
fn band(lm: &Landmarks, f: &Frame, idx: &[usize], mm: f32) -> Vec<Pt> {
    let pts = lm.group(idx);
    let n = pts.len();
    let normal = |i: usize| {
        let a = pts[i.saturating_sub(1)];
        let b = pts[(i + 1).min(n - 1)];
        let d = b.minus(a);
        let l = d.len().max(1e-3);
        Pt::new(-d.y / l, d.x / l)
    };
    let mut out: Vec<Pt> = (0..n)
        .map(|i| pts[i].plus(normal(i).times(f.px(mm))))
        .collect();
    out.extend(
        (0..n)
            .rev()
            .map(|i| pts[i].minus(normal(i).times(f.px(mm)))),
    );
    out
}

/// The region under the jawline down to `mm` below it (the neck the jaw or chin moves over).
fn below_jaw(lm: &Landmarks, f: &Frame, mm: f32) -> Vec<Pt> {
    let jaw = lm.group(&r::JAWLINE);
    let mut poly = jaw.clone();
    poly.extend(jaw.iter().rev().map(|p| p.plus(f.vec(0.0, mm))));
    poly
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_interpolate_and_clamp() {
        let xs = [0.0, 10.0];
        let ys = [1.0, 3.0];
        assert_eq!(lerp_table(&xs, &ys, -5.0), 1.0);
        assert_eq!(lerp_table(&xs, &ys, 5.0), 2.0);
        assert_eq!(lerp_table(&xs, &ys, 50.0), 3.0);
    }

    #[test]
    fn index_tables_are_in_range_and_distinct() {
        for t in [&LOWER_NOSE[..], &LIPS_OUTLINE, &NOSTRIL_OUTLINE] {
            let mut v = t.to_vec();
            v.sort_unstable();
            v.dedup();
            assert_eq!(v.len(), t.len());
            assert!(v.iter().all(|&i| i < MESH_POINTS));
        }
    }
}
