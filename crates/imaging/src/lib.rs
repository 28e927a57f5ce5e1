//! Afterview's image work: face landmarks, the local preview engine, labels and composites.
//!
//! Job: turn bytes and values into bytes. This crate knows nothing of tokio, HTTP, SQL or Redis;
//! every function is synchronous and CPU-bound (callers run it off their async threads).
//!
//! Invariants:
//! - **Deterministic**: the same photo, procedure, intensity and landmarks give byte-identical
//!   output (no randomness, no threads, fixed evaluation order, fixed PNG settings).
//! - **Local**: pixels outside the procedure's allowed region (the face outline, plus the neck
//!   under the jaw for a facelift or a chin, the ears for otoplasty) are never written
//!   ([`Simulated::region`]); glasses frames and hair in front of the face are kept rigid.
//! - **Anatomical**: recipes move detected feature outlines by clinical amounts in millimetres
//!   ([`procedures`]), measured from the iris ([`face::Frame::px_per_mm`]).
//! - **Honest**: no face, no preview ([`face::FaceError::NoFace`]); a feature the photo does
//!   not show (ears under hair) fails with `feature_not_visible` rather than moving something
//!   else.

mod ears;
pub mod face;
mod geom;
pub mod measure;
pub mod procedures;
pub mod register;
pub mod render;
pub mod warp;

use afterview_core::ErrorCode;
use afterview_core::tasks::{ControlPoints, Intensity};
use image::RgbImage;

pub use afterview_intake as intake;
pub use afterview_intake::{IntakeError, Limits};
pub use face::skin::SkinModel;
pub use face::{FaceError, Landmarks};
pub use warp::Rect;

use face::{Frame, Pt, regions};
use procedures::{Plan, Protect};
use warp::{Field, Mask};

/// Identifies the local engine's algorithm in stored previews (bump when output changes).
pub const ENGINE_VERSION: &str = "afterview-local/2";

/// The default corner label.
pub const DEFAULT_LABEL: &str = "SIMULATION";

/// What can go wrong making a preview.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImagingError {
    /// The photo could not be read.
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// No usable face.
    #[error(transparent)]
    Face(#[from] FaceError),
    /// The procedure has no recipe.
    #[error("unknown procedure {0:?}")]
    UnknownProcedure(String),
    /// The photo does not show what the procedure changes.
    #[error("{0}")]
    FeatureNotVisible(String),
}

impl ImagingError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Intake(e) => e.code(),
            Self::Face(FaceError::NoFace | FaceError::TooSmall(_)) => ErrorCode::NoFaceDetected,
            Self::Face(FaceError::BadControlPoints(_)) => ErrorCode::InvalidControlPoints,
            Self::UnknownProcedure(_) => ErrorCode::UnknownProcedure,
            Self::FeatureNotVisible(_) => ErrorCode::FeatureNotVisible,
        }
    }
}

/// A simulated photo.
#[derive(Debug, Clone)]
pub struct Simulated {
    /// The photo after the procedure (without a label).
    pub image: RgbImage,
    /// The pixels that may differ from the input.
    pub region: Rect,
}

/// Filled polygons, feathered inwards over `feather` pixels: 0 on and outside the outline,
/// 1 deeper inside than the feather. The feather is blurred over `rect` grown by its reach, so
/// an outline near `rect`'s edge fades there as anywhere (blurred within `rect` alone, the
/// zeros beyond its edge did not count, and a band's mask ended in a hard step).
fn polygon_mask(rect: Rect, polys: &[Vec<Pt>], feather: u32) -> Mask {
    let reach = rect.grown(3 * feather, u32::MAX, u32::MAX);
    let mut m = Mask::new(reach);
    for p in polys {
        m.fill_polygon(p, 1.0);
    }
    if feather > 0 {
        m.blur(feather);
        m.map(|_, _, v| (2.0 * v - 1.0).max(0.0));
    }
    if reach == rect {
        return m;
    }
    let mut out = Mask::new(rect);
    out.map(|x, y, _| m.at(x, y));
    out
}

