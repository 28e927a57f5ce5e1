//! The cost infographic: one stacked bar per procedure (surgeon, anesthesia, facility, other at
//! their mid-range values), the total range at the end of each bar, a legend, the currency and
//! the disclaimer. One scene, drawn two ways: SVG (text stays text) and PNG (bundled font).

use std::fmt::Write as _;

use afterview_core::catalog::Procedure;
use image::{Rgb, RgbImage};

use crate::{DISCLAIMER, ReportError, money, range};

/// Default colours: surgeon, anesthesia, facility, other.
pub const DEFAULT_COLORS: [&str; 4] = ["#2e5a88", "#4f9da6", "#f2b134", "#e8684a"];

/// What the infographic shows.
#[derive(Debug, Clone)]
pub struct InfographicInput {
    /// The procedures, in order.
    pub procedures: Vec<Procedure>,
    /// Currency of every amount.
    pub currency: String,
    /// Four `#rrggbb` colours (surgeon, anesthesia, facility, other).
    pub colors: [String; 4],
}

impl InfographicInput {
    /// Checks the colours.
    pub fn validate(&self) -> Result<[(u8, u8, u8); 4], ReportError> {
        if self.procedures.is_empty() {
            return Err(ReportError::Invalid(
                "an infographic needs at least one procedure".into(),
            ));
        }
        let mut out = [(0, 0, 0); 4];
        for (i, c) in self.colors.iter().enumerate() {
            out[i] = parse_hex(c)
                .ok_or_else(|| ReportError::Invalid(format!("color {c:?} is not #rrggbb")))?;
        }
        Ok(out)
    }
}

/// Parses `#rrggbb`.
pub fn parse_hex(c: &str) -> Option<(u8, u8, u8)> {
    let h = c.strip_prefix('#')?;
    if h.len() != 6 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).ok();
    Some((v(0)?, v(2)?, v(4)?))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Anchor {
    Start,
    Middle,
}

#[derive(Debug, Clone)]
enum Shape {
    Rect {
        x: f32,
        y: f32,
        w: f32,
        h: f32,
        fill: (u8, u8, u8),
    },
    Text {
        x: f32,
        y: f32,
        size: f32,
        bold: bool,
        fill: (u8, u8, u8),
        anchor: Anchor,
        text: String,
    },
}

const W: f32 = 1000.0;
const INK: (u8, u8, u8) = (33, 37, 41);
const MUTED: (u8, u8, u8) = (100, 106, 115);
const BG: (u8, u8, u8) = (255, 255, 255);

fn scene(input: &InfographicInput, colors: [(u8, u8, u8); 4]) -> (Vec<Shape>, f32) {
    let mut s = vec![
        text(
            (40.0, 58.0),
            30.0,
            true,
            INK,
            Anchor::Start,
            "Estimated cost breakdown",
        ),
        text(
            (40.0, 88.0),
            16.0,
            false,
            MUTED,
            Anchor::Start,
            &format!(
                "{}, national averages; bars show mid-range values, labels the full range",
                input.currency
            ),
        ),
    ];
    legend(&mut s, colors);
    let max_total = input
        .procedures
        .iter()
        .map(|p| p.costs.total().high)
        .max()
        .unwrap_or(1)
        .max(1) as f32;
    let mut y = 170.0;
    for p in &input.procedures {
        procedure_bar(&mut s, (p, &input.currency), colors, y, max_total);
        y += 110.0;
    }
    // Disclaimer, wrapped.
    y += 10.0;
    for line in crate::layout::wrap(DISCLAIMER, 12.0, false, W - 80.0) {
        s.push(text((40.0, y), 12.0, false, MUTED, Anchor::Start, &line));
        y += 17.0;
    }
    (s, y + 20.0)
}

fn text(
    (x, y): (f32, f32),
    size: f32,
    bold: bool,
    fill: (u8, u8, u8),
    anchor: Anchor,
    t: &str,
) -> Shape {
    Shape::Text {
        x,
        y,
        size,
        bold,
        fill,
        anchor,
        text: t.to_owned(),
    }
}

/// The colour key of the four cost components.
fn legend(s: &mut Vec<Shape>, colors: [(u8, u8, u8); 4]) {
    let labels = ["Surgeon", "Anesthesia", "Facility", "Other"];
    let mut lx = 40.0;
    for (i, l) in labels.iter().enumerate() {
        s.push(Shape::Rect {
            x: lx,
            y: 112.0,
            w: 18.0,
            h: 18.0,
            fill: colors[i],
        });
        s.push(text((lx + 26.0, 127.0), 15.0, false, INK, Anchor::Start, l));
        lx += 40.0 + crate::layout::width(l, 15.0, false) + 20.0;
    }
}

