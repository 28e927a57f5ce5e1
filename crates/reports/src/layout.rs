//! A small flow layout: paragraphs wrap, blocks move to the next page when they do not fit,
//! and the pages are drawn once the page count is known (for "page i of n").

use afterview_imaging::render::{FONT_BOLD, FONT_REGULAR};
use krilla::Document;
use krilla::color::rgb;
use krilla::geom::{PathBuilder, Point, Rect, Size, Transform};
use krilla::image::Image;
use krilla::num::NormalizedF32;
use krilla::page::PageSettings;
use krilla::paint::Fill;
use krilla::text::{Font, TextDirection};

use crate::ReportError;
use crate::fonts::Fonts;

/// A colour.
pub(crate) type Rgb = (u8, u8, u8);

pub(crate) const INK: Rgb = (33, 37, 41);
pub(crate) const MUTED: Rgb = (100, 106, 115);
pub(crate) const ACCENT: Rgb = (46, 90, 136);
pub(crate) const RULE: Rgb = (210, 214, 220);
pub(crate) const SHADE: Rgb = (241, 243, 246);

/// One drawing operation, in points from the page's top-left corner.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Text {
        x: f32,
        y: f32,
        size: f32,
        bold: bool,
        color: Rgb,
        text: String,
    },
    Rect {
        x: f32,
        y: f32,
        w: f32,
        h: f32,
        color: Rgb,
    },
    Image {
        x: f32,
        y: f32,
        w: f32,
        h: f32,
        jpeg: std::sync::Arc<Vec<u8>>,
    },
}

/// Width of `text` in points at `size`, set in `fonts` (each character in the first face that
/// has it).
pub(crate) fn width_in(fonts: &Fonts, text: &str, size: f32, bold: bool) -> f32 {
    if text.contains(RTL_LINE) {
        fonts.width(&text.replace(RTL_LINE, ""), size, bold)
    } else {
        fonts.width(text, size, bold)
    }
}

/// Width of `text` in points at `size`, in the bundled faces.
pub(crate) fn width(text: &str, size: f32, bold: bool) -> f32 {
    width_in(Fonts::bundled_ref(), text, size, bold)
}

/// The text as the report prints it: control characters (NUL, escapes) and the
/// bidirectional marks, embeddings, overrides and isolates are dropped, so a field can neither
/// hide nor reorder what the page shows. A tab is a space (`Age:\t35` is not `Age:35`); line
/// breaks stay, whichever convention they follow (`\r\n`, `\r`), and paragraphs split on them.
pub(crate) fn printable(text: &str) -> String {
    text.replace("\r\n", "\n")
        .chars()
        .filter_map(|c| match c {
            '\n' | '\r' => Some('\n'),
            '\t' => Some(' '),
            c if c.is_control()
                || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') =>
            {
                None
            }
            c => Some(c),
        })
        .collect()
}

/// Starts a line of a right-to-left paragraph ([`wrap`] puts it there, [`printable`] keeps
/// users' own marks out): the line reads right to left even when it begins with a Latin word
/// or a number. Never drawn, no width.
const RTL_LINE: char = '\u{200F}';

/// `text` (one line) as runs in visual order, left to right, each with whether it reads right
/// to left (the Unicode bidirectional algorithm; a line starting with [`RTL_LINE`] has a
/// right-to-left base). Text without right-to-left characters is one run, as it was.
pub(crate) fn visual_runs(text: &str) -> Vec<(&str, bool)> {
    let (text, base) = match text.strip_prefix(RTL_LINE) {
        Some(rest) => (rest, Some(unicode_bidi::Level::rtl())),
        None => (text, None),
    };
    let info = unicode_bidi::BidiInfo::new(text, base);
    if !info.has_rtl() {
        return vec![(text, false)];
    }
    let mut out = vec![];
    for para in &info.paragraphs {
        let (levels, runs) = info.visual_runs(para, para.range.clone());
        for r in runs {
            out.push((&text[r.clone()], levels[r.start].is_rtl()));
        }
    }
    out
}