/// What lies in front of the skin inside `rect` (glasses frames, hair): 1 where a pixel is not
/// the patient's skin, except on the face's own features (eyes, brows, lips, nostrils).
fn protect_mask(
    photo: &RgbImage,
    (lm, skin): (&Landmarks, &SkinModel),
    f: &Frame,
    rect: Rect,
    only_dark: bool,
) -> Mask {
    let dark = if only_dark { 0.35 } else { 0.2 } * skin.luminance();
    let judged = (!only_dark).then_some(skin);
    let mut m = overlays(photo, (judged, f.px(0.7)), rect, dark);
    let grow = |idx: &[usize], mm: f32| face::grow(&lm.group(idx), f, mm);
    if !only_dark {
        // The face's own dark features are not overlays: eyes and lips never, brows only where
        // an overlay from outside crosses them (a frame). With only dark pixels protected
        // (blepharoplasty), the eyes and brows stay anyway.
        for p in [
            grow(&regions::RIGHT_EYE_RING, 1.0),
            grow(&regions::LEFT_EYE_RING, 1.0),
            grow(&regions::UPPER_LIP_OUTER, 1.5),
            grow(&regions::LOWER_LIP_OUTER, 1.5),
            lm.group(&[98, 64, 48, 115, 220, 45, 4, 275, 440, 344, 278, 294, 327, 2]),
        ] {
            m.clear_polygon(&p);
        }
        let glasses = wears_glasses(&m, lm, f);
        free_brows(&mut m, photo, (lm, f), dark, glasses);
    }
    // Catch anti-aliased edges, softly, never weakening a protected pixel.
    let hard = m.clone();
    m.dilate(1);
    m.blur(1);
    m.map(|x, y, v| v.max(hard.at(x, y)));
    m
}

/// In each brow's region, only what continues into it from an overlay outside stays protected
/// in `m`: a frame crossing the brow; the brow's own hair, black too, moves.
fn free_brows(
    m: &mut Mask,
    photo: &RgbImage,
    (lm, f): (&Landmarks, &Frame),
    dark: f32,
    glasses: bool,
) {
    let rect = m.rect;
    // Near-black pixels (the frames' cores), only wanted where there are frames.
    let black = glasses.then(|| overlays(photo, (None, 0.0), rect, dark));
    for side in 0..2 {
        let mut brow = lm.group(&regions::BROW_UPPER[side]);
        brow.extend(lm.group(&regions::BROW_LOWER[side]).into_iter().rev());
        let reach = |mm: f32| (mm * f.px_per_mm).ceil().max(1.0) as u32;
        let mut core = Mask::new(rect);
        core.fill_polygon(&brow, 1.0);
        let mut inside = if glasses {
            Mask::new(rect)
        } else {
            core.clone()
        };
        if !glasses {
            // No frame to keep apart from the brow: the region reaches from 2 mm above the
            // brow's upper outline down to the upper lid's margin, so that a full brow's hair
            // (the mesh's brow outline often sits on its upper half) and the lid's crease move
            // with the skin; kept, the brow's lower half stayed while its top rose.
            inside.dilate(reach(2.0));
            let mut top: Vec<Pt> = lm
                .group(&regions::BROW_UPPER[side])
                .into_iter()
                .map(|p| p.plus(f.vec(0.0, -2.0)))
                .collect();
            let mut lid = lm.group(&regions::UPPER_LID[side]);
            let u = |p: &Pt| f.local(*p).0;
            top.sort_by(|a, b| u(a).total_cmp(&u(b)));
            lid.sort_by(|a, b| u(b).total_cmp(&u(a)));
            top.extend(lid);
            inside.fill_polygon(&top, 1.0);
        }
        inside.fill_polygon(&face::grow(&brow, f, 2.0), 1.0);
        // What continues into the region from an overlay outside it (a frame's soft edge,
        // lighter than near-black) stays too: lifted with the brow it would smear onto the
        // forehead. Across the margin (2 mm), but into the brow's own outline only 1 mm:
        // dark brow hair is "not skin" too, and kept deeper it would be split, part of the
        // brow left behind.
        let continued = continued_into(m, &inside, (&core, reach(1.0)), reach(2.0));
        // A frame crossing the brow stays whole: near-black pixels reached from near-black
        // outside the region through near-black ones. Near-black on its own is not a frame:
        // black brow hair (dark-haired patients, darker skin whose tone sets the threshold)
        // kept rigid left the brow behind while its lighter top edge rose with the skin.
        let far = u32::MAX;
        let frame = match &black {
            Some(black) => continued_into(black, &inside, (&core, far), far),
            None => Mask::new(rect),
        };
        m.map(|x, y, v| {
            if inside.at(x, y) == 0.0 || continued.at(x, y) > 0.0 || frame.at(x, y) > 0.0 {
                v
            } else {
                0.0
            }
        });
    }
}

