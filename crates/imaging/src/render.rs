//! Text, the simulation label and side-by-side composites. Fonts are bundled (DejaVu Sans,
//! `assets/fonts`); nothing is looked up on the system.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use image::{Rgb, RgbImage};

use crate::warp::Rect;

/// DejaVu Sans (regular), also used by the reports.
pub const FONT_REGULAR: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
/// DejaVu Sans Bold.
pub const FONT_BOLD: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans-Bold.ttf");

/// The bundled face of that weight (also what the reports measure their text with).
pub fn font(bold: bool) -> &'static FontRef<'static> {
    static REGULAR: OnceLock<FontRef<'static>> = OnceLock::new();
    static BOLD: OnceLock<FontRef<'static>> = OnceLock::new();
    let (cell, bytes) = if bold {
        (&BOLD, FONT_BOLD)
    } else {
        (&REGULAR, FONT_REGULAR)
    };
    cell.get_or_init(|| FontRef::try_from_slice(bytes).expect("the bundled font is valid"))
}

/// Width in pixels of `text` at `px`.
pub fn text_width(text: &str, px: f32, bold: bool) -> f32 {
    advance(font(bold), text, PxScale::from(px))
}

/// Width of `text` set in `f` at `scale`, kerned.
pub fn advance(f: &impl Font, text: &str, scale: PxScale) -> f32 {
    let f = f.as_scaled(scale);
    let mut w = 0.0;
    let mut prev = None;
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            w += f.kern(p, id);
        }
        w += f.h_advance(id);
        prev = Some(id);
    }
    w
}

/// Draws `text` with its baseline at `y`, starting at `x`, blending by coverage.
pub fn draw_text(
    img: &mut RgbImage,
    text: &str,
    x: f32,
    y: f32,
    px: f32,
    color: [u8; 3],
    bold: bool,
) {
    let fnt = font(bold);
    let f = fnt.as_scaled(PxScale::from(px));
    let (w, h) = (img.width() as i32, img.height() as i32);
    let mut caret = x;
    let mut prev = None;
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            caret += f.kern(p, id);
        }
        let glyph = id.with_scale_and_position(PxScale::from(px), point(caret, y));
        caret += f.h_advance(id);
        prev = Some(id);
        let Some(outline) = fnt.outline_glyph(glyph) else {
            continue;
        };
        let b = outline.px_bounds();
        outline.draw(|gx, gy, cov| {
            let (px_, py) = (b.min.x as i32 + gx as i32, b.min.y as i32 + gy as i32);
            if px_ < 0 || py < 0 || px_ >= w || py >= h {
                return;
            }
            let dst = img.get_pixel_mut(px_ as u32, py as u32);
            let a = cov.clamp(0.0, 1.0);
            for (d, c) in dst.0.iter_mut().zip(color) {
                *d = (*d as f32 * (1.0 - a) + c as f32 * a + 0.5) as u8;
            }
        });
    }
}

/// Darkens a rectangle by blending it with black at `alpha`.
fn shade(img: &mut RgbImage, r: Rect, alpha: f32) {
    for y in r.y0..r.y1 {
        for x in r.x0..r.x1 {
            let p = img.get_pixel_mut(x, y);
            for c in 0..3 {
                p.0[c] = (p.0[c] as f32 * (1.0 - alpha) + 0.5) as u8;
            }
        }
    }
}

/// The label's text size on a `w × h` picture.
fn label_px(w: u32, h: u32) -> f32 {
    (w.min(h) as f32 * 0.032).clamp(10.0, 42.0)
}

/// Where [`label`] puts `text` on a `w × h` picture (empty when it does not fit).
pub fn label_rect(w: u32, h: u32, text: &str) -> Rect {
    let px = label_px(w, h);
    let pad = (px * 0.45).round();
    let tw = text_width(text, px, true);
    let bw = (tw + 2.0 * pad).ceil() as u32;
    let bh = (px * 1.25 + pad).ceil() as u32;
    let margin = (px * 0.6).round() as u32;
    if bw + margin >= w || bh + margin >= h {
        return Rect::default();
    }
    Rect {
        x0: w - margin - bw,
        y0: h - margin - bh,
        x1: w - margin,
        y1: h - margin,
    }
}

/// Puts a small label (e.g. "SIMULATION") in the bottom-right corner; returns its rectangle.
pub fn label(img: &mut RgbImage, text: &str) -> Rect {
    let (w, h) = img.dimensions();
    let r = label_rect(w, h, text);
    if r == Rect::default() {
        return r;
    }
    let px = label_px(w, h);
    let pad = (px * 0.45).round();
    shade(img, r, 0.55);
    let baseline = r.y0 as f32 + pad * 0.5 + px;
    draw_text(
        img,
        text,
        r.x0 as f32 + pad,
        baseline,
        px,
        [255, 255, 255],
        true,
    );
    r
}

/// Side-by-side panels of equal height with a caption bar under each.
pub fn compose(panels: &[(&str, &RgbImage)], panel_height: u32) -> RgbImage {
    let gap = (panel_height / 64).max(4);
    let caption = (panel_height as f32 * 0.11).max(28.0) as u32;
    let scaled: Vec<(&str, RgbImage)> = panels
        .iter()
        .map(|(name, img)| {
            let pw = ((img.width() as f32) * panel_height as f32 / img.height() as f32)
                .round()
                .max(1.0) as u32;
            (
                *name,
                image::imageops::resize(
                    *img,
                    pw,
                    panel_height,
                    image::imageops::FilterType::Triangle,
                ),
            )
        })
        .collect();
    let total_w =
        scaled.iter().map(|(_, i)| i.width()).sum::<u32>() + gap * (scaled.len() as u32 + 1);
    let total_h = panel_height + caption + 2 * gap;
    let mut out = RgbImage::from_pixel(total_w, total_h, Rgb([246, 246, 244]));
    let mut x = gap;
    let px = caption as f32 * 0.45;
    for (name, img) in &scaled {
        image::imageops::replace(&mut out, img, i64::from(x), i64::from(gap));
        let tw = text_width(name, px, true);
        let tx = x as f32 + (img.width() as f32 - tw) / 2.0;
        let baseline = (gap + panel_height) as f32 + caption as f32 * 0.5 + px * 0.38;
        draw_text(
            &mut out,
            name,
            tx.max(x as f32),
            baseline,
            px,
            [40, 40, 48],
            true,
        );
        x += img.width() + gap;
    }
    out
}