/// `word` cut into pieces no wider than `max` (a word wider than a line, such as a long
/// address or a name typed without spaces, would otherwise run off the page).
fn pieces(fonts: &Fonts, word: &str, size: f32, bold: bool, max: f32) -> Vec<String> {
    if width_in(fonts, word, size, bold) <= max {
        return vec![word.to_owned()];
    }
    let (mut out, mut cur, mut w) = (vec![], String::new(), 0.0);
    let mut buf = [0u8; 4];
    for c in word.chars() {
        let cw = width_in(fonts, c.encode_utf8(&mut buf), size, bold);
        if w + cw > max && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            w = 0.0;
        }
        cur.push(c);
        w += cw;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// [`wrap_in`] the bundled faces.
pub(crate) fn wrap(text: &str, size: f32, bold: bool, max: f32) -> Vec<String> {
    wrap_in(Fonts::bundled_ref(), text, size, bold, max)
}

/// Splits `text` ([`printable`] of it) into lines no wider than `max`, set in `fonts`. Blank
/// lines in a row are one (a field of 2,000 line breaks made 40 blank pages). The lines of a
/// right-to-left paragraph start with [`RTL_LINE`], so each keeps the paragraph's direction.
/// A word wider than a line is cut between characters (so is a line of Chinese or Japanese,
/// which has no spaces).
pub(crate) fn wrap_in(fonts: &Fonts, text: &str, size: f32, bold: bool, max: f32) -> Vec<String> {
    let mut lines: Vec<String> = vec![];
    for para in printable(text).split('\n') {
        if para.trim().is_empty() && lines.last().is_some_and(|l| l.is_empty()) {
            continue;
        }
        let rtl = unicode_bidi::BidiInfo::new(para, None)
            .paragraphs
            .first()
            .is_some_and(|p| p.level.is_rtl());
        let first = lines.len();
        let mut line = String::new();
        for word in para
            .split_whitespace()
            .flat_map(|w| pieces(fonts, w, size, bold, max))
        {
            let candidate = if line.is_empty() {
                word.clone()
            } else {
                format!("{line} {word}")
            };
            if width_in(fonts, &candidate, size, bold) <= max || line.is_empty() {
                line = candidate;
            } else {
                lines.push(std::mem::take(&mut line));
                line = word;
            }
        }
        lines.push(line);
        if rtl {
            for l in lines[first..].iter_mut().filter(|l| !l.is_empty()) {
                l.insert(0, RTL_LINE);
            }
        }
    }
    lines
}

/// Tables: text size, a one-line row's height, each further line's.
const TABLE_SIZE: f32 = 9.5;
const ROW_H: f32 = 17.0;
const LINE_H: f32 = 12.0;

/// A table's columns: left edge, content width, each column's share and alignment.
struct Columns<'a> {
    x0: f32,
    cw: f32,
    widths: &'a [f32],
    right: &'a [bool],
}

impl Columns<'_> {
    /// Each cell wrapped to its column.
    fn lay(&self, fonts: &Fonts, cells: &[String], bold: bool) -> Vec<Vec<String>> {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| wrap_in(fonts, c, TABLE_SIZE, bold, self.widths[i] * self.cw - 12.0))
            .collect()
    }
}

/// A row as tall as its longest cell.
fn row_height(cells: &[Vec<String>]) -> f32 {
    ROW_H + LINE_H * (cells.iter().map(Vec::len).max().unwrap_or(1).max(1) - 1) as f32
}

pub(crate) struct Flow {
    pub(crate) w: f32,
    pub(crate) h: f32,
    pub(crate) margin: f32,
    pub(crate) top: f32,
    pub(crate) bottom: f32,
    pub(crate) pages: Vec<Vec<Op>>,
    pub(crate) y: f32,
    /// The faces text is set in.
    pub(crate) fonts: Fonts,
}

impl Flow {
    pub(crate) fn new(w: f32, h: f32, fonts: Fonts) -> Self {
        let margin = 54.0;
        Self {
            fonts,
            w,
            h,
            margin,
            top: margin,
            bottom: h - margin - 18.0,
            pages: vec![vec![]],
            y: margin,
        }
    }