/// 1 where a pixel of `rect` is clearly not skin: darker than `dark` (frames, dark hair) or,
/// given the skin's model, far from the skin's colour (`colour_px`: the radius the colour is
/// averaged over). Shaded skin (lid creases, under the jaw) keeps its chroma and stays movable.
fn overlays(
    photo: &RgbImage,
    (skin, colour_px): (Option<&SkinModel>, f32),
    rect: Rect,
    dark: f32,
) -> Mask {
    let mut m = Mask::new(rect);
    // The colour judged is averaged over ±0.7 mm: a JPEG stores chroma in blocks (16 pixels
    // in most photos), and skin near the threshold (shaded, under the jaw) crossed it block
    // by block, some blocks kept rigid and their neighbours moved: a mosaic along the jaw.
    let rw = rect.width() as usize;
    let smooth = skin.map(|_| box_averaged(photo, rect, colour_px.round().max(1.0) as usize));
    m.map(|x, y, _| {
        let p = photo.get_pixel(x, y).0;
        let lum = 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
        match (skin, &smooth) {
            _ if lum < dark => 1.0,
            (Some(skin), Some(smooth)) => {
                let i = (y - rect.y0) as usize * rw + (x - rect.x0) as usize;
                let q = [0, 1, 2].map(|c| smooth[c][i].round().clamp(0.0, 255.0) as u8);
                ((skin.distance(q) - 5.0) / 2.0).clamp(0.0, 1.0)
            }
            _ => 0.0,
        }
    });
    m
}

/// Whether glasses sit on the face: a frame's bridge crosses the nose between the eyes, so some
/// row of the nose's bridge (from between the brows to the level of the eyes' inner corners)
/// is overlay (`m` ≥ 0.5: near-black or far from the skin's colour) across most of ±4 mm.
fn wears_glasses(m: &Mask, lm: &Landmarks, f: &Frame) -> bool {
    let (u0, v_top) = f.local(lm.points[168]);
    let v_bottom = f.local(lm.points[6]).1.max(v_top + 2.0);
    let step = (0.5 / f.px_per_mm).min(0.25);
    let mut best = 0.0f32;
    let mut v = v_top - 4.0;
    while v <= v_bottom {
        let (mut n, mut held) = (0, 0);
        let mut u = u0 - 4.0;
        while u <= u0 + 4.0 {
            let p = f.at(u, v);
            if p.x >= 0.0 && p.y >= 0.0 {
                n += 1;
                held += usize::from(m.at(p.x as u32, p.y as u32) >= 0.5);
            }
            u += step;
        }
        if n > 0 {
            best = best.max(held as f32 / n as f32);
        }
        v += step;
    }
    // (Here: 0.55 to 0.97 on Grace Hopper's frames, 0 on six faces without glasses.)
    best >= 0.35
}

/// Each channel of `photo` inside `rect`, averaged over a box of radius `r` (row-major).
fn box_averaged(photo: &RgbImage, rect: Rect, r: usize) -> Vec<Vec<f32>> {
    let (rw, rh) = (rect.width() as usize, rect.height() as usize);
    (0..3)
        .map(|c| {
            let v: Vec<f32> = (0..rh)
                .flat_map(|y| (0..rw).map(move |x| (x, y)))
                .map(|(x, y)| {
                    f32::from(photo.get_pixel(rect.x0 + x as u32, rect.y0 + y as u32).0[c])
                })
                .collect();
            warp::box_blur(&v, rw, rh, r)
        })
        .collect()
}