/// One procedure's stacked bar (mid-range components), its total and downtime, and the ranges.
fn procedure_bar(
    s: &mut Vec<Shape>,
    (p, currency): (&Procedure, &str),
    colors: [(u8, u8, u8); 4],
    y: f32,
    max_total: f32,
) {
    let bar_x = 40.0;
    let bar_w_max = W - 40.0 - 300.0;
    s.push(text((bar_x, y), 18.0, true, INK, Anchor::Start, &p.name));
    let total = p.costs.total();
    let mut x = bar_x;
    let bar_y = y + 10.0;
    for (i, (_, r)) in p.costs.components().iter().enumerate() {
        let mid = (r.low + r.high) as f32 / 2.0;
        let w = mid / max_total * bar_w_max;
        if w > 0.0 {
            s.push(Shape::Rect {
                x,
                y: bar_y,
                w,
                h: 34.0,
                fill: colors[i],
            });
            if w > 70.0 {
                s.push(text(
                    (x + w / 2.0, bar_y + 23.0),
                    13.0,
                    true,
                    (255, 255, 255),
                    Anchor::Middle,
                    &money(mid.round() as u32, currency),
                ));
            }
        }
        x += w;
    }
    s.push(text(
        (x + 12.0, bar_y + 16.0),
        15.0,
        true,
        INK,
        Anchor::Start,
        &format!("Total {}", range(total, currency)),
    ));
    s.push(text(
        (x + 12.0, bar_y + 34.0),
        12.0,
        false,
        MUTED,
        Anchor::Start,
        &format!("{} recovery", p.recovery.downtime),
    ));
    let parts: Vec<String> = p
        .costs
        .components()
        .iter()
        .map(|(l, r)| format!("{l} {}", range(*r, currency)))
        .collect();
    s.push(text(
        (bar_x, bar_y + 56.0),
        12.0,
        false,
        MUTED,
        Anchor::Start,
        &parts.join(" · "),
    ));
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The infographic as SVG.
pub fn infographic_svg(input: &InfographicInput) -> Result<String, ReportError> {
    let colors = input.validate()?;
    let (shapes, h) = scene(input, colors);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" font-family=\"DejaVu Sans, Verdana, sans-serif\">\n\
         <title>Estimated cost breakdown</title>\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
    );
    for sh in shapes {
        match sh {
            Shape::Rect { x, y, w, h, fill } => {
                let _ = writeln!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"#{:02x}{:02x}{:02x}\"/>",
                    fill.0, fill.1, fill.2
                );
            }
            Shape::Text {
                x,
                y,
                size,
                bold,
                fill,
                anchor,
                text,
            } => {
                let a = match anchor {
                    Anchor::Start => "start",
                    Anchor::Middle => "middle",
                };
                let _ = writeln!(
                    out,
                    "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\" font-weight=\"{}\" fill=\"#{:02x}{:02x}{:02x}\" text-anchor=\"{a}\">{}</text>",
                    if bold { "bold" } else { "normal" },
                    fill.0,
                    fill.1,
                    fill.2,
                    esc(&text)
                );
            }
        }
    }
    out.push_str("</svg>\n");
    Ok(out)
}

/// The infographic as PNG (the same scene).
pub fn infographic_png(input: &InfographicInput) -> Result<Vec<u8>, ReportError> {
    let colors = input.validate()?;
    let (shapes, h) = scene(input, colors);
    let mut img = RgbImage::from_pixel(W as u32, h.ceil() as u32, Rgb([BG.0, BG.1, BG.2]));
    for sh in shapes {
        match sh {
            Shape::Rect { x, y, w, h, fill } => {
                let (x0, y0) = (x.round().max(0.0) as u32, y.round().max(0.0) as u32);
                let (x1, y1) = (
                    ((x + w).round() as u32).min(img.width()),
                    ((y + h).round() as u32).min(img.height()),
                );
                for yy in y0..y1 {
                    for xx in x0..x1 {
                        img.put_pixel(xx, yy, Rgb([fill.0, fill.1, fill.2]));
                    }
                }
            }
            Shape::Text {
                x,
                y,
                size,
                bold,
                fill,
                anchor,
                text,
            } => {
                // The raster font is sized by its full height; match the em-based SVG size.
                let px = size * 1.16;
                let tw = afterview_imaging::render::text_width(&text, px, bold);
                let tx = match anchor {
                    Anchor::Start => x,
                    Anchor::Middle => x - tw / 2.0,
                };
                afterview_imaging::render::draw_text(
                    &mut img,
                    &text,
                    tx,
                    y,
                    px,
                    [fill.0, fill.1, fill.2],
                    bold,
                );
            }
        }
    }
    Ok(afterview_imaging::intake::encode_png(&img))
}