    /// Usable width.
    pub(crate) fn content_w(&self) -> f32 {
        self.w - 2.0 * self.margin
    }

    pub(crate) fn new_page(&mut self) {
        self.pages.push(vec![]);
        self.y = self.top;
    }

    /// Starts a new page unless `h` points fit.
    pub(crate) fn need(&mut self, h: f32) {
        if self.y + h > self.bottom && self.y > self.top {
            self.new_page();
        }
    }

    pub(crate) fn push(&mut self, op: Op) {
        self.pages.last_mut().expect("a page").push(op);
    }

    pub(crate) fn space(&mut self, h: f32) {
        self.y += h;
    }

    /// Wrapped text at `x` within `max` points; moves the cursor below it.
    pub(crate) fn text_at(
        &mut self,
        x: f32,
        max: f32,
        text: &str,
        size: f32,
        bold: bool,
        color: Rgb,
    ) {
        let lead = size * 1.35;
        for line in wrap_in(&self.fonts, text, size, bold, max) {
            self.need(lead);
            self.y += lead;
            self.push(Op::Text {
                x,
                y: self.y - size * 0.3,
                size,
                bold,
                color,
                text: line,
            });
        }
    }

    pub(crate) fn paragraph(&mut self, text: &str, size: f32, bold: bool, color: Rgb) {
        let (x, w) = (self.margin, self.content_w());
        self.text_at(x, w, text, size, bold, color);
    }

    /// A heading kept on the same page as the first ~90 points of what follows.
    pub(crate) fn heading(&mut self, text: &str, size: f32) {
        self.need(size * 3.0 + 90.0);
        self.space(size * 0.6);
        self.paragraph(text, size, true, ACCENT);
        self.space(4.0);
        let (x, w, y) = (self.margin, self.content_w(), self.y);
        self.push(Op::Rect {
            x,
            y,
            w,
            h: 0.8,
            color: RULE,
        });
        self.space(8.0);
    }

    /// Two titled bullet lists side by side (recovery and risks).
    pub(crate) fn two_lists(
        &mut self,
        left: (&str, &[String]),
        right: (&str, &[String]),
        size: f32,
    ) {
        let col = (self.content_w() - 18.0) / 2.0;
        let lead = size * 1.35;
        let lines = |items: &[String]| {
            items
                .iter()
                .map(|i| wrap_in(&self.fonts, i, size, false, col - 12.0).len())
                .sum::<usize>()
        };
        let h = 34.0 + lead * lines(left.1).max(lines(right.1)) as f32;
        self.need(h);
        let y0 = self.y;
        let mut bottom = y0;
        for (i, (title, items)) in [left, right].into_iter().enumerate() {
            let x = self.margin + i as f32 * (col + 18.0);
            self.y = y0;
            self.push(Op::Text {
                x,
                y: self.y + 14.0,
                size: 12.0,
                bold: true,
                color: ACCENT,
                text: title.to_owned(),
            });
            self.push(Op::Rect {
                x,
                y: self.y + 20.0,
                w: col,
                h: 0.8,
                color: RULE,
            });
            self.y += 24.0;
            for it in items {
                let start = self.y;
                self.text_at(x + 12.0, col - 12.0, it, size, false, INK);
                self.push(Op::Text {
                    x: x + 2.0,
                    y: start + lead - size * 0.3,
                    size,
                    bold: true,
                    color: ACCENT,
                    text: "•".into(),
                });
            }
            bottom = bottom.max(self.y);
        }
        self.y = bottom + 8.0;
    }