/// The pixels of `region` reached from protected pixels outside it (`protected` ≥ 0.5) through
/// protected pixels of `region`, in at most `reach` steps (4-neighbours), and those of `core`
/// (within `region`) only within its own step limit: an overlay that crosses into the region
/// (1 where reached).
fn continued_into(
    protected: &Mask,
    region: &Mask,
    (core, core_reach): (&Mask, u32),
    reach: u32,
) -> Mask {
    let rect = protected.rect;
    let mut out = Mask::new(rect);
    let held = |x: u32, y: u32| protected.at(x, y) >= 0.5;
    let mut front: Vec<(u32, u32)> = vec![];
    for y in rect.y0..rect.y1 {
        for x in rect.x0..rect.x1 {
            if region.at(x, y) > 0.0
                && held(x, y)
                && neighbours(rect, x, y).any(|(nx, ny)| region.at(nx, ny) == 0.0 && held(nx, ny))
            {
                front.push((x, y));
            }
        }
    }
    for &(x, y) in &front {
        out.put(x, y, 1.0);
    }
    for step in 1..reach {
        let mut next = vec![];
        for &(x, y) in &front {
            for (nx, ny) in neighbours(rect, x, y) {
                if region.at(nx, ny) > 0.0
                    && held(nx, ny)
                    && out.at(nx, ny) == 0.0
                    && (step < core_reach || core.at(nx, ny) == 0.0)
                {
                    out.put(nx, ny, 1.0);
                    next.push((nx, ny));
                }
            }
        }
        if next.is_empty() {
            break;
        }
        front = next;
    }
    out
}

/// The 4-neighbours of `(x, y)` inside `rect`.
fn neighbours(rect: Rect, x: u32, y: u32) -> impl Iterator<Item = (u32, u32)> {
    [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)]
        .into_iter()
        .map(move |(dx, dy)| (i64::from(x) + dx, i64::from(y) + dy))
        .filter(move |&(nx, ny)| nx >= 0 && ny >= 0 && rect.contains(nx as u32, ny as u32))
        .map(|(nx, ny)| (nx as u32, ny as u32))
}

/// The warp and smoothing of a plan, applied.
fn render_plan(photo: &RgbImage, lm: &Landmarks, plan: &Plan) -> Simulated {
    let f = lm.frame();
    let (w, h) = photo.dimensions();
    // The skin model, learned once and only if a step needs it.
    let learned = std::cell::OnceCell::new();
    let skin = || *learned.get_or_init(|| SkinModel::learn(photo, lm));
    let mut image = photo.clone();
    let mut region = Rect::default();
    if plan.handles.iter().any(|h| h.shift.len() > 1e-3) {
        let field = Field::fit(&plan.handles, f.px(plan.radius_mm));
        let support = field.support(w, h);
        let feather = f.px(1.5).round().max(1.0) as u32;
        let allow = polygon_mask(support, &plan.allow, feather);
        let protect = match plan.protect {
            Protect::Nothing => None,
            Protect::Dark => Some(protect_mask(photo, (lm, &skin()), &f, support, true)),
            Protect::Overlays | Protect::Anchoring => {
                Some(protect_mask(photo, (lm, &skin()), &f, support, false))
            }
        };
        // Overlays wider than 5 mm (a collar, the background; never a frame's line) are walls
        // the warp draws nothing from.
        let walls = match plan.protect {
            Protect::Anchoring => protect.as_ref().map(|p| p.opened(f.px(2.5).round() as u32)),
            _ => None,
        };
        let (out, r) = warp::apply(photo, &field, &allow, (protect.as_ref(), walls.as_ref()));
        image = out;
        region = r;
    }
    if let Some(s) = &plan.smoothing {
        let rect = bounds(&s.include, w, h);
        let px = |mm: f32| f.px(mm).round().max(1.0) as u32;
        let mask = skin_region(
            photo,
            &skin(),
            rect,
            (Some(&s.include), &s.exclude),
            (px(s.feather_mm), px(2.0)),
        );
        let radius = f.px(s.radius_mm).round().max(1.0) as u32;
        let (out, r) = warp::smooth_detail(&image, &mask, radius, s.eps, s.amount);
        image = out;
        region = region.union(r);
    }
    if let Some(s) = &plan.shading {
        let px = |mm: f32| f.px(mm).round().max(1.0) as u32;
        let (fine, coarse) = (px(s.detail_mm), px(s.reach_mm).max(px(s.detail_mm) + 1));
        let rect = bounds(&s.include, w, h);
        let mask = skin_region(
            photo,
            &skin(),
            rect,
            (Some(&s.include), &s.exclude),
            (px(1.5), px(1.5)),
        );
        // The surroundings' tone: the skin within reach, the excluded features left out.
        let reach = rect.grown(coarse, w, h);
        let weight = skin_region(photo, &skin(), reach, (None, &s.exclude), (0, 0));
        let (out, r) = warp::even_shading(&image, &mask, &weight, (fine, coarse), s.amount);
        image = out;
        region = region.union(r);
    }
    Simulated { image, region }
}

/// The bounding rectangle of `polys`, 2 pixels round, within `w × h`.
fn bounds(polys: &[Vec<Pt>], w: u32, h: u32) -> Rect {
    polys.iter().fold(Rect::default(), |acc, p| {
        acc.union(Rect::around(p, 2.0, w, h))
    })
}

/// How much each pixel of `rect` is the patient's skin inside the `include` polygons (feathered
/// inwards over `feather.0` pixels; all of `rect` when `None`) and outside the `exclude` ones
/// (their edges blurred over `feather.1`): the skin model's likelihood of the photo's pixel,
/// times both.
fn skin_region(
    photo: &RgbImage,
    skin: &SkinModel,
    rect: Rect,
    (include, exclude): (Option<&[Vec<Pt>]>, &[Vec<Pt>]),
    (feather, feather_exclude): (u32, u32),
) -> Mask {
    let mut mask = match include {
        Some(polys) => polygon_mask(rect, polys, feather),
        None => {
            let mut all = Mask::new(rect);
            all.map(|_, _, _| 1.0);
            all
        }
    };
    let mut cut = polygon_mask(rect, exclude, 0);
    cut.blur(feather_exclude);
    mask.map(|x, y, v| v * (1.0 - cut.at(x, y)) * skin.likelihood(photo.get_pixel(x, y).0));
    mask
}

/// Applies `procedure` to `photo` at `intensity` for the face at `lm`.
pub fn simulate(
    photo: &RgbImage,
    procedure: &str,
    intensity: Intensity,
    lm: &Landmarks,
) -> Result<Simulated, ImagingError> {
    let plan = procedures::plan(procedure, photo, lm, intensity)?;
    Ok(render_plan(photo, lm, &plan))
}

/// A soft mask (0-1 per pixel, row-major) of where `procedure` acts: where its warp moves
/// anything, or its smoothing reaches, grown by 2 mm and feathered. Used to blend a generated
/// picture back into the photo only there, so identity elsewhere is kept.
pub fn treatment_mask(
    photo: &RgbImage,
    procedure: &str,
    intensity: Intensity,
    lm: &Landmarks,
) -> Result<Vec<f32>, ImagingError> {
    let plan = procedures::plan(procedure, photo, lm, intensity)?;
    let f = lm.frame();
    let (w, h) = photo.dimensions();
    let full = Rect::whole(w, h);
    let mut mask = Mask::new(full);
    if plan.handles.iter().any(|h| h.shift.len() > 1e-3) {
        let field = Field::fit(&plan.handles, f.px(plan.radius_mm));
        let support = field.support(w, h);
        let allow = polygon_mask(support, &plan.allow, 0);
        let unit = f.px(0.3).max(0.25);
        mask.map(|x, y, _| {
            if allow.at(x, y) <= 0.0 {
                return 0.0;
            }
            (field.at(Pt::new(x as f32, y as f32)).len() / unit).min(1.0)
        });
    }
    let smoothing = plan.smoothing.iter().map(|s| (&s.include, &s.exclude));
    let shading = plan.shading.iter().map(|s| (&s.include, &s.exclude));
    // Each area drawn once (a blepharoplasty smooths and evens the same band).
    let mut areas = vec![];
    for a in smoothing.chain(shading) {
        if !areas.contains(&a) {
            areas.push(a);
        }
    }
    for (include, exclude) in areas {
        let mut inc = polygon_mask(full, include, 0);
        for p in exclude {
            inc.clear_polygon(p);
        }
        mask.map(|x, y, v| v.max(inc.at(x, y)));
    }
    let grow = f.px(2.0).round().max(1.0) as u32;
    mask.dilate(grow);
    mask.blur(grow);
    Ok((0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| mask.at(x, y))
        .collect())
}