    /// A table with a shaded header row; `widths` are fractions of the content width;
    /// `right` columns are right-aligned; the last row can be bold (totals).
    pub(crate) fn table(
        &mut self,
        header: &[&str],
        rows: &[Vec<String>],
        widths: &[f32],
        right: &[bool],
        bold_last: bool,
    ) {
        let cols = Columns {
            x0: self.margin,
            cw: self.content_w(),
            widths,
            right,
        };
        let laid: Vec<Vec<Vec<String>>> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| cols.lay(&self.fonts, r, bold_last && i + 1 == rows.len()))
            .collect();
        self.need(ROW_H + laid.iter().map(|l| row_height(l)).sum::<f32>() + 6.0);
        if header.iter().any(|h| !h.is_empty()) {
            let head: Vec<String> = header.iter().map(|s| (*s).to_owned()).collect();
            let head = cols.lay(&self.fonts, &head, true);
            self.table_row(&cols, &head, true, true);
        } else {
            let (y, w) = (self.y, cols.cw);
            self.push(Op::Rect {
                x: cols.x0,
                y,
                w,
                h: 0.8,
                color: RULE,
            });
        }
        for (i, r) in laid.iter().enumerate() {
            self.table_row(&cols, r, bold_last && i + 1 == rows.len(), false);
        }
        self.space(6.0);
    }

    /// One row of a table: each cell's lines, the row as tall as its longest cell.
    fn table_row(&mut self, cols: &Columns<'_>, cells: &[Vec<String>], bold: bool, shade: bool) {
        let (y, h) = (self.y, row_height(cells));
        if shade {
            self.push(Op::Rect {
                x: cols.x0,
                y,
                w: cols.cw,
                h,
                color: SHADE,
            });
        }
        let mut x = cols.x0;
        for (i, lines) in cells.iter().enumerate() {
            let w = cols.widths[i] * cols.cw;
            for (k, line) in lines.iter().enumerate() {
                let tx = if cols.right[i] {
                    x + w - 6.0 - width_in(&self.fonts, line, TABLE_SIZE, bold)
                } else {
                    x + 6.0
                };
                self.push(Op::Text {
                    x: tx,
                    y: y + ROW_H - 5.0 + LINE_H * k as f32,
                    size: TABLE_SIZE,
                    bold,
                    color: INK,
                    text: line.clone(),
                });
            }
            x += w;
        }
        self.y += h;
        self.push(Op::Rect {
            x: cols.x0,
            y: self.y - 0.5,
            w: cols.cw,
            h: 0.5,
            color: RULE,
        });
    }

    /// Draws all pages, with a footer on each, into a PDF.
    pub(crate) fn finish(
        self,
        footer: &dyn Fn(usize, usize) -> String,
        title: &str,
    ) -> Result<Vec<u8>, ReportError> {
        let regular = Font::new(FONT_REGULAR.into(), 0)
            .ok_or_else(|| ReportError::Pdf("bundled font".into()))?;
        let bold = Font::new(FONT_BOLD.into(), 0)
            .ok_or_else(|| ReportError::Pdf("bundled font".into()))?;
        let mut doc = Document::new();
        doc.set_metadata(
            krilla::metadata::Metadata::new()
                .title(title.to_owned())
                .creator("Afterview".into()),
        );
        let n = self.pages.len();
        for (i, ops) in self.pages.iter().enumerate() {
            let settings = PageSettings::from_wh(self.w, self.h)
                .ok_or_else(|| ReportError::Pdf("page size".into()))?;
            let mut page = doc.start_page_with(settings);
            let mut s = page.surface();
            let mut all = ops.clone();
            all.push(Op::Rect {
                x: self.margin,
                y: self.h - self.margin + 2.0,
                w: self.w - 2.0 * self.margin,
                h: 0.6,
                color: RULE,
            });
            all.push(Op::Text {
                x: self.margin,
                y: self.h - self.margin + 16.0,
                size: 7.5,
                bold: false,
                color: MUTED,
                text: footer(i + 1, n),
            });
            for op in &all {
                draw(&mut s, op, &self.fonts, (&regular, &bold))?;
            }
            s.finish();
            page.finish();
        }
        doc.finish().map_err(|e| ReportError::Pdf(format!("{e:?}")))
    }
}