/// Blends `generated` into `photo` through `mask` (same size); pixels where the mask is 0 are
/// the photo's, untouched.
pub fn blend(photo: &RgbImage, generated: &RgbImage, mask: &[f32]) -> RgbImage {
    let mut out = photo.clone();
    let w = photo.width();
    for (x, y, p) in out.enumerate_pixels_mut() {
        let m = mask[(y * w + x) as usize];
        if m <= 0.0 {
            continue;
        }
        let g = generated.get_pixel(x, y).0;
        for (d, s) in p.0.iter_mut().zip(g) {
            *d = (*d as f32 * (1.0 - m) + s as f32 * m + 0.5) as u8;
        }
    }
    out
}

/// Finds the face (or uses the control points) and applies the procedure.
pub fn preview(
    photo: &RgbImage,
    procedure: &str,
    intensity: Intensity,
    control_points: Option<&ControlPoints>,
) -> Result<(Simulated, Landmarks), ImagingError> {
    if !procedures::PROCEDURES.contains(&procedure) {
        return Err(ImagingError::UnknownProcedure(procedure.to_owned()));
    }
    let lm = face::locate(photo, control_points)?;
    Ok((simulate(photo, procedure, intensity, &lm)?, lm))
}

/// The window that shows the face of `lm` in a `w × h` photo: centred between the brows and
/// the chin, `face_share` of its width taken by the face (cheek to cheek), with the given
/// aspect ratio (width / height), kept inside the photo.
pub fn face_window(lm: &Landmarks, w: u32, h: u32, face_share: f32, aspect: f32) -> Rect {
    let oval = lm.group(&regions::FACE_OVAL);
    let f = lm.frame();
    let (lo, hi) = oval.iter().fold((f32::MAX, f32::MIN), |(lo, hi), p| {
        let (u, _) = f.local(*p);
        (lo.min(u), hi.max(u))
    });
    let face_w = f.px(hi - lo).max(8.0);
    let (_, v_top) = f.local(lm.points[10]);
    let (_, v_chin) = f.local(lm.chin());
    let centre = f.at((lo + hi) / 2.0, (v_top + v_chin) / 2.0 + 4.0);
    let mut ww = face_w / face_share;
    let mut wh = ww / aspect;
    // Keep the whole face height in view.
    let face_h = f.px(v_chin - v_top) * 1.25;
    if wh < face_h {
        wh = face_h;
        ww = wh * aspect;
    }
    let (ww, wh) = (ww.min(w as f32), wh.min(h as f32));
    let x0 = (centre.x - ww / 2.0).clamp(0.0, w as f32 - ww);
    let y0 = (centre.y - wh / 2.0).clamp(0.0, h as f32 - wh);
    Rect {
        x0: x0 as u32,
        y0: y0 as u32,
        x1: ((x0 + ww) as u32).min(w),
        y1: ((y0 + wh) as u32).min(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portrait(name: &str) -> RgbImage {
        let path = format!(
            "{}/../../testdata/portraits/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(path).unwrap();
        intake::decode_upright(&bytes, &intake::Limits::default())
            .unwrap()
            .0
    }

    /// Glasses are told by their bridge across the nose: Grace Hopper's frames, upright and
    /// tilted, and none on the astronaut (whose brows then move with all their hair).
    #[test]
    fn glasses_are_found_by_their_bridge() {
        let grace = portrait("grace_hopper.jpg");
        let tilted = image::imageops::rotate90(&grace);
        for (name, img, expected) in [
            ("grace_hopper", grace, true),
            ("grace_hopper turned", tilted, true),
            ("astronaut", portrait("astronaut.png"), false),
        ] {
            let lm = face::detect(&img).unwrap();
            let f = lm.frame();
            let skin = SkinModel::learn(&img, &lm);
            let (w, h) = img.dimensions();
            let rect = Rect::whole(w, h);
            let m = overlays(&img, (Some(&skin), f.px(0.7)), rect, 0.2 * skin.luminance());
            assert_eq!(wears_glasses(&m, &lm, &f), expected, "{name}");
        }
    }
}