/// Draws one operation on a page.
fn draw(
    s: &mut krilla::surface::Surface<'_>,
    op: &Op,
    fonts: &Fonts,
    (regular, bold): (&Font, &Font),
) -> Result<(), ReportError> {
    match op {
        Op::Text {
            x,
            y,
            size,
            bold: b,
            color,
            text,
        } => {
            set_fill(s, *color);
            let bundled = if *b { bold } else { regular };
            // Run by run in visual order: one shaping of a mixed line took one direction for
            // all of it (a Hebrew note's "35" printed "53", a Latin name's Hebrew surname
            // backwards). Within a run, face by face (a Chinese name in a fallback face).
            let runs = visual_runs(text);
            let mut at = *x;
            for (run, rtl) in &runs {
                let direction = match (runs.len(), rtl) {
                    (1, false) => TextDirection::Auto,
                    (_, true) => TextDirection::RightToLeft,
                    (_, false) => TextDirection::LeftToRight,
                };
                let mut pieces = fonts.runs(run, *b);
                if *rtl {
                    pieces.reverse();
                }
                for (piece, face) in pieces {
                    s.draw_text(
                        Point::from_xy(at, *y),
                        fonts.pdf_font(face, bundled).clone(),
                        *size,
                        piece,
                        false,
                        direction,
                    );
                    at += fonts.run_width(piece, face, *size, *b);
                }
            }
        }
        Op::Rect { x, y, w, h, color } => {
            set_fill(s, *color);
            if let Some(r) = Rect::from_xywh(*x, *y, *w, *h) {
                let mut pb = PathBuilder::new();
                pb.push_rect(r);
                if let Some(p) = pb.finish() {
                    s.draw_path(&p);
                }
            }
        }
        Op::Image { x, y, w, h, jpeg } => {
            let img = Image::from_jpeg(jpeg.to_vec().into(), true).map_err(ReportError::Picture)?;
            s.push_transform(&Transform::from_translate(*x, *y));
            s.draw_image(
                img,
                Size::from_wh(*w, *h).ok_or_else(|| ReportError::Pdf("image size".into()))?,
            );
            s.pop();
        }
    }
    Ok(())
}

fn set_fill(s: &mut krilla::surface::Surface<'_>, c: Rgb) {
    s.set_fill(Some(Fill {
        paint: rgb::Color::new(c.0, c.1, c.2).into(),
        opacity: NormalizedF32::ONE,
        rule: Default::default(),
    }));
}

#[cfg(test)]
mod tests {
    use super::{printable, visual_runs, wrap};

    /// A line mixing scripts is drawn run by run in visual order: a Hebrew surname after a
    /// Latin name reads right to left on its own, and a number in a Hebrew note stays "35".
    #[test]
    fn mixed_lines_are_drawn_in_visual_runs() {
        assert_eq!(visual_runs("Sarah Smith"), [("Sarah Smith", false)]);
        assert_eq!(visual_runs("Sarah כהן"), [("Sarah ", false), ("כהן", true)]);
        assert_eq!(visual_runs("אני בת 35"), [("35", false), ("אני בת ", true)]);
        // A right-to-left paragraph's lines keep its direction, also a line that starts with
        // a Latin word once wrapped: its Hebrew reads first, from the right.
        let lines = wrap("ביקשה טיפול Botox 50 יחידות במצח", 10.0, false, 80.0);
        assert!(lines.len() > 1, "{lines:?}");
        assert!(lines.iter().all(|l| l.starts_with('\u{200F}')), "{lines:?}");
        let runs = visual_runs("\u{200F}Botox 50 יחידות במצח");
        assert!(runs[0].1, "{runs:?}");
        assert!(runs.last().unwrap().0.contains("Botox"), "{runs:?}");
        assert!(runs.iter().all(|(r, _)| !r.contains('\u{200F}')));
        assert_eq!(
            super::width("\u{200F}ab", 10.0, false),
            super::width("ab", 10.0, false)
        );
    }

    /// A tab keeps words apart, every line-break convention breaks a line, and blank lines in
    /// a row are one: 2,000 line breaks in the notes are not 40 blank pages.
    #[test]
    fn fields_keep_their_words_apart_and_blank_lines_are_one() {
        assert_eq!(
            printable("Age:\t35\r\nnext\rthird\u{202E}"),
            "Age: 35\nnext\nthird"
        );
        assert_eq!(wrap(&"\n".repeat(2000), 10.0, false, 400.0).len(), 1);
        assert_eq!(wrap("a\n\n\n\nb", 10.0, false, 400.0), ["a", "", "b"]);
    }
}
